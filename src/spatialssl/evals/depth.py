"""``depth``: a linear per-patch regressor on frozen patch features; RMSE, AbsRel, delta<1.25.

The linear depth probe of DINOv2 (Oquab et al., 2023, arXiv:2304.07193), in its simplest
form: a 1x1 convolution maps each standardised patch feature to one value, upsampled
bilinearly to the depth map's size and trained with a per-pixel squared error on depth
standardised by probe-train statistics (the probe is ``segmentation.fit_dense``). DINOv2
classifies into depth bins; a plain regression is enough to compare backbones here.

Metrics over the valid pixels of the test images (Eigen et al., 2014, arXiv:1406.2283),
computed per image and averaged over the test images that have a valid pixel (each image
weighs alike): ``rmse`` = sqrt(mean over images of the image's mean squared error) (depth
units), ``abs_rel`` = mean over images of mean |pred - gt| / gt, ``delta1`` = mean over
images of the share of pixels with max(pred/gt, gt/pred) < 1.25, and ``mean_rmse``, the
same RMSE for always predicting the mean probe-train depth (the floor of a useless
probe). Predictions are clamped to the valid range seen in probe-train before scoring.
**No per-image scale (or shift) alignment** is applied: the probe must get absolute depth
right, unlike the median-scaled protocols of monocular self-supervised depth.
Per-image outcomes: ``rmse`` as ``sq`` [N] (per-image MSE), ``abs_rel`` and ``delta1`` as
``mean`` [N].

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
from .segmentation import dense_data, dense_subsets, example_index, fit_dense, patch_features, save_examples
from ..errors import UserError


def valid_mask(cs: CanvasSet) -> torch.Tensor:
    """bool [N, H, W]: pixels whose depth carries geometry (see module docstring)."""
    d = cs.depth
    ok = torch.isfinite(d) & (d > 0)
    far = cs.meta.get("far")
    if far is not None:
        ok &= d < float(far)
    return ok


def depth_scores(pred: torch.Tensor, gt: torch.Tensor, prefix: str = "") -> dict:
    """RMSE, AbsRel, delta<1.25 over matching 1-D tensors of valid pixels (one image)."""
    ratio = torch.maximum(pred / gt, gt / pred)
    return {f"{prefix}rmse": float((pred - gt).pow(2).mean().sqrt()),
            f"{prefix}abs_rel": float(((pred - gt).abs() / gt).mean()),
            f"{prefix}delta1": float((ratio < 1.25).float().mean())}


def image_errors(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image errors over **valid pixels only**: pred, gt [B, H, W], valid bool [B, H, W] ->
    ``sq`` (mean squared error), ``abs_rel``, ``delta1`` and ``n`` (valid pixels), each [B]
    (0 where an image has no valid pixel; such images are left out by the caller)."""
    v = valid.flatten(1).double()
    p, g = pred.flatten(1).double(), torch.where(valid, gt, torch.ones_like(gt)).flatten(1).double()
    n = v.sum(1)
    mean = lambda t: (t * v).sum(1) / n.clamp(min=1)  # noqa: E731
    ratio = torch.maximum(p / g, g / p)
    return {"sq": mean((p - g).pow(2)), "abs_rel": mean((p - g).abs() / g), "delta1": mean((ratio < 1.25).double()),
            "n": n}


def probe(ctx: EvalContext, data: tuple, examples: bool = False) -> dict:
    """Fit and score the depth probe on ``ctx``'s backbone (records per-image outcomes)."""
    e = ctx.ecfg
    tr, te = dense_subsets(ctx, data)
    v_tr, v_te = valid_mask(tr), valid_mask(te)
    if not v_tr.any() or not v_te.any():
        raise UserError("depth probe: no valid depth pixels in the probe-train or test images")
    mu, sd = tr.depth[v_tr].mean(), tr.depth[v_tr].std().clamp(min=1e-6)
    lo, hi = tr.depth[v_tr].min(), tr.depth[v_tr].max()
    target = torch.where(v_tr, (tr.depth - mu) / sd, torch.nan)  # NaN marks pixels left out

    def loss(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ok = ~torch.isnan(t)
        return (p[:, 0][ok] - t[ok]).pow(2).mean() if ok.any() else p.sum() * 0.0

    predict = fit_dense(patch_features(ctx, data[0][0], tr), target, 1, loss, e["dense_epochs"], e["dense_lr"],
                        e["dense_batch_size"], ctx.seed, ctx.device)
    ex = example_index(len(te), e["n_examples"]) if examples else torch.zeros(0, dtype=torch.long)
    errs, ex_pred = [], {}
    for i, out in predict(patch_features(ctx, data[1][0], te), tuple(te.depth.shape[-2:])):
        pred = (out[..., 0].cpu() * sd + mu).clamp(lo, hi)
        sl = slice(i, i + len(pred))
        errs.append(image_errors(pred, te.depth[sl], v_te[sl]))
        for j in ex.tolist():
            if i <= j < i + len(pred):
                ex_pred[j] = pred[j - i]
    err = {k: torch.cat([d[k] for d in errs]) for k in errs[0]}
    has = err["n"] > 0  # images with at least one valid pixel: the test items
    ctx.record("rmse", "rmse", sq=err["sq"][has])
    ctx.record("abs_rel", "mean", x=err["abs_rel"][has])
    ctx.record("delta1", "mean", x=err["delta1"][has])
    out = {"rmse": float(err["sq"][has].mean().sqrt()), "abs_rel": float(err["abs_rel"][has].mean()),
           "delta1": float(err["delta1"][has].mean())}
    base = image_errors(torch.full_like(te.depth, float(mu)), te.depth, v_te)
    out["mean_rmse"] = float(base["sq"][has].mean().sqrt())
    out.update({"valid_frac": float(v_te.float().mean()), "n_train": len(tr), "n_test": len(te),
                "n_scored": int(has.sum())})
    if examples and len(ex):
        save_examples(ctx, "depth", {"images": te.images[ex], "target": te.depth[ex],
                                     "pred": torch.stack([ex_pred[j] for j in ex.tolist()]), "valid": v_te[ex]})
    return out


def run(ctx: EvalContext) -> dict:
    data = dense_data(ctx, "depth")
    if data is None:
        reason = "data set has no depth maps (set eval.depth_root for folder data)"
        warnings.warn(f"depth skipped: {reason}")
        return {"skipped": reason}
    return probe(ctx, data, examples=True)
