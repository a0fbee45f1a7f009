"""``robustness``: the linear probe under the 15 ImageNet-C corruptions, and on an OOD split.

The probe of ``linear`` (trained on clean probe-train features; ``linear.fit``) is applied
to frozen features of corrupted test images: ``eval.robust_n_test`` images of the test
subset (a seeded sample stratified by class), corrupted by ``corruptions.corrupt`` (ImageNet-C, Hendrycks &
Dietterich, 2019, arXiv:1903.12261) for every corruption in ``eval.robust_corruptions``
(all 15 by default) at every severity in ``eval.robust_severities`` (1..5 by default).

Like ImageNet-C, the corruption of an image is fixed: each (corruption, severity) draws its
noise from a generator seeded by its own name and severity, not by the eval seed (the
eval seed draws which test images are used, and the probe).

Values (accuracies in [0, 1]):

- ``acc_<corruption>_s<k>``: per corruption and severity;
- ``acc_<corruption>``: per corruption, mean over the severities;
- ``acc_s<k>``: per severity, mean over the corruptions; ``acc_s0`` = ``clean_top1``, the
  probe on the same clean images (severity 0 is the identity; kept for the severity plot);
- ``mCA``: mean corruption accuracy over all corruptions and severities >= 1;
  ``rel_mCA`` = mCA / clean (1 = no loss). ImageNet-C's mCE normalises by AlexNet's
  errors, which have no counterpart here, so it is not reported.
- ``ood_top1``: the probe on ``eval.robust_n_test`` images (seeded, stratified) of the ``ood``
  split (PartsWorld: unseen palettes, textures, lighting and skies), when the data set has
  one and ``eval.robust_ood`` is on.

On prepared shards (``data.name=shards``) nothing is decoded whole: clean and corrupted
features come from streamed batches (each chunk of ``CORRUPT_BATCH`` images corrupted in
order with the same fixed generator, so the corrupted images are the in-memory path's).

Per-image outcomes (``mean``): 0/1 correctness for ``clean_top1``, ``acc_<c>_s<k>`` and
``ood_top1``; for the aggregates (``acc_<c>``, ``acc_s<k>``, ``mCA``) each image's mean
correctness over the grid it averages. ``rel_mCA`` (a ratio) has none.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import torch

from ..data.canvases import CanvasSet
from ..data.shards import ShardSet, has_split
from ..progress import bar as progress_bar
from . import corruptions as _corruptions
from . import linear
from .corruptions import CORRUPTIONS, corrupt
from .features import EvalContext, tensor_digest
from .probes import correct
from ..config import ConfigError
from ..errors import UserError


def settings(ecfg: dict) -> tuple[list[str], list[int]]:
    """The corruptions and severities (>= 1) to score, validated."""
    names = list(ecfg["robust_corruptions"]) or list(CORRUPTIONS)
    bad = [n for n in names if n not in CORRUPTIONS]
    if bad:
        raise ConfigError(f"config key 'eval.robust_corruptions' has unknown {bad}; allowed: {', '.join(CORRUPTIONS)}")
    sevs = sorted({int(s) for s in ecfg["robust_severities"]} or {1, 2, 3, 4, 5})
    if any(s < 1 or s > 5 for s in sevs):
        raise ConfigError(f"config key 'eval.robust_severities' must hold severities in 1..5, got {sevs}")
    return names, sevs


def corruption_generator(name: str, severity: int) -> torch.Generator:
    """The fixed generator of one (corruption, severity) test set."""
    return torch.Generator().manual_seed(zlib.crc32(f"{name}/{severity}".encode()))


# corrupted test sets do not depend on the checkpoint: kept in memory (up to _CACHE_BYTES)
# so that evaluating a second run in the same process (baseline, then + SP) reuses them;
# keyed by the images' content, the corruption, and the corruption code (the source of
# corruptions.py and the function called), so a code change never reuses old images
_CACHE: dict[tuple, torch.Tensor] = {}
_CACHE_BYTES = 1 << 30
CORRUPTION_CODE = hashlib.sha1(Path(_corruptions.__file__).read_bytes()).hexdigest()[:12]


CORRUPT_BATCH = 256  # images corrupted per call of the generator (in memory and streamed alike)


def corrupted(images: torch.Tensor, name: str, severity: int, batch: int | None = None) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> the same images corrupted (in chunks of ``CORRUPT_BATCH``; deterministic)."""
    batch = batch or CORRUPT_BATCH
    key = (tensor_digest(images), name, severity, CORRUPTION_CODE, corrupt, batch)
    if key in _CACHE:
        return _CACHE[key]
    g = corruption_generator(name, severity)
    out = torch.cat([corrupt(images[i:i + batch], name, severity, g) for i in range(0, len(images), batch)])
    if sum(t.numel() for t in _CACHE.values()) + out.numel() <= _CACHE_BYTES:
        _CACHE[key] = out
    return out


def linear_probe(ctx: EvalContext):
    """``linear.fit(ctx)`` on the class labels, fitted once per context (robustness and jigsaw
    share it; it depends only on the probe-train features and the seed)."""
    memo = ctx.__dict__.setdefault("_linear_probe", {})
    if ctx.seed not in memo:
        memo[ctx.seed] = linear.fit(ctx)
    return memo[ctx.seed]


def ood_split(ctx: EvalContext) -> CanvasSet | None:
    """The ``ood`` split when the data set has one (PartsWorld; a folder with ``ood/``)."""
    data = ctx.cfg["data"]
    if ctx.has_split("ood") or data["name"] == "partsworld" or (
            data["name"] == "folder" and data["root"] and (Path(data["root"]) / "ood").is_dir()) or (
            data["name"] == "shards" and data["root"] and has_split(data["root"], "ood")):
        return ctx.split("ood")
    return None


def run(ctx: EvalContext) -> dict:
    e = ctx.ecfg
    names, sevs = settings(e)
    split = e["split_test"]
    te = ctx.sample(ctx.split(split), e["robust_n_test"], "robustness:test")
    # prepared shards stay streamed: clean and corrupted features from batches decoded in workers
    stream = isinstance(te, ShardSet)
    images, y = (te if stream else te.images), te.labels
    if y is None:
        raise UserError(f"robustness needs labels on split {split}")
    head, norm, _, _ = linear_probe(ctx)

    def right(imgs: torch.Tensor | ShardSet, tag: str, labels: torch.Tensor = y, name: str = split,
              shaped: dict | None = None, transform=None) -> torch.Tensor:
        f, _ = ctx.features(name, images=imgs, tag=tag, settings=shaped, transform=transform,
                            transform_batch=CORRUPT_BATCH)
        return correct(linear.predict(head, norm, f), labels)

    def corrupted_right(c: str, s: int) -> torch.Tensor:
        shaped = {"corruption": c, "severity": s, "code": CORRUPTION_CODE}
        if not stream:
            return right(corrupted(images, c, s), f"{c}{s}", shaped=shaped)
        # keyed by the shards' digest, not the corrupted pixels: the function called names the code too
        shaped["function"] = f"{corrupt.__module__}.{corrupt.__qualname__}"
        g = corruption_generator(c, s)  # consumed chunk by chunk, in order: the in-memory images exactly
        return right(images, f"{c}{s}", shaped=shaped, transform=lambda b: corrupt(b, c, s, g))

    clean = right(images, "")
    ctx.record("clean_top1", "mean", x=clean)
    out: dict = {"clean_top1": float(clean.mean()), "acc_s0": float(clean.mean())}
    grid: dict[tuple[str, int], torch.Tensor] = {}
    jobs = [(c, s) for c in names for s in sevs]
    for c, s in progress_bar(jobs, desc="corruptions", enabled=ctx.progress, leave=False):
        grid[c, s] = corrupted_right(c, s)
        ctx.record(f"acc_{c}_s{s}", "mean", x=grid[c, s])
        out[f"acc_{c}_s{s}"] = float(grid[c, s].mean())
    # aggregates as per-image means over the grid (so each is a mean over test images too)
    for c in names:
        x = torch.stack([grid[c, s] for s in sevs]).mean(0)
        ctx.record(f"acc_{c}", "mean", x=x)
        out[f"acc_{c}"] = float(x.mean())
    for s in sevs:
        x = torch.stack([grid[c, s] for c in names]).mean(0)
        ctx.record(f"acc_s{s}", "mean", x=x)
        out[f"acc_s{s}"] = float(x.mean())
    mca = torch.stack(list(grid.values())).mean(0)
    ctx.record("mCA", "mean", x=mca)
    out["mCA"] = float(mca.mean())
    out["rel_mCA"] = out["mCA"] / out["clean_top1"] if out["clean_top1"] > 0 else 0.0
    if e["robust_ood"] and split != "ood":
        ood = ood_split(ctx)
        if ood is not None and ood.labels is not None:
            ood = ctx.sample(ood, e["robust_n_test"], "robustness:ood")
            x = right(ood if isinstance(ood, ShardSet) else ood.images, "", ood.labels, "ood")
            ctx.record("ood_top1", "mean", x=x)
            out["ood_top1"] = float(x.mean())
            out["n_ood"] = len(ood)
    out.update({"n_test": len(y), "corruptions": names, "severities": sevs})
    return out
