"""PartsWorld generation speed: images/s at 64 px and 128 px (full pipeline: scene sampling,
ray casting with shadows, uint8 conversion), on CPU by default.

    PYTHONPATH=src python benchmarks/partsworld_speed.py [--device cpu] [--n 1024]

Prints a markdown table. Uses ``torch.get_num_threads()`` as set by the environment.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from spatialssl.data import partsworld as pw


def measure(size: int, n: int, device: str, chunk: int) -> tuple[float, float]:
    """(images/s, seconds) for ``n`` train images of ``size`` px, after one warm-up chunk."""
    cfg = pw.PartsWorldConfig(size=size, chunk=chunk)
    pw._render_arrays(cfg, "train", 0, min(chunk, n), device)  # warm-up (lazy init, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    pw._render_arrays(cfg, "train", 0, n, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return n / dt, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: leave as is; 1 is much faster on an oversubscribed machine)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=1024, help="images at 64 px (a quarter of that at 128 px)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        chunk = pw.PartsWorldConfig().chunk if size <= 64 else max(8, pw.PartsWorldConfig().chunk * 64 * 64 // (size * size))
        n = max(chunk, args.n * 64 * 64 // (size * size))
        ips, dt = measure(size, n, args.device, chunk)
        rows.append((size, n, chunk, ips, dt))
        print(f"{size}px: {n} images in {dt:.1f}s = {ips:.0f} img/s", flush=True)
    print()
    cores = os.cpu_count()
    print(f"device {args.device}; {platform.machine()}, {cores} cores visible, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")
    print("| size | images | chunk | seconds | images/s | 20k train images |")
    print("|---|---|---|---|---|---|")
    for size, n, chunk, ips, dt in rows:
        print(f"| {size}px | {n} | {chunk} | {dt:.1f} | {ips:.0f} | {20000 / ips:.0f} s |")


if __name__ == "__main__":
    main()
