"""Probe any pretrained backbone: the evaluations of ``evaluate`` on (arch, weights file)
instead of a training run (``spatialssl probe``; docs/evaluations.md "Probing a pretrained
backbone").

The backbone comes from ``pretrained.load_pretrained`` (timm or torchvision architecture,
weights in any common layout, classifier heads dropped and listed). The config is the
defaults with ``--set`` overrides of the ``eval``, ``data`` and ``views`` sections (the
views' sizes are the default eval image, patch-pair crop and jigsaw tile sizes). For a ViT
every eval size is rounded to a multiple of its patch size (timm refuses others), and the
sizes used are written in the metrics' ``eval_config``. The random-init floor
(``eval.random_floor``) is the same architecture, built the same way, at random init.

The metrics JSON names the weights (``arch``, ``weights``: file, sha256, where the state dict
was in the file, prefixes stripped, keys dropped) and has no framework, SP flag or step.

>>> probe("dinov2_vits14_reg4.pth", "vit_small_patch14_reg4_dinov2", "patch_pair,jigsaw", "runs/probe/dinov2")
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from .. import config as config_mod
from .. import runfolder
from ..pretrained import load_pretrained, random_like
from . import evaluate_context, parse_tasks
from .features import EvalContext

log = logging.getLogger(__name__)

SECTIONS = ("eval", "data", "views")  # what `probe --set` may change: the model comes from --arch and the file
SIZES = (("img_size", "global_size"), ("pp_crop_size", "local_size"), ("jigsaw_tile_size", "local_size"))


def probe_config(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The defaults with ``key=value`` overrides of the eval.*, data.* and views.* keys."""
    config_mod.check_sections(overrides, SECTIONS, "probe", "the model comes from --arch and --weights; constructor "
                                                          "arguments with --arch-arg")
    return config_mod.resolve([], list(overrides), warn=False)


def fit_sizes(cfg: dict, patch: int) -> dict:
    """``cfg`` with eval.img_size, pp_crop_size and jigsaw_tile_size made explicit (0 -> the
    views' size) and, for a ViT of patch ``patch`` (0: a CNN), rounded to a multiple of it."""
    cfg = copy.deepcopy(cfg)
    e = cfg["eval"]
    for key, view in SIZES:
        size = int(e[key] or cfg["views"][view])
        if patch:
            fitted = max(patch, round(size / patch) * patch)
            if fitted != size:
                log.info("probe: eval.%s %d -> %d (a multiple of the ViT's patch size %d)", key, size, fitted, patch)
            size = fitted
        e[key] = size
    return cfg


def context_from_weights(weights: str | Path, arch: str, cfg: dict, arch_kwargs: dict | None = None,
                         device: str = "cpu", seed: int = 0, progress: bool = True,
                         cache_dir: Path | None = None) -> EvalContext:
    """The frozen evaluation context of a pretrained backbone (``load_pretrained``)."""
    backbone, info = load_pretrained(arch, weights, arch_kwargs)
    if info["dropped"]:
        log.info("probe: %d key(s) of %s dropped (heads / not the backbone): %s", len(info["dropped"]), weights,
                 ", ".join(info["dropped"][:10]) + (" ..." if len(info["dropped"]) > 10 else ""))
    patch = backbone.model.patch_embed.patch_size[0] if backbone.kind == "vit" else 0
    if patch:
        info["img_size"] = backbone.model.patch_embed.img_size[0]  # the file's pos-embed grid, for the floor
    cfg = fit_sizes(cfg, patch)
    ctx = EvalContext(cfg, backbone, info["sha256"][:16], device, cache_dir, seed, progress,
                      run_name=f"{weights} ({arch})")
    ctx.weights = info
    ctx.factory = lambda s: random_like(arch, info, s)
    return ctx


def probe(weights: str | Path, arch: str, tasks: str | list[str] = "patch_pair,jigsaw",
          out_dir: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
          arch_kwargs: dict | None = None, seeds: int | None = None, device: str = "cpu",
          progress: bool = True) -> dict[str, dict]:
    """Run ``tasks`` on a pretrained backbone; write ``metrics/<task>.json`` and
    ``metrics/<task>_outcomes.npz`` under ``out_dir`` (default ``runs/probe/<arch>-<sha256[:8]>``),
    features cached in ``out_dir/features``.

    Returns:
        {task: mean values} (with ``random_<metric>`` floors when ``eval.random_floor``).
    """
    names = parse_tasks(tasks)
    cfg = probe_config(overrides)
    ctx = context_from_weights(weights, arch, cfg, arch_kwargs, device, 0, progress)
    out = Path(out_dir) if out_dir else Path("runs/probe") / f"{arch.replace(':', '_')}-{ctx.weights['sha256'][:8]}"
    ctx.cache_dir = out / runfolder.FEATURES
    return evaluate_context(ctx, names, seeds, out, progress)
