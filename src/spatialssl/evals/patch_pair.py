"""``patch_pair``: can a small probe read relative position and scale off frozen embeddings?

For held-out images, pairs of disjoint patches (boxes drawn by SP's own pair sampler, at
``eval.pp_scale``) are cut, resized to ``eval.pp_crop_size`` and embedded by the frozen
backbone (pooled embedding), in streamed batches (crops are cut per batch on
``ctx.device``; the crops of all pairs never exist at once). An MLP probe on
``[z_a, z_b, z_a - z_b, z_a * z_b]`` regresses the standardised ``(dx, dy, ds)`` (canvas
offsets). The test subset's images are split into two halves, a seeded random sample
stratified by class: probe-train pairs come from one half, probe-test pairs from the other,
so they never share an image. The eval seed draws the halves, the boxes and the probe.

Reported: R^2 per component on probe-test (centred: 1 - SS_res / SS_tot around the test
targets' mean) and probe-train (a small probe overfits easily: compare the two; the probe
is early-stopped on pairs of 10% of the probe-train images), MAE (in target units), sign
accuracy (right/left, below/above, larger/smaller). The random-init floor (``random_*``)
comes from ``evals.run_task``. No flips: the geometry must stay intact.
Per-pair outcomes: ``r2_<c>`` as ``err2``/``target`` [N pairs], ``sign_acc_<c>`` and ``mae``
as ``mean`` [N pairs], each with ``group`` [N pairs], the test image of each pair (the
report's bootstrap draws images, all pairs of one together: ``evals.GROUPED``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import geometry
from ..sp import COMPONENTS
from ..views import cut, normalize
from .features import EvalContext, stratified_sample
from .probes import feature_stats


def make_boxes(n: int, hw: tuple[int, int], pairs_per_image: int, scale: tuple[float, float],
               seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes a, b [n*P, 4] of disjoint pairs, the image of each pair [n*P] and targets [n*P, 3]."""
    g = torch.Generator().manual_seed(seed)
    a, b, _ = geometry.sample_disjoint_pairs(n * pairs_per_image, hw, scale, (0.75, 4 / 3), 0.0, 32, g)
    owner = torch.arange(n).repeat_interleave(pairs_per_image)
    return a, b, owner, geometry.sp_targets(a, b, hw, "canvas")


@torch.no_grad()
def embed_boxes(backbone, images: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor, crop: int,
                device, batch: int = 256) -> torch.Tensor:
    """Pooled embeddings [K, D] (CPU) of crops ``boxes`` [K, 4] of uint8 ``images`` [N, 3, H, W]
    (box k from image ``owner[k]``), cut and embedded ``batch`` at a time on ``device``."""
    out = []
    for i in range(0, len(boxes), batch):
        own = owner[i:i + batch]
        uniq, local = own.unique(return_inverse=True)
        x = images[uniq].to(device).float() / 255.0
        crops = normalize(cut(x, boxes[i:i + batch].to(device), crop, local.to(device)))
        out.append(backbone(crops).float().cpu())
    return torch.cat(out)


def r2(err2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Centred coefficient of determination from squared errors and targets [N] or [N, K]:
    1 - sum(err2) / sum((target - mean(target))^2)."""
    ss_tot = (target - target.mean(0)).pow(2).sum(0).clamp(min=1e-12)
    return 1 - err2.sum(0) / ss_tot


def fit_probe(za: torch.Tensor, zb: torch.Tensor, t: torch.Tensor, hidden: int, epochs: int, seed: int,
              n_val: int = 0) -> nn.Module:
    """MLP probe, full-batch AdamW with weight decay on standardised inputs (on ``za``'s device).

    With ``n_val > 0`` the last ``n_val`` rows (pairs from other images) are held out and
    the probe is early-stopped on them: a small probe overfits these pairs quickly.
    """
    torch.manual_seed(seed)
    d = za.shape[1]
    probe = nn.Sequential(nn.Linear(4 * d, hidden), nn.GELU(), nn.Linear(hidden, 3)).to(za.device)
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


def _scores(pred: torch.Tensor, t: torch.Tensor, prefix: str, ctx: EvalContext | None = None,
            image: torch.Tensor | None = None) -> dict:
    """Scores of predictions ``pred`` [N, 3] of targets ``t`` [N, 3]; with ``ctx``, records the
    per-pair outcomes, each with the test image of its pair (``image`` [N]) as ``group``: the
    pairs of one image are not independent, and the report resamples images."""
    err2 = (pred - t).pow(2)
    r = r2(err2, t)
    sign = ((pred > 0) == (t > 0)).float()
    out = {}
    for i, c in enumerate(COMPONENTS):
        out[f"{prefix}r2_{c}"] = float(r[i])
        out[f"{prefix}sign_acc_{c}"] = float(sign[:, i].mean())
        if ctx is not None:
            ctx.record(f"r2_{c}", "r2", err2=err2[:, i], target=t[:, i], group=image)
            ctx.record(f"sign_acc_{c}", "mean", x=sign[:, i], group=image)
    mae = (pred - t).abs().mean(1)
    out[f"{prefix}mae"] = float(mae.mean())
    if ctx is not None:
        ctx.record("mae", "mean", x=mae, group=image)
    return out


def halves(ctx: EvalContext, n: int, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe-train and probe-test image indices: a seeded half stratified by class, and the rest."""
    tr = stratified_sample(n, n // 2, labels, f"patch_pair:halves/n={n}/seed={ctx.seed}")
    mask = torch.ones(n, dtype=torch.bool)
    mask[tr] = False
    return tr, mask.nonzero().flatten()


def run(ctx: EvalContext) -> dict:
    e = ctx.ecfg
    te = ctx.split(e["split_test"])
    images = te.images
    crop = e["pp_crop_size"] or ctx.cfg["views"]["local_size"]
    p = e["pp_pairs_per_image"]
    a, b, owner, t = make_boxes(len(images), te.size, p, tuple(e["pp_scale"]), ctx.seed)
    img_tr, img_te = halves(ctx, len(images), te.labels)
    # pairs grouped by image, probe-train images first (their last 10% are the early-stopping set)
    rows = lambda imgs: (imgs[:, None] * p + torch.arange(p)).flatten()  # noqa: E731
    r_tr, r_te = rows(img_tr), rows(img_te)
    order = torch.cat([r_tr, r_te])
    a, b, owner, t = a[order], b[order], owner[order], t[order]
    half = len(r_tr)
    za = embed_boxes(ctx.backbone, images, a, owner, crop, ctx.device, e["batch_size"]).to(ctx.device)
    zb = embed_boxes(ctx.backbone, images, b, owner, crop, ctx.device, e["batch_size"]).to(ctx.device)
    if not (torch.isfinite(za).all() and torch.isfinite(zb).all()):
        raise ctx.fail("non-finite patch embeddings")
    # standardise embeddings and targets by probe-train statistics
    mean, std = feature_stats(torch.cat([za[:half], zb[:half]]), 0)
    za, zb = (za - mean) / std, (zb - mean) / std
    t = t.to(ctx.device)
    ts = t / t[:half].std(0).clamp(min=1e-6)  # no centring: signs stay meaningful
    n_val = (len(img_tr) // 10) * p  # pairs of the last 10% of probe-train images
    probe = fit_probe(za[:half], zb[:half], ts[:half], e["pp_hidden"], e["pp_epochs"], ctx.seed, n_val)
    with torch.no_grad():
        pred = probe(torch.cat([za, zb, za - zb, za * zb], 1)).cpu()
    ts = ts.cpu()
    return {**_scores(pred[half:], ts[half:], "", ctx, owner[half:]), **_scores(pred[:half], ts[:half], "train_"),
            "n_pairs_train": half, "n_pairs_test": len(t) - half, "n_test": len(img_te), "n_train": len(img_tr)}
