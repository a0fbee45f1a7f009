"""Cost of cutting a batch's views: ``views.cut`` (antialiased bilinear, two batched matmuls
per view) vs ``torchvision.ops.roi_align`` (the former cut, bilinear with adaptive sampling).

    PYTHONPATH=src python benchmarks/cut_speed.py [--threads 1] [--device cpu|cuda]

Prints ms per call (mean of 3 after one warm-up) for the demo's and the ViT presets' views.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.ops import roi_align

from spatialssl import geometry
from spatialssl.views import cut


def roi(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    v, b, _ = boxes.shape
    idx = torch.arange(b, device=x.device).repeat(v).float()[:, None]
    return roi_align(x, torch.cat([idx, boxes.reshape(-1, 4)], 1), (size, size), 1.0, -1, True)


SETTINGS = [  # (batch, canvas, views, view size, box scale, what)
    (128, 64, 4, 16, (0.0625, 0.16), "demo local views"),
    (128, 64, 2, 32, (0.3, 1.0), "demo global views"),
    (16, 448, 10, 96, (0.05, 0.4), "ViT presets' local views (iBOT's 10)"),
    (16, 448, 2, 224, (0.4, 1.0), "ViT presets' global views"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    print(f"| views | batch x views | canvas | view | views.cut ms | roi_align ms | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for b, side, v, n, sc, what in SETTINGS:
        x = torch.rand(b, 3, side, side, device=dev)
        bx = geometry.sample_boxes(v * b, (side, side), sc, (0.75, 4 / 3), device=dev).view(v, b, 4)
        ms = []
        for fn in (cut, roi):
            fn(x, bx, n)
            sync()
            t = time.perf_counter()
            for _ in range(3):
                fn(x, bx, n)
            sync()
            ms.append((time.perf_counter() - t) / 3 * 1000)
        print(f"| {what} | {b} x {v} | {side} | {n} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[0] / ms[1]:.2f} |")


if __name__ == "__main__":
    main()
