"""What makes a baseline learn on the CPU: short runs of one framework under recipe variants.

Each variant is the CPU study's baseline cell (``benchmarks/study.py``, budget ``cpu``, seed
0) with ``--steps`` steps and a few overrides; each is trained and scored on kNN and linear
top-1 (with its random-init floor) at the study's probe sizes. Prints a table and appends it
to ``results/curve/variants.jsonl``. Used when the learning curve (learning_curve.py) shows
a baseline that does not learn: the curve is then rerun with the variant that does.

Usage:
    python benchmarks/learning_variants.py --framework byol --steps 1000 \
        --variant base= --variant scale06=views.global_scale=[0.6,1.0] --variant w32=backbone.width=32
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from spatialssl.study.plan import BUDGETS, Cell, cell_config  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="byol")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--variant", action="append", default=[],
                   help="NAME=key=value[,key=value...] (NAME= for the recipe as it is)")
    p.add_argument("--runs", default="runs/variants")
    p.add_argument("--out", default="results/curve/variants.jsonl")
    p.add_argument("--tasks", default="knn,linear")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from spatialssl.engine.trainer import pretrain
    from spatialssl.evals import evaluate

    budget = BUDGETS["cpu"]
    torch.set_num_threads(budget.num_threads)
    rows = []
    for spec in args.variant:
        name, _, ov = spec.partition("=")
        extra = [o for o in ov.split(";") if o]
        cell = Cell(args.framework, "base", "cnn", 0)
        cfg = cell_config(cell, budget, Path(args.runs), args.tasks.split(","),
                                [f"train.steps={args.steps}", *extra,
                                 f"out_dir={Path(args.runs) / f'{args.framework}-{name}-{args.steps}'}"])
        t0 = time.time()
        run_dir = pretrain(cfg, resume=True)
        train_s = time.time() - t0
        res = evaluate(run_dir, args.tasks, seeds=1, overrides={"eval": cfg["eval"]}, device="cpu", progress=False)
        row = {"framework": args.framework, "variant": name, "overrides": extra, "steps": args.steps,
               "train_s": round(train_s), **{f"{t}_{k}": round(v, 4) for t, d in res.items()
                                             for k, v in d.items() if k in ("top1", "random_top1")}}
        rows.append(row)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
