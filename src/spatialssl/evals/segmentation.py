"""``segmentation``: a linear per-patch classifier on frozen patch features; mIoU.

The linear-probe protocol of DINOv2 (Oquab et al., 2023, arXiv:2304.07193, "linear" setting
without multi-layer concatenation): a 1x1 convolution maps each patch feature
(standardised by probe-train statistics) to class logits ``[B, C, h, w]``, which are
upsampled bilinearly to the mask size ``[B, C, H, W]`` and trained with per-pixel
cross-entropy (AdamW, cosine lr, ``eval.dense_epochs``). Reported on the test images:
mIoU over the classes present in the test masks or the predictions (**background
included**, as class 0), per-class IoU, pixel accuracy, the mIoU of always predicting the
most frequent probe-train class, and (``eval.random_floor``) the same probe on a
random-init backbone of the same architecture.

Data: PartsWorld masks (``eval.seg_target``: ``semantic`` = object category + background,
``parts`` = every part of every category + background), or a folder data set
``eval.seg_root/<split>/{images,masks}`` (PNG masks, value = class id, 0 = background,
``eval.seg_ignore_index`` left out).

``fit_dense`` (the probe) and ``dense_data`` are shared with ``depth``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.canvases import CanvasSet
from .features import EvalContext
from .probes import feature_stats

SEG_TARGETS = ("semantic", "parts")


def dense_data(ctx: EvalContext, kind: str) -> tuple[str, str] | None:
    """Split names (probe-train, test) of ``ctx`` that carry ``kind`` ("semantic", "parts",
    "depth") targets, loading folder data from ``eval.seg_root`` / ``eval.depth_root`` when
    set; None when the data set has none."""
    e = ctx.ecfg
    root = e["depth_root"] if kind == "depth" else e["seg_root"]
    names = (e["split_train"], e["split_test"])
    if root:
        from ..data import folders

        size = ctx.cfg["data"]["canvas_size"]
        out = []
        for split in names:
            key = f"{kind}_{Path(root).name}_{split}"
            if key not in ctx._splits:
                d = Path(root) / split
                if kind == "depth":
                    cs = folders.load_depth(str(d / "images"), str(d / "depth"), size, ctx.cfg["data"]["on_error"],
                                            e["depth_scale"], progress=ctx.progress)
                else:
                    cs = folders.load_segmentation(str(d / "images"), str(d / "masks"), size,
                                                   ctx.cfg["data"]["on_error"], progress=ctx.progress)
                ctx._splits[key] = cs
            out.append(key)
        return out[0], out[1]
    try:
        tr, te = ctx.split(names[0]), ctx.split(names[1])
    except (FileNotFoundError, ValueError):
        return None
    if getattr(tr, kind) is None or getattr(te, kind) is None:
        return None
    return names


def first(ctx: EvalContext, split: str, n: int) -> CanvasSet:
    """The first ``n`` images of a split (0 = all)."""
    cs = ctx.split(split)
    return cs if not n or n >= len(cs) else cs.subset(slice(0, n))


def patch_features(ctx: EvalContext, split: str, cs: CanvasSet) -> torch.Tensor:
    """Cached patch features [N, D, h, w] of ``cs`` (the first rows of ``split``)."""
    return ctx.features(split, patch=True, images=cs.images)[1]


def _interp_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in]: 1-D linear interpolation as ``F.interpolate(..., align_corners=False)`` does it."""
    return F.interpolate(torch.eye(n_in)[None], size=n_out, mode="linear", align_corners=False)[0].T


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling [B, C, h, w] -> [B, C, H, W], equal to ``F.interpolate(mode="bilinear",
    align_corners=False)``, written as two small matrix products (bilinear is separable):
    on CPU, forward and backward together run ~2x faster than ``upsample_bilinear2d``."""
    ry, rx = _interp_matrix(x.shape[-2], size[0]), _interp_matrix(x.shape[-1], size[1])
    return torch.einsum("Hh,bchw,Ww->bcHW", ry, x, rx)


def fit_dense(feats: torch.Tensor, target: torch.Tensor, out_ch: int,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], epochs: int, lr: float,
              batch_size: int, seed: int) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    """Train a 1x1-conv head on patch features; logits upsampled bilinearly to the target size.

    Args:
        feats: [N, D, h, w] frozen patch features (standardised here by their own statistics).
        target: [N, H, W] per-pixel targets (what ``loss_fn`` expects).
        out_ch: output channels C.
        loss_fn: (prediction [B, C, H, W], target [B, H, W]) -> scalar.
    Returns:
        ``predict(feats [M, D, h, w], size (H, W)) -> [M, C, H, W]`` (no grad).
    """
    g = torch.Generator().manual_seed(seed)
    d = feats.shape[1]
    mean, std = feature_stats(feats, (0, 2, 3))
    head = nn.Conv2d(d, out_ch, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    n = len(feats)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    size = tuple(target.shape[-2:])
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            logits = upsample(head((feats[idx] - mean) / std), size)
            loss = loss_fn(logits, target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    @torch.no_grad()
    def predict(f: torch.Tensor, out_size: tuple[int, int], chunk: int = 256) -> torch.Tensor:
        return torch.cat([upsample(head((f[i:i + chunk] - mean) / std), out_size) for i in range(0, len(f), chunk)])

    return predict


def confusion(pred: torch.Tensor, target: torch.Tensor, n: int, ignore: int | None = None) -> torch.Tensor:
    """[n, n] pixel counts (rows: ground truth, columns: prediction)."""
    keep = target != ignore if ignore is not None else torch.ones_like(target, dtype=torch.bool)
    keep &= (target >= 0) & (target < n)
    idx = target[keep] * n + pred[keep]
    return torch.bincount(idx, minlength=n * n).view(n, n)


def iou_scores(conf: torch.Tensor, names: list[str], prefix: str = "") -> dict:
    """mIoU (classes present in ground truth or prediction), per-class IoU, pixel accuracy."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = tp / union.clamp(min=1)
    out = {f"{prefix}miou": float(iou[present].mean()) if present.any() else 0.0,
           f"{prefix}pixel_acc": float(tp.sum() / conf.sum().clamp(min=1))}
    if not prefix:
        out.update({f"iou_{names[c]}": float(iou[c]) for c in range(len(names)) if present[c]})
    return out


def class_names(tr: CanvasSet, target: str) -> list[str]:
    """Known class names by id (background first); folder masks have none beyond background."""
    if target == "semantic" and tr.class_names:
        return ["background", *tr.class_names]
    if target == "parts" and tr.meta.get("part_names"):
        return list(tr.meta["part_names"])
    return ["background"]


def probe(ctx: EvalContext, splits: tuple[str, str], target: str, examples: bool = False) -> dict:
    """Fit and score the segmentation probe on ``ctx``'s backbone."""
    e = ctx.ecfg
    ignore = e["seg_ignore_index"]
    tr = first(ctx, splits[0], e["dense_n_train"])
    te = first(ctx, splits[1], e["dense_n_test"])
    y_tr, y_te = getattr(tr, target), getattr(te, target)
    valid = torch.cat([y_tr[y_tr != ignore].unique(), y_te[y_te != ignore].unique()])
    known = class_names(tr, target)
    n_cls = max(int(valid.max()) + 1, len(known))
    names = [known[i] if i < len(known) else f"class{i}" for i in range(n_cls)]
    f_tr = patch_features(ctx, splits[0], tr)
    f_te = patch_features(ctx, splits[1], te)
    loss = lambda p, t: F.cross_entropy(p, t, ignore_index=ignore)  # noqa: E731
    predict = fit_dense(f_tr, y_tr, n_cls, loss, e["dense_epochs"], e["dense_lr"], e["dense_batch_size"], ctx.seed)
    pred = predict(f_te, tuple(y_te.shape[-2:])).argmax(1)
    out = iou_scores(confusion(pred, y_te, n_cls, ignore), names)
    counts = torch.bincount(y_tr[(y_tr != ignore) & (y_tr < n_cls)].flatten(), minlength=n_cls)
    majority = torch.full_like(y_te, int(counts.argmax()))
    out["majority_miou"] = iou_scores(confusion(majority, y_te, n_cls, ignore), names, "m_")["m_miou"]
    out.update({"n_classes": n_cls, "n_train": len(tr), "n_test": len(te),
                "patch_grid": list(f_tr.shape[-2:]), "mask_size": list(y_te.shape[-2:])})
    if examples:
        i = example_index(len(te), e["n_examples"])
        save_examples(ctx, "segmentation", {"images": te.images[i], "target": y_te[i], "pred": pred[i],
                                            "class_names": names})
    return out


def example_index(n: int, k: int) -> torch.Tensor:
    """``k`` indices spread evenly over ``n`` test images (not the first k: splits may be
    ordered by class)."""
    return torch.arange(min(k, n)) * max(1, n // max(k, 1))


def save_examples(ctx: EvalContext, task: str, data: dict) -> Path | None:
    """Small example arrays for the report: ``<run>/metrics/<task>_examples.pt`` (first seed only).

    Written beside the metrics of a checkpoint's run directory (``ctx.cache_dir`` is
    ``<run>/features``); contexts without a cache directory save nothing.
    """
    if ctx.cache_dir is None or ctx.seed != 0 or not ctx.ecfg["n_examples"]:
        return None
    path = Path(ctx.cache_dir).parent / "metrics" / f"{task}_examples.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: a slice keeps its whole split's storage, and torch.save would write all of it
    torch.save({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in data.items()}, path)
    return path


def run(ctx: EvalContext) -> dict:
    e = ctx.ecfg
    target = e["seg_target"]
    if target not in SEG_TARGETS:
        raise ValueError(f"config key 'eval.seg_target' must be one of {', '.join(SEG_TARGETS)}; got {target!r}")
    if e["seg_root"]:
        target = "semantic"
    splits = dense_data(ctx, target)
    if splits is None:
        reason = f"data set has no {target} masks (set eval.seg_root for folder data)"
        warnings.warn(f"segmentation skipped: {reason}")
        return {"skipped": reason}
    out = {"target": target, **probe(ctx, splits, target, examples=True)}
    if e["random_floor"]:
        floor = probe(ctx.with_backbone(ctx.random_backbone(), "random"), splits, target)
        out.update({f"random_{k}": v for k, v in floor.items() if k in ("miou", "pixel_acc")})
    return out
