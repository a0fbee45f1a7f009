"""``depth``: a linear per-patch regressor on frozen patch features; RMSE, AbsRel, delta<1.25.

The linear depth probe of DINOv2 (Oquab et al., 2023, arXiv:2304.07193), in its simplest
form: a 1x1 convolution maps each standardised patch feature to one value, upsampled
bilinearly to the depth map's size and trained with a per-pixel squared error on depth
standardised by probe-train statistics (the probe is ``segmentation.fit_dense``). DINOv2
classifies into depth bins; a plain regression is enough to compare backbones here.

Metrics over the valid pixels of the test images (Eigen et al., 2014, arXiv:1406.2283):
``rmse`` (depth units), ``abs_rel`` = mean |pred - gt| / gt, ``delta1`` = share of pixels
with max(pred/gt, gt/pred) < 1.25, and ``mean_rmse``, the RMSE of always predicting the
mean probe-train depth (the floor of a useless probe). Predictions are clamped to the
valid range seen in probe-train before scoring.

Valid pixels: on **PartsWorld** the depth of sky and of anything at or beyond the far plane
is clipped to ``far`` (``meta["far"]``, 30 scene units), a constant that carries no
geometry: those pixels are left out of training and scoring (``depth < far``). On folder
data (``eval.depth_root/<split>/{images,depth}``) zeros and non-finite values are invalid,
as in NYUv2/KITTI.
"""

from __future__ import annotations

import warnings

import torch

from ..data.canvases import CanvasSet
from .features import EvalContext
from .segmentation import dense_data, example_index, first, fit_dense, patch_features, save_examples


def valid_mask(cs: CanvasSet) -> torch.Tensor:
    """bool [N, H, W]: pixels whose depth carries geometry (see module docstring)."""
    d = cs.depth
    ok = torch.isfinite(d) & (d > 0)
    far = cs.meta.get("far")
    if far is not None:
        ok &= d < float(far)
    return ok


def depth_scores(pred: torch.Tensor, gt: torch.Tensor, prefix: str = "") -> dict:
    """RMSE, AbsRel, delta<1.25 over matching 1-D tensors of valid pixels."""
    ratio = torch.maximum(pred / gt, gt / pred)
    return {f"{prefix}rmse": float((pred - gt).pow(2).mean().sqrt()),
            f"{prefix}abs_rel": float(((pred - gt).abs() / gt).mean()),
            f"{prefix}delta1": float((ratio < 1.25).float().mean())}


def probe(ctx: EvalContext, splits: tuple[str, str], examples: bool = False) -> dict:
    """Fit and score the depth probe on ``ctx``'s backbone."""
    e = ctx.ecfg
    tr = first(ctx, splits[0], e["dense_n_train"])
    te = first(ctx, splits[1], e["dense_n_test"])
    v_tr, v_te = valid_mask(tr), valid_mask(te)
    if not v_tr.any() or not v_te.any():
        raise ValueError("depth probe: no valid depth pixels in the probe-train or test images")
    mu, sd = tr.depth[v_tr].mean(), tr.depth[v_tr].std().clamp(min=1e-6)
    lo, hi = tr.depth[v_tr].min(), tr.depth[v_tr].max()
    target = torch.where(v_tr, (tr.depth - mu) / sd, torch.nan)  # NaN marks pixels left out

    def loss(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ok = ~torch.isnan(t)
        return (p[:, 0][ok] - t[ok]).pow(2).mean() if ok.any() else p.sum() * 0.0

    predict = fit_dense(patch_features(ctx, splits[0], tr), target, 1, loss, e["dense_epochs"], e["dense_lr"],
                        e["dense_batch_size"], ctx.seed)
    pred = (predict(patch_features(ctx, splits[1], te), tuple(te.depth.shape[-2:]))[:, 0] * sd + mu).clamp(lo, hi)
    out = depth_scores(pred[v_te], te.depth[v_te])
    out["mean_rmse"] = float((te.depth[v_te] - mu).pow(2).mean().sqrt())
    out.update({"valid_frac": float(v_te.float().mean()), "n_train": len(tr), "n_test": len(te)})
    if examples:
        i = example_index(len(te), e["n_examples"])
        save_examples(ctx, "depth", {"images": te.images[i], "target": te.depth[i], "pred": pred[i],
                                     "valid": v_te[i]})
    return out


def run(ctx: EvalContext) -> dict:
    splits = dense_data(ctx, "depth")
    if splits is None:
        reason = "data set has no depth maps (set eval.depth_root for folder data)"
        warnings.warn(f"depth skipped: {reason}")
        return {"skipped": reason}
    out = probe(ctx, splits, examples=True)
    if ctx.ecfg["random_floor"]:
        floor = probe(ctx.with_backbone(ctx.random_backbone(), "random"), splits)
        out.update({f"random_{k}": v for k, v in floor.items() if k in ("rmse", "abs_rel", "delta1")})
    return out
