"""Side-by-side experiments: "framework" vs "framework + SP" under one seed and budget.

``demo`` is the newcomer's first run (CPU, minutes): a preset of the study runner
(``spatialssl.study``, what ``spatialssl compare`` runs): PartsWorld, a baseline and the same
run with SP, trained and evaluated at once, then the released pairs beside them, reported
together. ``compare`` here is the flip-policy ablation (``spatialssl compare --flips``),
every policy with and without SP in one process.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import yaml

from . import config as config_mod
from . import runfolder
from .data import RENDER_KEYS
from .engine.trainer import pretrain
from .evals import available_tasks, evaluate

log = logging.getLogger("spatialssl")

BUDGETS = config_mod.BUDGETS  # budgets for ``compare`` (defined with the config); the rest comes from configs/demo.yaml
# frameworks that need a ViT (VIT_ONLY) and the demo's reduced evaluation settings (DEMO_EVAL; full
# settings: the defaults, or --set eval.*) are the study's (``study.plan``), which runs the demo
from .study.plan import DEMO_EVAL, VIT_ONLY  # noqa: E402

# the CPU study's seed-0 pairs (benchmarks/release.py), kept in the repository (see checkpoints/README.md);
# the demo evaluates them on the core protocols only, to stay within its CPU time
RELEASED = Path(__file__).resolve().parents[2] / "checkpoints"
RELEASED_TASKS = ["knn", "linear", "patch_pair"]
# the released pairs the demo evaluates: SimCLR (the baseline that learns recognition on the CPU,
# benchmarks/RESULTS.md "Learning curve") and BYOL (the demo's own framework, trained longer);
# the others are in checkpoints/ with their study metrics
DEMO_RELEASED = ("simclr", "byol")
# ... on smaller probe sets than the demo's own pair (each released pair's two runs alike), to keep
# `make demo` short: 1,000 probe-train / 500 test images (measured: ~70 s -> see docs/demo.md)
RELEASED_EVAL = ["eval.n_train=1000", "eval.n_test=500"]


def pinned_flip(presets: list[str], overrides: list[str]) -> str:
    """The local-flip policy both arms of a pair use: ``views.local_flip`` as the SP arm
    resolves it (``auto`` -> ``per_image``), so the arms differ by the SP loss alone, not
    also by their flips."""
    return config_mod.resolve(presets, [*overrides, "sp.enabled=true"])["views"]["local_flip"]


def run_pair(name: str, presets: list[str], overrides: list[str], out: Path, tasks: str | list[str],
             eval_overrides: list[str], seeds: int = 1) -> list[Path]:
    """Pretrain ``presets`` without and with SP (same seed, budget, views and flip policy:
    ``views.local_flip`` is pinned for both, see ``pinned_flip``), evaluate both."""
    dirs = []
    flip = pinned_flip(presets, overrides)
    for sp in (False, True):
        tag = f"{name}_sp" if sp else name
        cfg = config_mod.resolve(presets, [*overrides, f"views.local_flip={flip}", f"sp.enabled={str(sp).lower()}",
                                           f"name={tag}", f"out_dir={out / tag}"])
        t0 = time.perf_counter()
        run_dir = pretrain(cfg)
        log.info("%s: pretrained in %.0fs (views.local_flip=%s)", tag, time.perf_counter() - t0, flip)
        evaluate_run(run_dir, tasks, eval_overrides, cfg["train"]["progress"], seeds=seeds)
        dirs.append(run_dir)
    return dirs


def evaluate_run(run_dir: Path, tasks: str | list[str], eval_overrides: list[str], progress: bool = True,
                 data: dict | None = None, seeds: int = 1) -> None:
    """Evaluate a run with ``eval.*`` overrides (and, for runs trained elsewhere, this run's
    data section), over ``seeds`` probe seeds."""
    t0 = time.perf_counter()
    ev = config_mod.resolve(["demo"], eval_overrides, warn=False)["eval"]  # (the demo's sizes: no warning about other presets)
    overrides: dict = {"eval": {k: ev[k] for k in _keys(eval_overrides)}}
    if data is not None:
        overrides["data"] = data
    evaluate(run_dir, tasks, seeds=seeds, overrides=overrides, progress=progress)
    log.info("%s: evaluated in %.0fs", run_dir.name, time.perf_counter() - t0)


def released_runs(out: Path, tasks: str | list[str], eval_overrides: list[str], data: dict,
                  seeds: int = 1, frameworks: tuple[str, ...] | None = None) -> list[Path]:
    """Copy the released checkpoints (``checkpoints/<cell>/``: the CPU study's seed-0 pairs,
    each differing by SP alone; checkpoints/README.md) into ``out/released_<cell>`` and
    evaluate them here, on ``data`` (the demo's PartsWorld: image i of a split is the same
    whatever the split's size, so the probes see the same first images as for the demo's own
    runs) drawn as each run's own data was (``data.RENDER_KEYS``: a pair trained on a grey
    background is probed on a grey background). ``frameworks``: only the pairs of these
    frameworks (default: all released)."""
    dirs = []
    for src in sorted(RELEASED.glob(f"*/{runfolder.BACKBONE}")):
        cfg = runfolder.read_config(src.parent)
        if frameworks is not None and cfg["framework"]["name"] not in frameworks:
            continue
        dst = out / f"released_{src.parent.name}"
        dst.mkdir(parents=True, exist_ok=True)
        for f in (runfolder.BACKBONE, runfolder.STATUS, runfolder.CURVE):
            if (src.parent / f).exists() and not (dst / f).exists():
                shutil.copy(src.parent / f, dst / f)
        own = {k: cfg["data"][k] for k in RENDER_KEYS if k in cfg["data"]}  # the rest: the demo's
        grey = ", grey background" if own.get("background") == "grey" else ""
        cfg["name"] = (f"{cfg['framework']['name']}{' + SP' if cfg['sp']['enabled'] else ''} "
                       f"(released, CPU study {cfg['train']['steps']} steps{grey}, seed {cfg['seed']})")
        (dst / runfolder.CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
        evaluate_run(dst, tasks, eval_overrides, data={**data, **own}, seeds=seeds)
        dirs.append(dst)
    return dirs


def _keys(overrides: list[str]) -> list[str]:
    return [o.split("=", 1)[0].split(".", 1)[1] for o in overrides if o.startswith("eval.")]


def _report(dirs: list[Path], out: Path, title: str, allow_mismatch: list[str] | None = None) -> None:
    from .report import summary_table, write_report

    path = write_report(dirs, out, title, allow_mismatch=allow_mismatch or False)
    print(summary_table(dirs, allow_mismatch=allow_mismatch or False))
    print(f"\nreport: {path}")


def framework_presets(fw: str) -> list[str]:
    """The presets ``compare`` (and the demo) train ``fw`` with: the framework's preset
    (heads, temperatures, momentum), then the demo's data, backbone, views and optimiser
    (configs/demo.yaml, or configs/demo_<framework>.yaml where one exists)."""
    demo_preset = f"demo_{fw}" if (config_mod.CONFIG_DIR / f"demo_{fw}.yaml").exists() else "demo"
    return ([fw] if (config_mod.CONFIG_DIR / f"{fw}.yaml").exists() else []) + [demo_preset]


# the demo's own pair, chosen by measurement (docs/demo.md): BYOL at the small budget
DEMO_FRAMEWORK = "byol"
DEMO_BUDGET = "small"


def demo_plan(overrides: list[str] | None = None):
    """The demo as the study runner runs it: ``(budget, cells, tasks)``. The budget is
    ``spatialssl compare``'s ``small`` (400 steps, base and + SP, seed 0, two cells at once on
    one thread each) with the demo's probe seeds and tasks (configs/demo.yaml's ``eval``, or
    the ``eval.*`` of ``overrides``) and every override applied to both arms."""
    import dataclasses

    from . import study

    overrides = list(overrides or [])
    ev = config_mod.resolve(["demo"], _eval_only(overrides), warn=False)["eval"]
    tasks = [t for t in ev["tasks"] if t in available_tasks()]
    budget = dataclasses.replace(study.BUDGETS[DEMO_BUDGET], name="demo", eval_seeds=int(ev["seeds"]),
                                 arms=("base", "sp"), seeds=(0,), extra=tuple(overrides))
    return budget, study.grid([DEMO_FRAMEWORK], ["cnn"], [0], budget), tasks


def demo(out: Path = Path("runs/demo"), overrides: list[str] | None = None, released: bool = True) -> list[Path]:
    """The CPU demo (``make demo``): see docs/demo.md for the settings and why.

    A preset of the study runner (``demo_plan``): the demo's framework (``DEMO_FRAMEWORK``)
    with and without SP at ``DEMO_BUDGET``, one flip policy for both, both arms trained and
    evaluated at once in two worker processes (their small files in ``out/<cell>``, checkpoints
    in ``out/runs``); then the released pairs (``checkpoints/``: the CPU study's seed-0 pairs,
    whose baselines learn) evaluated beside them on ``RELEASED_TASKS``; one report.
    """
    import math

    from .errors import UserError
    from .study import cell_config, cell_status
    from .study.scheduler import schedule

    t0 = time.perf_counter()
    budget, cells, tasks = demo_plan(overrides)
    runs = out / "runs"
    schedule(lambda: cells, budget, out, runs, tasks, budget.workers, math.inf, poll_s=0.2, progress_s=20.0)
    bad = [c.name for c in cells if cell_status(c, out, runs, budget, tasks) != "done"]
    if bad:
        raise UserError(f"the demo's cell(s) {', '.join(bad)} did not finish: see {out}/<cell>/cell.json and "
                        f"{runs}/<cell>/worker.log")
    dirs = [out / c.name for c in cells]
    cfg = cell_config(cells[0], budget, runs, tasks)
    seeds = budget.eval_seeds
    if released:
        dirs += released_runs(out, [t for t in tasks if t in RELEASED_TASKS],
                              [*DEMO_EVAL, *RELEASED_EVAL, *_eval_only(list(overrides or []))], cfg["data"], seeds,
                              frameworks=DEMO_RELEASED)
    fw = DEMO_FRAMEWORK
    _report(dirs, out, f"spatialssl demo: {fw} vs {fw} + SP trained here on PartsWorld (CPU, {cfg['train']['steps']} "
                       f"steps, {cfg['views']['local_flip']} flips for both: the columns not marked 'released'), and "
                       f"the released pairs (columns 'released': the CPU study's seed-0 pairs, trained longer, "
                       f"checkpoints/README.md), evaluated here alike")
    log.info("demo done in %.0fs: %s", time.perf_counter() - t0, out)
    return dirs


FLIP_POLICIES = ("per_view", "per_image", "none")


def compare(frameworks: list[str], budget: str, out: Path, tasks: str, overrides: list[str] | None = None,
            flips: list[str] | None = None) -> list[Path]:
    """Each framework with and without SP under one seed, budget and flip policy; one report.

    Settings: ``framework_presets(fw)``, then the budget, then ``overrides``. ``flips``: a
    flip-policy ablation, each ``views.local_flip`` policy with and without SP (runs named
    ``<fw>_<policy>[_sp]``); by default one pair per framework, flips pinned as the SP arm
    resolves them.
    """
    if budget not in BUDGETS:
        raise config_mod.ConfigError(f"unknown budget '{budget}' (known: {', '.join(BUDGETS)})")
    for f in flips or []:
        if f not in FLIP_POLICIES:
            raise config_mod.ConfigError(f"--flips: unknown policy '{f}' (known: {', '.join(FLIP_POLICIES)})")
    overrides = list(overrides or [])
    cfg = config_mod.resolve(["demo"], _eval_only(overrides), warn=False)
    seeds = cfg["eval"]["seeds"]
    dirs: list[Path] = []
    for fw in frameworks:
        presets = framework_presets(fw)
        ov = [f"framework.name={fw}", *VIT_ONLY.get(fw, []), *BUDGETS[budget], *overrides]
        eval_ov = DEMO_EVAL + _eval_only(overrides)
        if not flips:
            dirs += run_pair(fw, presets, ov, out, tasks, eval_ov, seeds)
        for f in flips or []:
            dirs += run_pair(f"{fw}_{f}", presets, [*ov, f"views.local_flip={f}"], out, tasks, eval_ov, seeds)
    what = f", flip ablation {','.join(flips)}" if flips else ""
    _report(dirs, out, f"spatialssl compare ({budget} budget{what})")
    return dirs


def _eval_only(overrides: list[str]) -> list[str]:
    return [o for o in overrides if o.startswith("eval.")]
