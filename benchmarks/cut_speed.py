"""Cost of cutting a batch's views: ``views.cut`` now (all views of a size in two batched
matmuls, per-image flips through the x-axis weights, the 1/255 scale in the weights) against
the cut before issue 18 (one view at a time, its y-axis weights broadcast into a copy over
the channels, per-image flips by a flipped copy of the fp32 canvases, a scaled copy of the
canvases), at the ViT-S/16 preset's shapes: 2 x 224 px global + 6 x 96 px local views from
448 px canvases (``configs/imagenet100_vits16_dino.yaml``).

    PYTHONPATH=src python benchmarks/cut_speed.py [--batch 32] [--threads 1] [--device cpu|cuda]

Prints ms per step's cut (median of 5 after one warm-up) for each view kind and the whole
multi-crop cut, with the FLOPs and the bytes moved per step by each (counted from the shapes:
the matmuls' operands and results once each, the copies each makes; weights included).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spatialssl import config, geometry
from spatialssl.views import _aa_weights, cut


def cut_before(canvases: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``views.cut`` for [V, B, 4] boxes as it was before issue 18 (the reference for the
    equality test, tests/test_views.py)."""
    x = canvases if canvases.is_floating_point() else canvases.float()
    b, c, h, w = x.shape
    boxes = boxes.to(x.dtype)
    flat = x.reshape(b, c * h, w)
    out = []
    for bv in boxes:  # one view per canvas at a time: memory [B, C*H, size] at most
        wx = _aa_weights(bv[:, 0], bv[:, 2], size, w)  # [B, size, W]
        wy = _aa_weights(bv[:, 1], bv[:, 3], size, h)  # [B, size, H]
        t = torch.matmul(flat, wx.transpose(1, 2)).view(b, c, h, size)
        out.append(torch.matmul(wy[:, None], t))  # [B, 1, size, H] @ [B, C, H, size]: wy broadcast (a copy)
    return torch.stack(out)


def multicrop_before(u8: torch.Tensor, gboxes: torch.Tensor, lboxes: torch.Tensor, flip: torch.Tensor,
                     gsize: int, lsize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The multi-crop's cuts before: a scaled fp32 copy, a flipped copy for per-image flips."""
    x = u8.float() / 255.0
    g = cut_before(x, gboxes, gsize)
    src = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return g, cut_before(src, lboxes, lsize)


def multicrop_now(u8: torch.Tensor, gboxes: torch.Tensor, lboxes: torch.Tensor, flip: torch.Tensor,
                  gsize: int, lsize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The multi-crop's cuts now (``MultiCrop.__call__``)."""
    x = u8.float()
    return cut(x, gboxes, gsize, scale=1 / 255), cut(x, lboxes, lsize, flip=flip, scale=1 / 255)


def counts(b: int, side: int, views: list[tuple[int, int]], now: bool, from_u8: bool, flipped: bool
           ) -> tuple[float, float]:
    """(FLOPs, bytes moved) of cutting ``views`` = [(V, size), ...] from B canvases [3, side,
    side], fp32 (4 bytes), every tensor written once and read once; ``from_u8``: the
    conversion from uint8 (and, before, the scaled copy) counted; ``flipped``: per-image flips
    (before: a flipped copy and a ``torch.where`` of the canvases)."""
    c, f4 = 3, 4
    canvas = b * c * side * side
    flops = sum(2 * b * v * s * c * side * side + 2 * b * v * s * c * side * s for v, s in views)
    moved = 0
    if from_u8:
        moved += canvas * (1 + f4) + (0 if now else 2 * canvas * f4)  # uint8 -> fp32; before: then / 255
    if flipped and not now:
        moved += 2 * canvas * f4 + 3 * canvas * f4  # x.flip(-1); torch.where (reads 2, writes 1)
    for v, s in views:
        t = b * v * c * side * s * f4  # the x-axis matmul's result
        out = b * v * c * s * s * f4
        moved += 2 * b * v * s * side * f4  # the weights wx, wy
        moved += canvas * f4 * (1 if now else v)  # the canvas, read by the x-axis matmul once (before: per view)
        moved += 2 * t + 2 * out  # the x-axis result and the output, written and read
        moved += 2 * out  # now: the permute to [V, B, C, s, s]; before: torch.stack
        if not now:
            moved += 2 * b * v * c * s * side * f4  # wy broadcast over the channels: a copy, written and read
    return flops, moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cfg = config.resolve(["dino"], [])  # the ViT-S/16 preset's views and canvases
    v, side, b = cfg["views"], cfg["data"]["canvas_size"], a.batch
    gsize, lsize, nl = v["global_size"], v["local_size"], v["n_local"]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    g = torch.Generator(dev).manual_seed(0)
    u8 = torch.randint(0, 256, (b, 3, side, side), dtype=torch.uint8, device=dev, generator=g)
    ratio = tuple(v["ratio"])
    gboxes = geometry.sample_boxes(2 * b, (side, side), tuple(v["global_scale"]), ratio, g, dev).view(2, b, 4)
    lboxes = geometry.sample_boxes(nl * b, (side, side), tuple(v["local_scale"]), ratio, g, dev).view(nl, b, 4)
    flip = torch.rand(b, generator=g, device=dev) < 0.5

    def timed(fn) -> float:
        fn()
        sync()
        ts = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1000

    x = u8.float() / 255

    def mirrored() -> torch.Tensor:  # before: per-image flips by a flipped copy of the canvases
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)

    rows = [  # (what, before, now, views, from uint8, per-image flips)
        (f"{v['n_global']} x {gsize} px global views", lambda: cut_before(x, gboxes, gsize),
         lambda: cut(x, gboxes, gsize),
         [(2, gsize)], False, False),
        (f"{nl} x {lsize} px local views, per-image flips", lambda: cut_before(mirrored(), lboxes, lsize),
         lambda: cut(x, lboxes, lsize, flip=flip), [(nl, lsize)], False, True),
        ("the step's cuts from uint8 canvases", lambda: multicrop_before(u8, gboxes, lboxes, flip, gsize, lsize),
         lambda: multicrop_now(u8, gboxes, lboxes, flip, gsize, lsize), [(2, gsize), (nl, lsize)], True, True),
    ]
    where = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU, {a.threads} thread(s)"
    print(f"views.cut at the ViT-S/16 preset's shapes, batch {b} of {side} px canvases, {where}, "
          f"torch {torch.__version__}")
    print("| cut | before ms | now ms | before / now | GFLOP | GB moved before | GB moved now |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for what, old, new, views, from_u8, flipped in rows:
        t_old, t_new = timed(old), timed(new)
        fl, by_old = counts(b, side, views, False, from_u8, flipped)
        _, by_new = counts(b, side, views, True, from_u8, flipped)
        print(f"| {what} | {t_old:.1f} | {t_new:.1f} | {t_old / t_new:.2f} | {fl / 1e9:.2f} | {by_old / 1e9:.2f} | "
              f"{by_new / 1e9:.2f} |")


if __name__ == "__main__":
    main()
