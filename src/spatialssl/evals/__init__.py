"""Evaluations on frozen backbones: one protocol per file, over ``features.EvalContext``.

Each protocol is ``run(ctx) -> dict`` of values, and records per-item outcomes of its
metrics in ``ctx.outcomes`` (``EvalContext.record``). ``run_task`` runs one protocol, checks
that every number is finite, and adds the random-init floor (``random_<metric>``: the same
protocol, subsets and seed on a random-init backbone of the same architecture, one per
seed shared by every task) and, when asked, the supervised reference
(``supervised_<metric>``, ``reference.py``). ``evaluate`` runs the chosen tasks over
``eval.seeds`` seeds (or ``seeds``) and writes, for each task, ``<run>/metrics/<task>.json``
(values, spread over seeds, eval and data config, seed, checkpoint hash, training step)
and ``<run>/metrics/<task>_outcomes.npz`` (per-item outcomes per seed; docs/evaluations.md).

>>> evaluate("runs/demo/byol_sp", ["knn", "linear", "patch_pair"])
"""

from __future__ import annotations

import importlib
import json
import statistics
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .. import runfolder
from ..config import ConfigError
from ..progress import bar as progress_bar

if TYPE_CHECKING:  # the protocols' machinery is imported when a protocol runs: the report reads METRICS only
    from .features import EvalContext

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

# What each protocol measures, declared once: task -> {value key (``*`` a wildcard) ->
# +1 higher is better, -1 lower is better, 0 a diagnostic (a measure of the backbone with no
# better direction, or of the probe's own fit: shown, floored, never marked)}. A declared
# key gets the random-init floor ``random_<key>`` (and ``supervised_<key>``); the report
# reads its direction from here (``direction``). Any other value describes the setting, not
# the backbone (chance levels, counts ``n_*``, k, t, best_lr, the majority-class and
# mean-depth predictors, valid_frac): no floor, no mark.
METRICS: dict[str, dict[str, int]] = {
    "knn": {"top1": 1},
    "linear": {"top1": 1},
    # train_*: the probe on its own training pairs (how much it overfits), not the backbone
    "patch_pair": {"r2_*": 1, "sign_acc_*": 1, "mae": -1, "train_*": 0},
    "finegrained": {"knn_top1": 1, "linear_top1": 1, "linear_coarse_consistent": 1},
    "segmentation": {"miou": 1, "pixel_acc": 1, "iou_*": 1},
    "depth": {"rmse": -1, "abs_rel": -1, "delta1": 1},
    "robustness": {"clean_top1": 1, "acc_*": 1, "mCA": 1, "rel_mCA": 1, "ood_top1": 1},
    # top1_shuffled: the linear probe on scrambled tiles, a reference point for top1_reconstructed
    "jigsaw": {"tile_acc": 1, "tile_acc_greedy": 1, "puzzle_acc": 1, "top1_original": 1, "top1_shuffled": 0,
               "top1_reconstructed": 1},
}

# metrics whose random-init floor means nothing, so "at or below the floor" hides no verdict:
# mCA / clean of an untrained network is high because it is equally bad on clean and on
# corrupted images (0.683 on the CPU study's grey images, above every trained arm); the report
# and the study mark these by their paired test alone, and say so
NO_FLOOR: dict[str, frozenset[str]] = {"robustness": frozenset({"rel_mCA"})}


def floor_meaningful(task: str, key: str) -> bool:
    """Whether a metric's random-init floor says anything (see ``NO_FLOOR``)."""
    return key not in NO_FLOOR.get(task, frozenset())


# tasks whose test items are not independent (several pairs of one image): their outcomes
# carry ``group``, the image of each item, and the report's bootstrap resamples images
GROUPED: frozenset[str] = frozenset({"patch_pair"})


def direction(task: str, key: str) -> int | None:
    """+1 (higher is better), -1 (lower is better), 0 (a diagnostic) for a metric ``METRICS``
    declares for ``task``; None for any other value (a setting, a floor or a reference)."""
    for pattern, sign in METRICS.get(task, {}).items():
        if fnmatchcase(key, pattern):
            return sign
    return None


def metric_keys(task: str, values: dict) -> list[str]:
    """The keys of ``values`` that measure the backbone: the numbers ``METRICS`` declares
    for ``task`` (they get a random-init floor and a supervised reference)."""
    return [k for k, v in values.items() if isinstance(v, float) and direction(task, k) is not None]


def available_tasks() -> list[str]:
    """Every evaluation task (``eval --tasks all``), in ``TASKS`` order."""
    return list(TASKS)


def parse_tasks(tasks: str | list[str]) -> list[str]:
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    avail = available_tasks()
    if names == ["all"]:
        return avail
    for t in names:
        if t not in avail:
            raise ConfigError(f"unknown eval task '{t}' (available: {', '.join(avail)}, or 'all')")
    return names


def run_protocol(ctx: EvalContext, task: str) -> dict:
    """One protocol on one context; non-finite values raise (naming the run and the task).
    Leaves the per-item outcomes in ``ctx.outcomes``."""
    from .features import check_finite

    ctx.task, ctx.outcomes = task, {}
    values = importlib.import_module(f"{__name__}.{TASKS[task]}").run(ctx)
    check_finite(values, ctx)
    return values


# the random-init floor of one architecture on one data / view / eval setting and seed is the
# same for every run evaluated in this process (a pair, the demo's released checkpoints): its
# protocol runs once (keyed by the random weights' digest and everything a protocol reads)
_FLOOR_MEMO: dict[str, tuple[dict, dict]] = {}


def _floor_protocol(floor: EvalContext, task: str) -> tuple[dict, dict]:
    key = json.dumps([task, floor.seed, floor.ckpt_hash, str(floor.device),
                      {s: floor.cfg[s] for s in ("backbone", "data", "views", "eval")}], sort_keys=True, default=str)
    if key not in _FLOOR_MEMO:
        values = run_protocol(floor, task)
        _FLOOR_MEMO[key] = (values, dict(floor.outcomes))
    values, outcomes = _FLOOR_MEMO[key]
    return dict(values), dict(outcomes)


def run_task(ctx: EvalContext, task: str, reference: EvalContext | None = None) -> dict:
    """``task`` on ``ctx``, plus ``random_<metric>`` for every metric when ``eval.random_floor``
    (``ctx.floor()``: one random-init backbone per seed, shared by every task) and
    ``supervised_<metric>`` when a ``reference`` context is given. ``ctx.outcomes`` ends up
    holding the run's outcomes and the floor's / reference's under the same prefixes."""
    values = run_protocol(ctx, task)
    outcomes = dict(ctx.outcomes)
    if "skipped" not in values:
        others = [("random", ctx.floor() if ctx.ecfg["random_floor"] else None), ("supervised", reference)]
        for prefix, other in others:
            if other is None:
                continue
            if prefix == "random":
                v, other_outcomes = _floor_protocol(other, task)
            else:
                v = run_protocol(other, task)
                other_outcomes = other.outcomes
            for k in metric_keys(task, values):
                if k in v:
                    values[f"{prefix}_{k}"] = v[k]
            outcomes.update({f"{prefix}_{k}": o for k, o in other_outcomes.items()})
    ctx.task, ctx.outcomes = task, outcomes
    return values


def _aggregate(per_seed: list[dict]) -> tuple[dict, dict]:
    if len(per_seed) == 1:
        return dict(per_seed[0]), {}
    mean, std = {}, {}
    for k, v in per_seed[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [float(r[k]) for r in per_seed]
            mean[k] = v if isinstance(v, int) and len(set(vals)) == 1 else statistics.fmean(vals)
            std[k] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        else:
            mean[k] = v
    return mean, std


def evaluate(checkpoint: str | Path, tasks: str | list[str], seeds: int | None = None,
             out_dir: str | Path | None = None, overrides: dict | None = None, device: str = "auto",
             progress: bool = True, reference: str | None = None) -> dict[str, dict]:
    """Run ``tasks`` on a checkpoint; write ``metrics/<task>.json`` and
    ``metrics/<task>_outcomes.npz`` under ``out_dir`` (default: the checkpoint's run
    directory), with the feature cache in ``out_dir/features`` (a checkpoint evaluated
    elsewhere, e.g. a released one, is left as it was).

    Args:
        seeds: evaluation seeds 0..seeds-1 (default: the config's ``eval.seeds``); each seed
            draws its own subsets, probes, pairs and permutations.
        reference: ``"supervised"`` to also evaluate the supervised reference (``reference.py``).
    Returns:
        {task: mean values}.
    """
    from .features import context_from_checkpoint
    from .reference import REFERENCES, supervised_context

    if reference is not None and reference not in REFERENCES:
        raise ConfigError(f"unknown reference '{reference}' (known: {', '.join(REFERENCES)})")
    ckpt = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir else (ckpt if ckpt.is_dir() else ckpt.parent)
    names = parse_tasks(tasks)
    base = context_from_checkpoint(ckpt, overrides, device, seed=0, progress=progress, cache_dir=out_dir / runfolder.FEATURES)
    return evaluate_context(base, names, seeds, out_dir, progress, supervised_context if reference else None,
                            reference)


def evaluate_context(base: EvalContext, names: list[str], seeds: int | None, out_dir: Path, progress: bool = True,
                     make_reference: Callable[[EvalContext], EvalContext] | None = None,
                     reference: str | None = None) -> dict[str, dict]:
    """``evaluate``'s loop over tasks and seeds on a built context (seed 0), for a training
    run or a probed weights file (``evals/pretrained.py``); ``make_reference(base)`` builds the
    reference context when one is asked for."""
    from .features import write_metrics, write_outcomes

    seeds = int(base.ecfg["seeds"] if seeds is None else seeds)
    if seeds < 1:
        raise ConfigError(f"eval seeds must be >= 1, got {seeds}")
    ctxs = [base] + [base.for_seed(s) for s in range(1, seeds)]
    refs: list[EvalContext | None] = [None] * seeds
    if make_reference is not None:
        sup = make_reference(base)
        refs = [sup] + [sup.for_seed(s) for s in range(1, seeds)]
    results: dict[str, dict] = {}
    for task in progress_bar(names, desc="eval", enabled=progress):
        per_seed, outcomes = [], []
        for ctx, ref in zip(ctxs, refs):
            per_seed.append(run_task(ctx, task, ref))
            outcomes.append(ctx.outcomes)
        mean, std = _aggregate(per_seed)
        extra = {"seeds": seeds, "subset_seeds": list(range(seeds)), "reference": reference}
        if seeds > 1:
            extra.update({"std": std, "per_seed": per_seed})
        write_metrics(out_dir, task, mean, base, extra)
        write_outcomes(out_dir, task, outcomes)
        results[task] = mean
    from ..report import single  # (lazily: the report reads this package's METRICS)

    single.write(out_dir)  # metrics/summary.md: value, interval, floor, chance, n, verdict per metric
    return results
