"""``segmentation``: a linear per-patch classifier on frozen patch features; mIoU.

The linear-probe protocol of DINOv2 (Oquab et al., 2023, arXiv:2304.07193, "linear" setting
without multi-layer concatenation): a 1x1 convolution maps each patch feature
(standardised by probe-train statistics) to class logits ``[B, C, h, w]``, which are
upsampled bilinearly to the mask size ``[B, C, H, W]`` and trained with per-pixel
cross-entropy (AdamW, cosine lr, ``eval.dense_epochs``), on ``ctx.device``. Reported on
the test images: mIoU over the classes present in the test masks or the predictions
(**background included**, as class 0; intersections and unions summed over the images),
per-class IoU, pixel accuracy (mean over images of each image's share of right pixels)
and the mIoU of always predicting the most frequent probe-train class. The random-init
floor (``random_*``) comes from ``evals.run_task``. Predictions are reduced (argmax,
per-image counts) chunk by chunk: full-size logits of the whole test set never exist.
Per-image outcomes: ``miou`` as intersections and unions [N, C], ``pixel_acc`` as [N].

Data: PartsWorld masks (``eval.seg_target``: ``semantic`` = object category + background,
``parts`` = every part of every category + background; in memory, or prepared shards of
PartsWorld with ``data.name=shards``), or a folder data set
``eval.seg_root/<split>/{images,masks}`` (PNG masks, value = class id, 0 = background,
``eval.seg_ignore_index`` left out), or that folder prepared as shards
(``spatialssl data prepare --layout segmentation``; ``eval.seg_root`` = the shards folder).
Dense probes hold their subsets' pixels, targets and patch features in memory: their size
is bounded by ``eval.dense_n_train`` / ``eval.dense_n_test``, not by the data set.

``fit_dense`` (the probe), ``dense_data`` and ``dense_subsets`` are shared with ``depth``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.canvases import CanvasSet
from ..data.shards import ShardSet, is_prepared
from .features import EvalContext, has_target, in_memory
from .probes import feature_stats
from .. import runfolder
from ..config import ConfigError
from ..errors import UserError

SEG_TARGETS = ("semantic", "parts")


def dense_data(ctx: EvalContext, kind: str) -> tuple[tuple[str, CanvasSet], tuple[str, CanvasSet]] | None:
    """(name, set) of the probe-train and test data that carry ``kind`` ("semantic", "parts",
    "depth") targets: folder data (or prepared shards of it) from ``eval.seg_root`` /
    ``eval.depth_root`` when set (whole splits), else the context's probe-train and test
    subsets; None when the data set has none."""
    e = ctx.ecfg
    root = e["depth_root"] if kind == "depth" else e["seg_root"]
    names = (e["split_train"], e["split_test"])
    if root:
        from ..data import folders

        size = ctx.cfg["data"]["canvas_size"]
        out = []
        for split in names:
            key = f"{kind}_{Path(root).name}_{split}"

            def load(split: str = split) -> CanvasSet:  # once per evaluation (ctx.split_once)
                d = Path(root) / split
                if is_prepared(root):  # `spatialssl data prepare --layout segmentation|depth`
                    cs = ShardSet(root, split)
                    if kind not in cs.targets:
                        raise UserError(f"eval.{'depth' if kind == 'depth' else 'seg'}_root {root}: the prepared "
                                         f"split {split} has no {kind} target (stored: {list(cs.targets) or 'none'})")
                    return cs
                if kind == "depth":
                    return folders.load_depth(str(d / "images"), str(d / "depth"), size, ctx.cfg["data"]["on_error"],
                                              e["depth_scale"], progress=ctx.progress)
                return folders.load_segmentation(str(d / "images"), str(d / "masks"), size,
                                                 ctx.cfg["data"]["on_error"], progress=ctx.progress)

            out.append((key, ctx.split_once(key, load)))
        return out[0], out[1]
    try:
        tr, te = ctx.split(names[0]), ctx.split(names[1])
    except (FileNotFoundError, ValueError):
        return None
    if not has_target(tr, kind) or not has_target(te, kind):
        return None
    return (names[0], tr), (names[1], te)


def dense_subsets(ctx: EvalContext, data: tuple) -> tuple[CanvasSet, CanvasSet]:
    """Seeded, stratified samples of ``eval.dense_n_train`` / ``eval.dense_n_test`` images of
    the dense probe-train and test data (0 = all), in memory (a ShardSet's decoded once)."""
    (n_tr, tr), (n_te, te) = data
    e = ctx.ecfg
    out = []
    for name, cs, n in ((n_tr, tr, e["dense_n_train"]), (n_te, te, e["dense_n_test"])):
        sub = ctx.sample(cs, n, f"dense:{name}")
        if isinstance(sub, ShardSet):  # decoded once per evaluation, shared by the run and its floor
            sub = ctx.subset_once(("dense-decoded", name, sub.digest()), lambda sub=sub: in_memory(sub))
        out.append(sub)
    return out[0], out[1]


def patch_features(ctx: EvalContext, split: str, cs: CanvasSet) -> torch.Tensor:
    """Cached patch features [N, D, h, w] of ``cs`` (a subset of ``split``)."""
    return ctx.features(split, patch=True, images=cs.images)[1]


def _interp_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """[n_out, n_in]: 1-D linear interpolation as ``F.interpolate(..., align_corners=False)`` does it."""
    return F.interpolate(torch.eye(n_in, device=device)[None], size=n_out, mode="linear", align_corners=False)[0].T


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling [B, C, h, w] -> [B, C, H, W], equal to ``F.interpolate(mode="bilinear",
    align_corners=False)``, written as two small matrix products (bilinear is separable):
    on CPU, forward and backward together run ~2x faster than ``upsample_bilinear2d``."""
    ry, rx = _interp_matrix(x.shape[-2], size[0], x.device), _interp_matrix(x.shape[-1], size[1], x.device)
    return torch.einsum("Hh,bchw,Ww->bcHW", ry, x, rx)


def upsample_last(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``upsample`` with channels last: [B, C, h, w] -> [B, H, W, C], as two batched matrix
    products (the layout makes a per-pixel argmax over C a contiguous reduction: ~10x faster
    on CPU than an argmax over dim 1 of [B, C, H, W])."""
    b, c, h, w = x.shape
    ry, rx = _interp_matrix(h, size[0], x.device), _interp_matrix(w, size[1], x.device)
    t = torch.matmul(rx, x.permute(0, 2, 3, 1))  # [B, h, W, C]
    return torch.matmul(ry, t.reshape(b, h, -1)).view(b, size[0], size[1], c)


PREDICT_FLOATS = 1 << 25  # logits held at once when predicting (128 MB of fp32), whatever N


def fit_dense(feats: torch.Tensor, target: torch.Tensor, out_ch: int,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], epochs: int, lr: float,
              batch_size: int, seed: int, device: torch.device | str = "cpu"
              ) -> Callable[[torch.Tensor, tuple[int, int]], Iterator[tuple[int, torch.Tensor]]]:
    """Train a 1x1-conv head on patch features (on ``device``); logits upsampled bilinearly.

    Args:
        feats: [N, D, h, w] frozen patch features (standardised here by their own statistics;
            kept where they are, moved to ``device`` one batch at a time).
        target: [N, H, W] per-pixel targets (what ``loss_fn`` expects).
        out_ch: output channels C.
        loss_fn: (prediction [B, C, H, W], target [B, H, W]) -> scalar.
    Returns:
        ``predict(feats [M, D, h, w], size (H, W))``: yields ``(start, logits [m, H, W, C])``
        (channels last) chunk by chunk (no grad), at most ``PREDICT_FLOATS`` logits at a time:
        callers reduce each chunk (argmax, per-image errors) and never hold all M maps.
    """
    g = torch.Generator().manual_seed(seed)
    d = feats.shape[1]
    mean, std = (t.to(device) for t in feature_stats(feats, (0, 2, 3)))
    head = nn.Conv2d(d, out_ch, 1).to(device)
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
            logits = upsample(head((feats[idx].to(device) - mean) / std), size)
            loss = loss_fn(logits, target[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    @torch.no_grad()
    def predict(f: torch.Tensor, out_size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
        chunk = max(1, PREDICT_FLOATS // (out_ch * out_size[0] * out_size[1]))
        for i in range(0, len(f), chunk):
            yield i, upsample_last(head((f[i:i + chunk].to(device) - mean) / std), out_size)

    return predict


def confusion(pred: torch.Tensor, target: torch.Tensor, n: int, ignore: int | None = None) -> torch.Tensor:
    """[n, n] pixel counts (rows: ground truth, columns: prediction)."""
    keep = target != ignore if ignore is not None else torch.ones_like(target, dtype=torch.bool)
    keep &= (target >= 0) & (target < n)
    idx = target[keep] * n + pred[keep]
    return torch.bincount(idx, minlength=n * n).view(n, n)


def _max_label(y: torch.Tensor, ignore: int | None, chunk: int = 64) -> int:
    """Largest class id in masks [N, H, W] other than ``ignore`` (-1 if none), chunk by chunk."""
    best = -1
    for part in y.split(chunk):
        keep = part[part != ignore] if ignore is not None else part.flatten()
        if keep.numel():
            best = max(best, int(keep.max()))
    return best


def image_counts(pred: torch.Tensor, target: torch.Tensor, n: int, ignore: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image intersection and union of every class: pred, target [B, H, W] -> [B, n], [B, n]
    (pixels with the ignore value, or outside 0..n-1, left out)."""
    b = len(target)
    keep = (target >= 0) & (target < n)
    if ignore is not None:
        keep &= target != ignore
    img = torch.arange(b, device=target.device).view(b, 1, 1).expand_as(target)
    t, p, i = target[keep], pred[keep], img[keep]
    count = lambda v: torch.bincount(i * n + v, minlength=b * n).view(b, n)  # noqa: E731
    inter = torch.bincount((i * n + t)[p == t], minlength=b * n).view(b, n)
    return inter.cpu(), (count(t) + count(p) - inter).cpu()


def iou_from_counts(inter: torch.Tensor, union: torch.Tensor, names: list[str], prefix: str = "") -> dict:
    """mIoU over the classes **present** (non-zero union: in the ground truth or the
    predictions), and per-class IoU, from summed counts [C]."""
    inter, union = inter.double(), union.double()
    present = union > 0
    iou = inter / union.clamp(min=1)
    out = {f"{prefix}miou": float(iou[present].mean()) if present.any() else 0.0}
    if not prefix:
        out.update({f"iou_{names[c]}": float(iou[c]) for c in range(len(names)) if present[c]})
    return out


def iou_scores(conf: torch.Tensor, names: list[str], prefix: str = "") -> dict:
    """mIoU (classes present in ground truth or prediction), per-class IoU, pixel accuracy,
    from a confusion matrix [C, C]."""
    conf = conf.double()
    tp = conf.diag()
    out = iou_from_counts(tp, conf.sum(0) + conf.sum(1) - tp, names, prefix)
    out[f"{prefix}pixel_acc"] = float(tp.sum() / conf.sum().clamp(min=1))
    return out


def class_names(tr: CanvasSet, target: str) -> list[str]:
    """Known class names by id (background first); folder masks have none beyond background."""
    if target == "semantic" and tr.class_names:
        return ["background", *tr.class_names]
    if target == "parts" and tr.meta.get("part_names"):
        return list(tr.meta["part_names"])
    return ["background"]


def probe(ctx: EvalContext, data: tuple, target: str, examples: bool = False) -> dict:
    """Fit and score the segmentation probe on ``ctx``'s backbone (records per-image outcomes)."""
    e = ctx.ecfg
    ignore = e["seg_ignore_index"]
    tr, te = dense_subsets(ctx, data)
    y_tr, y_te = getattr(tr, target), getattr(te, target)
    known = class_names(tr, target)
    n_cls = max(_max_label(y_tr, ignore), _max_label(y_te, ignore)) + 1
    n_cls = max(n_cls, len(known))
    names = [known[i] if i < len(known) else f"class{i}" for i in range(n_cls)]
    f_tr = patch_features(ctx, data[0][0], tr)
    f_te = patch_features(ctx, data[1][0], te)
    loss = lambda p, t: F.cross_entropy(p, t, ignore_index=ignore)  # noqa: E731
    predict = fit_dense(f_tr, y_tr, n_cls, loss, e["dense_epochs"], e["dense_lr"], e["dense_batch_size"], ctx.seed,
                        ctx.device)
    ex = example_index(len(te), e["n_examples"]) if examples else torch.zeros(0, dtype=torch.long)
    inter, union, ex_pred = [], [], {}
    for i, logits in predict(f_te, tuple(y_te.shape[-2:])):
        pred = logits.argmax(-1)  # per chunk: the full-size logits of all images never exist at once
        tgt = y_te[i:i + len(pred)].to(pred.device)
        a, b = image_counts(pred, tgt, n_cls, ignore)
        inter.append(a)
        union.append(b)
        for j in ex.tolist():
            if i <= j < i + len(pred):
                ex_pred[j] = pred[j - i].cpu()
    inter, union = torch.cat(inter), torch.cat(union)
    ctx.record("miou", "miou", inter=inter, union=union)
    out = iou_from_counts(inter.sum(0), union.sum(0), names)
    # pixel accuracy: mean over test images of each image's share of right pixels (images with
    # no scored pixel left out); equal to the pooled share when every image scores as many pixels
    n_pix = torch.cat([((y >= 0) & (y < n_cls) & (y != ignore)).flatten(1).sum(1) for y in y_te.split(64)])
    has = n_pix > 0
    acc = inter.sum(1)[has].double() / n_pix[has]
    ctx.record("pixel_acc", "mean", x=acc)
    out["pixel_acc"] = float(acc.mean())
    counts = sum(torch.bincount(y[(y != ignore) & (y >= 0) & (y < n_cls)], minlength=n_cls) for y in y_tr.split(64))
    m_inter = torch.zeros(n_cls, dtype=torch.long)
    m_union = torch.zeros(n_cls, dtype=torch.long)
    for y in y_te.split(64):  # chunked: per-pixel temporaries stay bounded whatever N
        a, b = image_counts(torch.full_like(y, int(counts.argmax())), y, n_cls, ignore)
        m_inter, m_union = m_inter + a.sum(0), m_union + b.sum(0)
    out["majority_miou"] = iou_from_counts(m_inter, m_union, names, "m_")["m_miou"]
    out.update({"n_classes": n_cls, "n_train": len(tr), "n_test": len(te),
                "patch_grid": list(f_tr.shape[-2:]), "mask_size": list(y_te.shape[-2:])})
    if examples and len(ex):
        save_examples(ctx, "segmentation", {"images": te.images[ex], "target": y_te[ex],
                                            "pred": torch.stack([ex_pred[j] for j in ex.tolist()]),
                                            "class_names": names})
    return out


def example_index(n: int, k: int) -> torch.Tensor:
    """``k`` indices spread evenly over ``n`` test images (not the first k: splits may be
    ordered by class)."""
    return torch.arange(min(k, n)) * max(1, n // max(k, 1))


def save_examples(ctx: EvalContext, task: str, data: dict) -> Path | None:
    """Small example arrays for the report: ``<run>/metrics/<task>_examples.npz`` (first seed only).

    Written beside the metrics of a checkpoint's run directory (``ctx.cache_dir`` is
    ``<run>/features``); contexts without a cache directory save nothing.
    """
    if ctx.cache_dir is None or ctx.seed != 0 or ctx.role != "run" or not ctx.ecfg["n_examples"]:
        return None
    return runfolder.write_items(Path(ctx.cache_dir).parent, task, "examples", data)


def run(ctx: EvalContext) -> dict:
    e = ctx.ecfg
    target = e["seg_target"]
    if target not in SEG_TARGETS:
        raise ConfigError(f"config key 'eval.seg_target' must be one of {', '.join(SEG_TARGETS)}; got {target!r}")
    if e["seg_root"]:
        target = "semantic"
    data = dense_data(ctx, target)
    if data is None:
        reason = f"data set has no {target} masks (set eval.seg_root for folder data)"
        warnings.warn(f"segmentation skipped: {reason}")
        return {"skipped": reason}
    return {"target": target, **probe(ctx, data, target, examples=True)}
