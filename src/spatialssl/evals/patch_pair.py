"""``patch_pair``: can a small probe read relative position and scale off frozen embeddings?

For held-out images, pairs of disjoint patches (boxes drawn by SP's own pair sampler, at
``eval.pp_scale``) are cut, resized to ``eval.pp_crop_size`` and embedded by the frozen
backbone (pooled embedding). An MLP probe on ``[z_a, z_b, z_a - z_b, z_a * z_b]``
regresses the standardised ``(dx, dy, ds)`` (canvas offsets). Probe-train and probe-test
pairs come from different images (first and second half of the test split). Reported:
R^2 per component on probe-test and probe-train (a small probe overfits easily: compare
the two; the probe is early-stopped on pairs of 10% of the probe-train images), MAE (in target units), sign accuracy (right/left, below/above, larger/smaller),
and the same numbers for a random-init backbone of the same architecture, the floor.
No flips: the geometry must stay intact.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import geometry
from ..sp import COMPONENTS, r2_score
from ..views import cut, normalize
from .features import EvalContext
from .probes import feature_stats


def make_pairs(images: torch.Tensor, pairs_per_image: int, scale: tuple[float, float], crop: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops a, b: float [N*P, 3, crop, crop] (normalised) and targets [N*P, 3]."""
    n, _, h, w = images.shape
    g = torch.Generator().manual_seed(seed)
    a, b, _ = geometry.sample_disjoint_pairs(n * pairs_per_image, (h, w), scale, (0.75, 4 / 3), 0.0, 32, g)
    owner = torch.arange(n).repeat_interleave(pairs_per_image)
    x = images.float() / 255.0
    ca = normalize(cut(x, a, crop, owner))
    cb = normalize(cut(x, b, crop, owner))
    return ca, cb, geometry.sp_targets(a, b, (h, w), "canvas")


@torch.no_grad()
def _embed(backbone, crops: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    return torch.cat([backbone(crops[i:i + batch].to(device)).float().cpu() for i in range(0, len(crops), batch)])


def fit_probe(za: torch.Tensor, zb: torch.Tensor, t: torch.Tensor, hidden: int, epochs: int, seed: int,
              n_val: int = 0) -> nn.Module:
    """MLP probe, full-batch AdamW with weight decay on standardised inputs.

    With ``n_val > 0`` the last ``n_val`` rows (pairs from other images) are held out and
    the probe is early-stopped on them: a small probe overfits these pairs quickly.
    """
    torch.manual_seed(seed)
    d = za.shape[1]
    probe = nn.Sequential(nn.Linear(4 * d, hidden), nn.GELU(), nn.Linear(hidden, 3))
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.cat([za, zb, za - zb, za * zb], 1)
    x_tr, t_tr = (x[:-n_val], t[:-n_val]) if n_val else (x, t)
    best, best_state = float("inf"), None
    for epoch in range(epochs):
        opt.zero_grad()
        F.mse_loss(probe(x_tr), t_tr).backward()
        opt.step()
        if n_val and (epoch % 5 == 4 or epoch == epochs - 1):
            with torch.no_grad():
                val = F.mse_loss(probe(x[-n_val:]), t[-n_val:]).item()
            if val < best:
                best, best_state = val, {k: v.clone() for k, v in probe.state_dict().items()}
    if best_state is not None:
        probe.load_state_dict(best_state)
    return probe


def _scores(pred: torch.Tensor, t: torch.Tensor, prefix: str) -> dict:
    r2 = r2_score(pred, t)
    sign = ((pred > 0) == (t > 0)).float().mean(0)
    out = {}
    for i, c in enumerate(COMPONENTS):
        out[f"{prefix}r2_{c}"] = float(r2[i])
        out[f"{prefix}sign_acc_{c}"] = float(sign[i])
    out[f"{prefix}mae"] = float((pred - t).abs().mean())
    return out


def probe_backbone(ctx: EvalContext, backbone) -> dict:
    e = ctx.ecfg
    images = ctx.split(e["split_test"]).images
    crop = e["pp_crop_size"] or ctx.cfg["views"]["local_size"]
    ca, cb, t = make_pairs(images, e["pp_pairs_per_image"], tuple(e["pp_scale"]), crop, ctx.seed)
    za, zb = _embed(backbone, ca, ctx.device), _embed(backbone, cb, ctx.device)
    # standardise embeddings and targets by probe-train statistics
    half = (len(images) // 2) * e["pp_pairs_per_image"]
    mean, std = feature_stats(torch.cat([za[:half], zb[:half]]), 0)
    za, zb = (za - mean) / std, (zb - mean) / std
    t_std = t[:half].std(0).clamp(min=1e-6)
    ts = t / t_std  # no centring: signs stay meaningful
    n_val = (len(images) // 2 // 10) * e["pp_pairs_per_image"]  # pairs of the last 10% of probe-train images
    probe = fit_probe(za[:half], zb[:half], ts[:half], e["pp_hidden"], e["pp_epochs"], ctx.seed, n_val)
    with torch.no_grad():
        pred = probe(torch.cat([za, zb, za - zb, za * zb], 1))
    return {**_scores(pred[half:], ts[half:], ""), **_scores(pred[:half], ts[:half], "train_"),
            "n_pairs_train": half, "n_pairs_test": len(t) - half}


def run(ctx: EvalContext) -> dict:
    out = probe_backbone(ctx, ctx.backbone)
    if ctx.ecfg["random_floor"]:
        floor = probe_backbone(ctx, ctx.random_backbone().eval().to(ctx.device))
        out.update({f"random_{k}": v for k, v in floor.items() if not k.startswith("n_")})
    return out
