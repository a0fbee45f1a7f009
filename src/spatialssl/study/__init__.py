"""The study: frameworks x arms x seeds, tuned alike on a validation split, as resumable
cells with a time limit; its summary (mean ± std over seeds, paired tests), figure and the
README's tables. ``spatialssl compare`` runs it; docs/study.md describes it.

    spatialssl compare --budget cpu_tuned --frameworks simclr,byol,mocov3,dino --time-limit 9000
    spatialssl compare --budget cpu_tuned --tune train.lr=x0.5,x1,x2 --tune train.schedule_steps=x1,x1.5
    spatialssl compare --budget cpu_tuned --list          # the cells, their status, expected s
    spatialssl compare --budget cpu_tuned --report-only   # summary.md, summary.png, report/

Modules: ``plan`` (budgets, arms, cells, grids, configs, picks), ``worker`` (one cell, in its
own process), ``scheduler`` (cells within a time limit), ``summary`` (tables and figure).
Files: checkpoints and feature caches in ``runs`` (scratch); the small files to commit in
``results`` (layout: results/study/README.md).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from .plan import (ALL_TASKS, ARMS, BACKBONES, BUDGETS, FRAMEWORKS, SEEDS, Budget, Cell, cell_config, cell_status,
                   grid, parse_cell, parse_tune, pick, waiting_finals, tuning_cells, with_picks)
from .scheduler import measured_times, remaining_time, schedule
from .summary import write_tables

__all__ = ["ALL_TASKS", "ARMS", "BACKBONES", "BUDGETS", "FRAMEWORKS", "SEEDS", "Budget", "Cell", "cell_config",
           "cell_status", "grid", "parse_cell", "parse_tune", "pick", "plan_cells", "run", "schedule",
           "tuning_cells", "with_picks", "write_tables"]


def plan_cells(budget: Budget, frameworks: list[str], backbones: list[str], seeds: list[int], results: Path,
               tasks: list[str]) -> list[Cell]:
    """The cells to run now, in order: per framework, the final cells of its arms whose pick
    is known (all of them without a grid), then its tuning cells; a framework's finals come
    before the next framework's tuning, so that complete comparisons arrive early."""
    finals = with_picks(grid(frameworks, backbones, seeds, budget), results, budget, tasks)
    tunes = tuning_cells(frameworks, backbones, budget, results, tasks) if budget.tune else []
    out = []
    for fw in frameworks:
        out += [c for c in finals if c.framework == fw] + [c for c in tunes if c.framework == fw]
    return out


def run(budget: str | Budget, frameworks: list[str] | None = None, backbones: list[str] | None = None,
        seeds: list[int] | None = None, tasks: list[str] | None = None, results: Path = Path("results/study"),
        runs: Path = Path("runs/study"), time_limit: float = math.inf, workers: int = 0,
        tune: tuple | None = None, allow_partial: bool = False, retry_failed: bool = False,
        report_only: bool = False) -> Path:
    """Run (resume) the study and write its tables; returns ``summary.md``'s path."""
    b = BUDGETS[budget] if isinstance(budget, str) else budget
    if tune is not None:
        b = dataclasses.replace(b, tune=tune)
    fws = frameworks or [f for f in FRAMEWORKS if f != "ibot"]
    bbs = backbones or ["cnn"]
    sds = seeds if seeds is not None else SEEDS
    tks = tasks or ALL_TASKS
    results, runs = Path(results), Path(runs)
    if not report_only:
        schedule(lambda: plan_cells(b, fws, bbs, sds, results, tks), b, results, runs, tks,
                 workers or b.workers, time_limit, allow_partial, retry_failed=retry_failed)
    return write_tables(b, fws, bbs, sds, results, tks)


def list_cells(budget: Budget, frameworks, backbones, seeds, results: Path, runs: Path, tasks) -> list[str]:
    """One line per planned cell: index, name, status, expected seconds (``--list``)."""
    measured = measured_times(results, budget)
    lines = []
    cells = plan_cells(budget, frameworks, backbones, seeds, results, tasks)
    for i, c in enumerate(cells):
        steps = cell_config(c, budget, runs, tasks)["train"]["steps"]
        lines.append(f"{i:3d} {c.name:36s} {cell_status(c, results, runs, budget, tasks):8s} "
                     f"{remaining_time(c, budget, runs, measured, steps):6.0f}s")
    waiting = waiting_finals(budget, frameworks, backbones, seeds, results, tasks)
    if waiting:
        lines.append(f"    (+ {waiting} final cell(s) waiting for their arm's pick)")
    return lines


def add_arguments(p) -> None:
    """The runner's flags (``spatialssl compare`` and benchmarks/study.py)."""
    p.add_argument("--budget", default="small", choices=sorted(BUDGETS),
                   help="settings, seeds and tuning grid (docs/study.md): small (the demo's 400 steps, one seed), "
                        "medium, cpu_tuned (the CPU study), gpu, tiny")
    p.add_argument("--frameworks", default="", help=f"comma-separated (default: {','.join(FRAMEWORKS[:4])})")
    p.add_argument("--backbones", default="cnn", help=f"comma-separated, of {', '.join(BACKBONES)}")
    p.add_argument("--seeds", default="", help="pretraining seeds, comma-separated (default: the budget's)")
    p.add_argument("--tasks", default=",".join(ALL_TASKS))
    p.add_argument("--tune", action="append", default=None, metavar="KEY=V1,V2,...",
                   help="a tuning grid key (repeatable), run identically for every arm and picked on the validation "
                        "split; a value is a number or x<m> (m times the arm's own); replaces the budget's grid")
    p.add_argument("--workers", type=int, default=0, help="cells at once (0 = the budget's)")
    p.add_argument("--time-limit", type=float, default=math.inf, help="seconds this call may take")
    p.add_argument("--out", "--results", dest="results", default="",
                   help="the cells' small files, summary.md, summary.png, report/ (default runs/compare/<budget>)")
    p.add_argument("--runs", default="", help="scratch: checkpoints, feature caches (default <out>/runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="a config override of every cell (repeatable), applied last")
    p.add_argument("--allow-partial", action="store_true",
                   help="also start cells that cannot finish in time (they stop with a checkpoint)")
    p.add_argument("--retry-failed", action="store_true", help="run cells whose worker failed again")
    p.add_argument("--report-only", action="store_true", help="only write summary.md, summary.png and report/")
    p.add_argument("--readme-table", action="store_true", help="print README's result table and exit")
    p.add_argument("--list", action="store_true", help="print the planned cells with status and expected s")


def from_arguments(a) -> int:
    """Run what ``add_arguments``' flags ask for."""
    from ..errors import UserError

    budget = BUDGETS[a.budget]
    plugins = tuple(getattr(a, "plugin", None) or ())
    if a.overrides or plugins:
        budget = dataclasses.replace(budget, extra=tuple(a.overrides), plugins=plugins)
    held = [o.split("=", 1)[1] for o in a.overrides if o.split("=", 1)[0].strip() == "data.holdout"]
    if held:  # --set data.holdout=N: the validation split the grid is picked on
        try:
            budget = dataclasses.replace(budget, holdout=int(held[-1]))
        except ValueError:
            raise UserError(f"--set data.holdout: expected a whole number of images, got {held[-1]!r}") from None
    if a.tune is not None:
        budget = dataclasses.replace(budget, tune=parse_tune(a.tune))
        if not budget.holdout:
            raise UserError(f"--tune needs a validation split: budget '{a.budget}' holds out no training images "
                            f"(data.holdout); add --set data.holdout=N or use a tuned budget (cpu_tuned, tiny_tuned)")
    results = Path(a.results or f"runs/compare/{budget.name}")
    runs = Path(a.runs or results / "runs")
    tasks = ALL_TASKS if a.tasks.strip() == "all" else [t.strip() for t in a.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in ALL_TASKS]
    if bad:
        raise UserError(f"unknown task(s) {', '.join(bad)} (known: {', '.join(ALL_TASKS)})")
    fws = [f.strip() for f in a.frameworks.split(",") if f.strip()] or FRAMEWORKS[:4]
    bbs = [b.strip() for b in a.backbones.split(",") if b.strip()]
    known_fws = FRAMEWORKS
    if plugins:  # a plugin's framework is known once it is imported (the command imported it)
        from ..frameworks import REGISTRY

        known_fws = list(dict.fromkeys([*FRAMEWORKS, *REGISTRY]))
    for name, vals, known in (("framework", fws, known_fws), ("backbone", bbs, BACKBONES)):
        if any(v not in known for v in vals):
            raise UserError(f"unknown {name} in {','.join(vals)} (known: {', '.join(known)})")
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()] if a.seeds else list(budget.seeds)
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {a.seeds!r}") from None
    if a.list:
        print("\n".join(list_cells(budget, fws, bbs, seeds, results, runs, tasks)))
        return 0
    if a.readme_table:
        from .summary import readme_table

        print(readme_table(budget, fws, bbs, seeds, results, tasks), end="")
        return 0
    run(budget, fws, bbs, seeds, tasks, results, runs, a.time_limit, a.workers, allow_partial=a.allow_partial,
        retry_failed=a.retry_failed, report_only=a.report_only)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="spatialssl-study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return from_arguments(p.parse_args(argv))
