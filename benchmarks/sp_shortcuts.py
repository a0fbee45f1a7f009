"""Shortcut diagnostic for SP: how much of (dx, dy, ds) low-level statistics of the two views
explain on images with no structure.

On pink noise (1/f amplitude spectrum: scale-invariant, so a crop's size is not visible in
its content, and position-free) nothing about a pair's geometry should be readable from
each view's own statistics. Where it is, SP can learn the statistic instead of "where":
e.g. local views upsampled 2.4-6.7x from a 64 px canvas are blurrier the smaller their box,
and two per-view Laplacian energies then explain R^2 0.64 of ds (issue 9).

For each preset: pink-noise canvases at the preset's ``data.canvas_size``, its local views
cut as SP pairs by ``MultiCrop`` with the preset's own photometric augmentation, per-view
statistics (mean, std, Laplacian and gradient energy, high-/low-frequency ratio of the
luma, per-channel means), and a small regressor (ridge on quadratic features) fitted on half of the pairs to predict each
target from the two views' statistics; the table shows its R^2 on the other half.
``--max-canvas`` shrinks canvas and views alike (same upsampling factors) to run faster.

    PYTHONPATH=src python benchmarks/sp_shortcuts.py [--pairs 4000] [--max-canvas 72]
    PYTHONPATH=src python benchmarks/sp_shortcuts.py --fallbacks   # pair sampler's fallback rates
    PYTHONPATH=src python benchmarks/sp_shortcuts.py --gap         # roi_align footprint across a gap

``tests/test_sp_shortcuts.py`` keeps every shipped preset below R^2 0.1 (small n, scale).
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F

from spatialssl import config, geometry
from spatialssl.views import MultiCrop

PRESETS = ["dino_sp", "ibot_sp", "mocov3_sp", "simclr_sp", "byol_sp", "demo", "demo_dino"]
# the settings the issue measured the shortcut on: DEFAULTS' 96 px local views from 64 px canvases
BEFORE = ("defaults, 64 px canvas (before)", ["sp.enabled=true", "data.canvas_size=64"])


def pink_noise(n: int, side: int, g: torch.Generator) -> torch.Tensor:
    """uint8 [n, 3, side, side] images with a 1/f amplitude spectrum, each channel scaled to [0, 255]."""
    white = torch.randn(n, 3, side, side, generator=g)
    fy = torch.fft.fftfreq(side)[:, None]
    fx = torch.fft.fftfreq(side)[None, :]
    f = torch.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    x = torch.fft.ifft2(torch.fft.fft2(white) / f).real
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return ((x - lo) / (hi - lo) * 255).round().to(torch.uint8)


_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def view_stats(v: torch.Tensor) -> torch.Tensor:
    """Low-level statistics of views [N, 3, s, s] -> [N, 9]."""
    y = (0.299 * v[:, 0] + 0.587 * v[:, 1] + 0.114 * v[:, 2]).unsqueeze(1)
    lap = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), _LAPLACE)
    gx, gy = y[..., :, 1:] - y[..., :, :-1], y[..., 1:, :] - y[..., :-1, :]
    std = y.std(dim=(1, 2, 3))
    lap_e = lap.pow(2).mean(dim=(1, 2, 3))
    grad_e = gx.pow(2).mean(dim=(1, 2, 3)) + gy.pow(2).mean(dim=(1, 2, 3))
    hf = lap_e / std.pow(2).clamp(min=1e-6)
    return torch.stack([y.mean(dim=(1, 2, 3)), std, torch.log(lap_e + 1e-6), torch.log(grad_e + 1e-6),
                        torch.log(hf + 1e-6), *v.mean(dim=(2, 3)).unbind(1)], dim=1)


def fit_r2(x: torch.Tensor, t: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """Held-out R^2 [K] of a small regressor (x [N, F] -> t [N, K]) fitted on the first half:
    ridge regression on the standardised statistics, their squares and the pairwise
    differences and products of the two views' statistics (closed form: no training noise,
    and little overfitting with a few hundred pairs)."""
    f = x.shape[1] // 2
    xa, xb = x[:, :f], x[:, f:]
    x = torch.cat([x, x ** 2, xa - xb, xa * xb], 1).double()
    n = x.shape[0] // 2
    mu, sd = x[:n].mean(0), x[:n].std(0).clamp(min=1e-6)
    x = torch.cat([(x - mu) / sd, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    t = t.double()
    tm = t[:n].mean(0)
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(x[:n].T @ x[:n] + ridge * n * eye, x[:n].T @ (t[:n] - tm))
    p = x[n:] @ w + tm
    return (1 - ((p - t[n:]) ** 2).mean(0) / t[n:].var(0, unbiased=False).clamp(min=1e-12)).float()


def scaled(cfg: dict, scale: float) -> dict:
    """``cfg`` with canvas and view sizes multiplied by ``scale`` (same upsampling factors)."""
    cfg = copy.deepcopy(cfg)
    side = cfg["data"]["canvas_size"]
    k = max(1, round(side * scale)) / side
    cfg["data"]["canvas_size"] = round(side * k)
    for key in ("global_size", "local_size"):
        cfg["views"][key] = max(4, round(cfg["views"][key] * k))
    cfg["sp"]["min_gap"] *= k
    return cfg


def shortcut_r2(cfg: dict, pairs: int = 4000, scale: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Held-out R^2 of (dx, dy, ds) from per-view statistics of SP pairs on pink noise, with
    ``cfg``'s canvas, local views, photometric augmentation and pair sampler."""
    cfg = scaled(cfg, scale)
    cfg["views"].update(n_global=1, global_size=4)  # global views play no part here
    side = cfg["data"]["canvas_size"]
    g = torch.Generator().manual_seed(seed)
    canv = pink_noise(pairs, side, g)
    sp = cfg["sp"]
    mc = MultiCrop(cfg["views"], n_local=2, max_iou=sp["max_iou"], candidates=sp["pair_candidates"],
                   min_gap=sp["min_gap"])
    feats, targets, valid = [], [], []
    for i in range(0, pairs, 500):
        v = mc(canv[i:i + 500], g)
        sa, sb = view_stats(v.locals[0]), view_stats(v.locals[1])
        feats.append(torch.cat([sa, sb], 1))
        targets.append(geometry.sp_targets(v.local_boxes[0], v.local_boxes[1], (side, side), sp["offsets"]))
        valid.append(v.sp_valid[0])
    x, t, ok = torch.cat(feats), torch.cat(targets), torch.cat(valid)
    r2 = fit_r2(x[ok], t[ok])
    return {"dx": float(r2[0]), "dy": float(r2[1]), "ds": float(r2[2])}


def preset_config(name: str, overrides: list[str] | None = None) -> dict:
    return config.resolve([name] if name else [], ["sp.enabled=true", *(overrides or [])])


def _old_sampler(n, hw, scale, ratio, candidates, g):
    """The former pair sampler, for comparison: a drawn once, the first of ``candidates``
    boxes b with IoU 0 kept, no gap."""
    a = geometry.sample_boxes(n, hw, scale, ratio, g)
    cand = geometry.sample_boxes(n * candidates, hw, scale, ratio, g).view(n, candidates, 4)
    ok = geometry.box_iou(a[:, None], cand) <= 1e-6
    return ok.any(1)


def fallback_table(n: int = 20000) -> None:
    """Fallback rates per preset: the former sampler, the joint one without a gap, the default."""
    print("| preset | canvas | local scale | old sampler | joint, 16 cand., no gap | joint, 64 cand., 3 px gap | mean ds / std |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in ["demo", "dino_sp", "ibot_sp", "byol_sp", ""]:
        cfg = preset_config(name, [] if name else ["data.canvas_size=64"])
        v, side = cfg["views"], cfg["data"]["canvas_size"]
        hw, sc, r = (side, side), tuple(v["local_scale"]), tuple(v["ratio"])
        g = torch.Generator().manual_seed(0)
        old = 1 - _old_sampler(n, hw, sc, r, 16, g).float().mean()
        _, _, v16 = geometry.sample_pairs(n, hw, sc, r, 0.0, 16, g)
        a, b, v64 = geometry.sample_pairs(n, hw, sc, r, 0.0, 64, g, min_gap=3.0)
        t = geometry.sp_targets(a[v64], b[v64], hw)
        print(f"| {name or 'defaults at 64 px'} | {side} | {sc[0]:g}-{sc[1]:g} | {100 * old:.1f}% | "
              f"{100 * (1 - v16.float().mean()):.1f}% | {100 * (1 - v64.float().mean()):.2f}% | "
              f"{float(t[:, 2].mean() / t[:, 2].std()):+.3f} |")


def gap_table() -> None:
    """How far roi_align reads beyond a box edge, and whether pairs ``gap`` px apart share
    (or touch) canvas pixels: from the gradient of the views with respect to the canvas."""
    from spatialssl.views import cut

    g = torch.Generator().manual_seed(0)
    print("| gap | views | pairs | share a pixel | share or touch (8-neighbours) |")
    print("|---|---|---:|---:|---:|")
    for gap in (0.0, 1.0, 2.0, 3.0):
        a, b, ok = geometry.sample_pairs(4000, (64, 64), (0.04, 0.16), (0.75, 4 / 3), 0.0, 64, g, min_gap=gap)
        tight = ok & (geometry.box_separation(a, b) < gap + 0.25)
        a, b = a[tight][:400], b[tight][:400]
        for size in (16, 96):
            foot = []
            for bx in (a, b):
                x = torch.zeros(len(bx), 1, 64, 64, requires_grad=True)
                cut(x, bx, size).sum().backward()
                foot.append(x.grad[:, 0] != 0)
            near = F.max_pool2d(foot[0].float()[:, None], 3, 1, 1)[:, 0] > 0
            share = (foot[0] & foot[1]).flatten(1).any(1).float().mean()
            touch = (near & foot[1]).flatten(1).any(1).float().mean()
            print(f"| {gap:g} px | {size} px | {len(a)} | {100 * share:.0f}% | {100 * touch:.0f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--max-canvas", type=int, default=0,
                    help="shrink each preset's canvas and views alike to this canvas side (same upsampling); 0 = as is")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fallbacks", action="store_true", help="print the pair sampler's fallback rates instead")
    ap.add_argument("--gap", action="store_true", help="print roi_align's pixel footprint across a gap instead")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.fallbacks or a.gap:
        (fallback_table if a.fallbacks else gap_table)()
        return
    rows = [BEFORE] + [(p, []) for p in a.presets.split(",") if p]
    print(f"SP shortcut diagnostic: pink noise, {a.pairs} pairs per preset, canvas at most {a.max_canvas or 'as is'} px; "
          f"held-out R^2 of a ridge regressor on per-view statistics\n")
    print("| preset | canvas | local views | upsampled | R² dx | R² dy | R² ds |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for name, ov in rows:
        t0 = time.perf_counter()
        cfg = preset_config("" if name.startswith("defaults") else name, ov)
        v, side = cfg["views"], cfg["data"]["canvas_size"]
        scale = min(1.0, a.max_canvas / side) if a.max_canvas else 1.0
        r = shortcut_r2(cfg, a.pairs, scale)
        lo, hi = config.upsampling(v["local_size"], tuple(v["local_scale"]), side)
        print(f"| {name} | {side} | {v['local_size']} px, scale {v['local_scale'][0]:g}-{v['local_scale'][1]:g} | "
              f"{lo:.2f}-{hi:.2f}x | {r['dx']:.3f} | {r['dy']:.3f} | {r['ds']:.3f} |  ({time.perf_counter() - t0:.0f} s)")
    print(f"\n(min_gap {cfg['sp']['min_gap']:g} canvas px at full scale; scaled with the canvas; "
          f"{math.ceil(a.pairs / 2)} pairs to fit, the rest to test)")


if __name__ == "__main__":
    main()
