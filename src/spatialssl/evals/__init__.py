"""Evaluations on frozen backbones: one protocol per file, over ``features.EvalContext``.

Each protocol is ``run(ctx) -> dict`` of metrics; ``evaluate`` runs the chosen tasks over
one or more seeds and writes ``<run>/metrics/<task>.json`` for each (values, spread over
seeds, eval config, seed, checkpoint hash).

>>> evaluate("runs/demo/dino_sp", ["knn", "linear", "patch_pair"])
"""

from __future__ import annotations

import importlib
import statistics
from pathlib import Path

from tqdm import tqdm

from .features import EvalContext, context_from_checkpoint, write_metrics

# task name -> module in this package (each has ``run(ctx) -> dict``)
TASKS: dict[str, str] = {
    "knn": "knn",
    "linear": "linear",
    "patch_pair": "patch_pair",
    "finegrained": "finegrained",
    "segmentation": "segmentation",
    "depth": "depth",
    "robustness": "robustness",
    "jigsaw": "jigsaw",
}


def available_tasks() -> list[str]:
    """Tasks whose module exists in this installation."""
    out = []
    for name, mod in TASKS.items():
        try:
            importlib.import_module(f"{__name__}.{mod}")
            out.append(name)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{mod}":
                raise
    return out


def parse_tasks(tasks: str | list[str]) -> list[str]:
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    avail = available_tasks()
    if names == ["all"]:
        return avail
    for t in names:
        if t not in avail:
            raise ValueError(f"unknown eval task '{t}' (available: {', '.join(avail)}, or 'all')")
    return names


def run_task(ctx: EvalContext, task: str) -> dict:
    return importlib.import_module(f"{__name__}.{TASKS[task]}").run(ctx)


def _aggregate(per_seed: list[dict]) -> tuple[dict, dict]:
    if len(per_seed) == 1:
        return dict(per_seed[0]), {}
    mean, std = {}, {}
    for k, v in per_seed[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [float(r[k]) for r in per_seed]
            mean[k] = statistics.fmean(vals)
            std[k] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        else:
            mean[k] = v
    return mean, std


def evaluate(checkpoint: str | Path, tasks: str | list[str], seeds: int = 1, out_dir: str | Path | None = None,
             overrides: dict | None = None, device: str = "cpu", progress: bool = True) -> dict[str, dict]:
    """Run ``tasks`` on a checkpoint; write ``metrics/<task>.json`` under ``out_dir``
    (default: the checkpoint's run directory), with the feature cache in ``out_dir/features``
    (a checkpoint evaluated elsewhere, e.g. a released one, is left as it was).
    Returns {task: mean values}."""
    ckpt = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir else (ckpt if ckpt.is_dir() else ckpt.parent)
    names = parse_tasks(tasks)
    base = context_from_checkpoint(ckpt, overrides, device, seed=0, progress=progress, cache_dir=out_dir / "features")
    results: dict[str, dict] = {}
    for task in tqdm(names, desc="eval", disable=not progress):
        per_seed = []
        for s in range(seeds):
            ctx = base if s == 0 else EvalContext(base.cfg, base.backbone, base.ckpt_hash, base.device,
                                                  base.cache_dir, s, progress, base._splits)
            ctx._feats = base._feats  # features do not depend on the probe seed
            per_seed.append(run_task(ctx, task))
        mean, std = _aggregate(per_seed)
        extra = {"seeds": seeds, "std": std, "per_seed": per_seed} if seeds > 1 else {}
        write_metrics(out_dir, task, mean, base, extra)
        results[task] = mean
    return results
