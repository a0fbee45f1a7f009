"""The supervised reference: the same backbone trained on the labels, for the same budget.

``spatialssl eval --reference supervised`` (``evaluate(..., reference="supervised")``)
trains a fresh backbone of the run's architecture with a linear head and plain
cross-entropy on the labels of the probe-train split (``eval.split_train``, all of it),
for the run's own budget: ``train.steps`` steps of ``train.batch_size`` images, AdamW at
the run's peak lr (``train.lr``, scaled by batch / 256 when ``train.lr_scale_with_batch``),
linear warmup (``train.warmup_steps``) then cosine decay to ``train.min_lr``, weight decay
``train.weight_decay``. Inputs are random-resized crops of the canvases at the global view
size (``views.global_scale``, ``views.ratio``; cut with ``views.cut``) with horizontal flips
(``views.global_flip``) and no colour augmentation. It is then frozen and evaluated with the
same protocols, subsets and seeds as the run: values ``supervised_<metric>``.

A ceiling of the kind a reader expects beside an SSL result ("what would labels have
bought at this budget"), not a tuned supervised baseline. The trained weights are cached
in the feature cache directory, keyed by everything above (and the training images' content).
This module does not import ``engine/``: evaluations stay independent of the trainer.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import config, geometry
from ..backbones import Backbone, create_backbone
from ..data.canvases import CanvasSet
from ..data.shards import ShardSet
from ..progress import bar as progress_bar
from ..views import cut, normalize
from .features import EvalContext, _digest_cached, state_digest
from ..errors import UserError

REFERENCE_VERSION = 1  # bump when the recipe below changes
REFERENCES = ("supervised",)


def lr_at(step: int, steps: int, peak: float, warmup: int, min_lr: float) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to ``min_lr``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * t))


def train_supervised(cfg: dict, data: CanvasSet | ShardSet, device: torch.device | str = "cpu", seed: int = 0,
                     progress: bool = False) -> Backbone:
    """A backbone of ``cfg["backbone"]`` trained on ``data.labels`` (see module docstring), frozen."""
    if data.labels is None:
        raise UserError("--reference supervised needs class labels on the probe-train split")
    tr, v = cfg["train"], cfg["views"]
    steps, bs = tr["steps"], tr["batch_size"]
    peak = tr["lr"] * (bs / 256 if tr["lr_scale_with_batch"] else 1.0)
    warmup = config.fraction_steps(tr["warmup_steps"], steps)  # steps, or a fraction of the run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = create_backbone(cfg["backbone"]).to(device)
        head = nn.Linear(backbone.embed_dim, int(data.labels.max()) + 1).to(device)
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=tr["weight_decay"])
    g = torch.Generator().manual_seed(seed)
    hw = data.size
    backbone.train()
    for step in progress_bar(range(steps), desc="supervised reference", enabled=progress, leave=False):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak, warmup, tr["min_lr"])
        idx = torch.randint(0, len(data), (bs,), generator=g)
        boxes = geometry.sample_boxes(bs, hw, v["global_scale"], v["ratio"], g)
        flip = torch.rand(bs, generator=g) < 0.5
        # prepared shards: only the step's batch is decoded (the split is never held in memory)
        x = (data.decode(idx) if isinstance(data, ShardSet) else data.images[idx]).to(device).float() / 255.0
        x = cut(x, boxes.to(device), v["global_size"])
        if v["global_flip"]:
            x = torch.where(flip.to(device).view(bs, 1, 1, 1), x.flip(-1), x)
        loss = F.cross_entropy(head(backbone(normalize(x))), data.labels[idx].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"supervised reference: non-finite loss at step {step}")
        opt.zero_grad()
        loss.backward()
        if tr["clip_grad"]:
            nn.utils.clip_grad_norm_(params, tr["clip_grad"])
        opt.step()
    return backbone.eval()


def reference_key(cfg: dict, data: CanvasSet | ShardSet, seed: int) -> str:
    """Hash of everything the reference backbone depends on."""
    tr, v = cfg["train"], cfg["views"]
    images = f"shards:{data.digest()}" if isinstance(data, ShardSet) else _digest_cached(data.images)
    material = {"version": REFERENCE_VERSION, "backbone": cfg["backbone"], "data": cfg["data"], "seed": seed,
                "images": images, "labels": _digest_cached(data.labels),
                # warm-up in steps, as it was written before it could be a fraction (cached references still match)
                "train": {**{k: tr[k] for k in ("steps", "batch_size", "lr", "lr_scale_with_batch", "min_lr",
                                                "weight_decay", "clip_grad")},
                          "warmup_steps": config.fraction_steps(tr["warmup_steps"], tr["steps"])},
                "views": {k: v[k] for k in ("global_size", "global_scale", "ratio", "global_flip")}}
    return hashlib.sha1(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]


def supervised_context(ctx: EvalContext) -> EvalContext:
    """``ctx``'s data and settings over the supervised reference backbone (trained or loaded)."""
    data = ctx.full_split(ctx.ecfg["split_train"])
    seed = int(ctx.cfg.get("seed", 0))
    key = reference_key(ctx.cfg, data, seed)
    path = Path(ctx.cache_dir) / f"supervised_{key}.pt" if ctx.cache_dir is not None else None
    backbone = create_backbone(ctx.cfg["backbone"])
    if path is not None and path.exists():
        try:
            backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # a damaged file is retrained, never trusted
            path.unlink()
            backbone = None
    else:
        backbone = None
    if backbone is None:
        backbone = train_supervised(ctx.cfg, data, ctx.device, seed, ctx.progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({k: t.cpu() for k, t in backbone.state_dict().items()}, tmp)
            tmp.replace(path)
    sup = ctx.with_backbone(backbone, f"supervised-{state_digest(backbone)}")
    sup.role = "supervised"
    return sup
