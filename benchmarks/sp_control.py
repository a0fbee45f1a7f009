"""A control arm for SP: is a framework's gain with SP due to SP's targets, or to the extra
local views it encodes and the second head it trains? The control (``sp.targets=shuffled``)
is a study cell's SP arm with each step's targets permuted across its pairs; its config is
the SP cell's own ``config.yaml`` with that key (and ``out_dir``) changed, nothing else.

For each seed: pretrain the control from ``<results>/<fw>_sp-cnn-s<seed>/config.yaml``
(unless ``<runs>/<fw>_shuf-cnn-s<seed>`` is complete), evaluate it on ``--tasks`` with the
cell's own eval settings, copy its small files to ``results/control/`` (``study.copy_small_files``),
then print the table: baseline, control and SP arm per seed beside the random-init floor, read
from the metric files.

Usage (CPU: ~6 min of pretraining per seed on one thread, two seeds at once with --parallel):
    python benchmarks/sp_control.py --framework byol --seeds 0,2 [--table-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from spatialssl.study.worker import copy_small_files  # noqa: E402
from spatialssl import runfolder  # noqa: E402

ROWS = [("knn", "top1", "kNN top-1"), ("linear", "top1", "linear top-1"), ("patch_pair", "r2_dx", "patch-pair R² dx"),
        ("patch_pair", "r2_dy", "patch-pair R² dy"), ("patch_pair", "r2_ds", "patch-pair R² ds")]


def commands(sp_cell: Path, run: Path, tasks: str) -> list[list[str]]:
    cli = [sys.executable, "-m", "spatialssl.cli"]
    return [[*cli, "pretrain", "-q", "-c", str(sp_cell / runfolder.CONFIG), "--set", "sp.targets=shuffled",
             "--set", f"out_dir={run}"],
            [*cli, "eval", "-q", "--checkpoint", str(run), "--tasks", tasks]]


def value(run: Path, task: str, key: str) -> float | None:
    p = run / runfolder.EVALS / f"{task}.json"
    return json.loads(p.read_text())["values"].get(key) if p.exists() else None


def table(fw: str, seeds: list[int], cells: Path, controls: Path) -> str:
    lines = [f"| metric | seed | {fw} | {fw} + SP (shuffled targets) | {fw} + SP | random init |",
             "|---|---|---|---|---|---|"]
    for task, key, label in ROWS:
        for s in seeds:
            base = cells / f"{fw}-cnn-s{s}"
            vals = [value(base, task, key), value(controls / f"{fw}_shuf-cnn-s{s}", task, key),
                    value(cells / f"{fw}_sp-cnn-s{s}", task, key), value(base, task, f"random_{key}")]
            lines.append(f"| {label} | {s} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="byol")
    p.add_argument("--seeds", default="0,2")
    p.add_argument("--cells", default="results/study/cpu_grey", help="the study's results folder (its cells)")
    p.add_argument("--runs", default="runs/control")
    p.add_argument("--results", default="results/control")
    p.add_argument("--tasks", default="knn,linear,patch_pair")
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args()
    fw, seeds = a.framework, [int(s) for s in a.seeds.split(",")]
    cells, runs, results = REPO / a.cells, REPO / a.runs, REPO / a.results
    if not a.table_only:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}  # one thread each, as the study
        todo = [(s, runs / f"{fw}_shuf-cnn-s{s}") for s in seeds]
        todo = [(s, r) for s, r in todo if not (runfolder.read_status(r) or {}).get("complete")]
        procs = [subprocess.Popen(commands(cells / f"{fw}_sp-cnn-s{s}", r, a.tasks)[0], env=env) for s, r in todo]
        if any(proc.wait() for proc in procs):
            raise SystemExit("a control pretraining failed (see its train.log)")
        procs = [subprocess.Popen(commands(cells / f"{fw}_sp-cnn-s{s}", runs / f"{fw}_shuf-cnn-s{s}", a.tasks)[1],
                                  env=env) for s in seeds]
        if any(proc.wait() for proc in procs):
            raise SystemExit("a control evaluation failed")
        for s in seeds:
            copy_small_files(runs / f"{fw}_shuf-cnn-s{s}", results / f"{fw}_shuf-cnn-s{s}", items=False)
    print(table(fw, seeds, cells, results))


if __name__ == "__main__":
    main()
