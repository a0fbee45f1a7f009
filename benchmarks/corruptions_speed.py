"""Throughput of the batched ImageNet-C corruptions (spatialssl.evals.corruptions).

Prints a Markdown table of images/s per corruption (all 5 severities, each run on the same
batch, after one warm-up call) at 64 px and 224 px, and, where ``imagecorruptions`` is
installed, the reference package's images/s at 224 px (one image per call, as it works).

    PYTHONPATH=src python benchmarks/corruptions_speed.py                 # CPU
    PYTHONPATH=src python benchmarks/corruptions_speed.py --device cuda   # a GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import types
import warnings

import numpy as np
import torch

from spatialssl.evals.corruptions import CORRUPTIONS, corrupt


def images(n: int, size: int, device: str) -> torch.Tensor:
    # smooth random content (noise-free images make JPEG and blur look cheaper than they are)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).to(torch.uint8).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(name: str, x: torch.Tensor, device: str) -> float:
    g = torch.Generator(device=x.device).manual_seed(0)  # draws on the images' device
    corrupt(x[:2], name, 3, g)  # warm-up (caches, lazy imports, kernels)
    sync(device)
    t = time.perf_counter()
    for s in range(1, 6):
        corrupt(x, name, s, g)
    sync(device)
    return 5 * x.shape[0] / (time.perf_counter() - t)


def reference():
    if importlib.util.find_spec("imagecorruptions") is None:
        return None
    if importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda pkg, p: os.path.join(os.path.dirname(importlib.util.find_spec(pkg).origin), p)
        sys.modules["pkg_resources"] = shim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import imagecorruptions
    return imagecorruptions


def ref_speed(ic, name: str, img: np.ndarray, n: int) -> float | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ic.corrupt(img, corruption_name=name, severity=3)
            t = time.perf_counter()
            for i in range(n):
                ic.corrupt(img, corruption_name=name, severity=1 + i % 5)
            return n / (time.perf_counter() - t)
    except Exception:  # glass_blur and fog fail on numpy 2 / current scikit-image
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch64", type=int, default=64)
    ap.add_argument("--batch224", type=int, default=16)
    ap.add_argument("--ref-images", type=int, default=5, help="images per corruption for the reference")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x64 = images(args.batch64, 64, args.device)
    x224 = images(args.batch224, 224, args.device)
    ic = None if args.no_reference else reference()
    img = x224[0].permute(1, 2, 0).cpu().numpy()

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {dev}; torch {torch.__version__}; batches {args.batch64} x 64 px, "
          f"{args.batch224} x 224 px; all 5 severities\n")
    head = "| corruption | img/s 64 px | img/s 224 px |" + (" imagecorruptions img/s 224 px |" if ic else "")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    tot64 = tot224 = 0.0
    for name in CORRUPTIONS:
        a, b = ours(name, x64, args.device), ours(name, x224, args.device)
        tot64 += 1 / a
        tot224 += 1 / b
        row = f"| {name} | {a:,.0f} | {b:,.1f} |"
        if ic:
            r = ref_speed(ic, name, img, args.ref_images)
            row += f" {r:,.1f} |" if r else " fails here |"
        print(row, flush=True)
    print(f"| **all 15 (one image through each)** | {1 / tot64:,.1f} | {1 / tot224:,.2f} |" + (" |" if ic else ""))


if __name__ == "__main__":
    main()
