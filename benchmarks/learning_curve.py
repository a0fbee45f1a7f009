"""The CPU learning curve: how many steps before each baseline recognises anything.

For each framework (BYOL, SimCLR, MoCo v3, DINO as ``configs/demo_dino.yaml``) one
baseline run (no SP) on PartsWorld with the demo CNN, in the CPU study's recipe
(``benchmarks/study.py``'s ``cnn`` cell at budget ``cpu``, seed 0) but with ``--max-steps``
steps (at the budget's own steps, the run *is* the study's ``<fw>-cnn-s0`` cell, in its run
folder); at each budget in ``--budgets`` the run stops with a checkpoint, which is copied to
``<runs>/curve/<fw>/step_<N>`` and evaluated there (kNN, linear, patch-pair; the random-init floor
beside each, eval sizes of the study), then training resumes. The supervised reference (the
same CNN trained on labels for N steps of the same batch, evaluated alike) is computed once
per budget for the recipe with lr 2e-3 (BYOL, SimCLR and MoCo v3 share it).

What a point means: the weights after N steps of a ``--max-steps`` cosine schedule, not a
run planned for N steps (which would anneal its lr by step N and usually score at least as
well). So the budget picked from this curve is conservative: at that budget a study run,
with its own full schedule, learns no less than the curve says.

The rule that picks the CPU budget (``--rule``): the smallest N at which every baseline's
kNN top-1 is at least its random-init floor + 0.10.

Writes ``results/curve/curve.json`` (every point, with times), the table as Markdown
(``results/curve/curve.md``, pasted into benchmarks/RESULTS.md) and the plot
``docs/figures/learning_curve.png``. Rerunning skips evaluated points and resumes runs.

Usage:
    python benchmarks/learning_curve.py [--frameworks byol,simclr,mocov3,dino]
        [--budgets 400,1000,2000,3000] [--max-steps 3000] [--runs runs/study/cpu]
    # a changed recipe (its runs are never the study's cells; its own results and figure):
    python benchmarks/learning_curve.py --set data.background=grey --runs runs/curve_grey \
        --results results/curve_grey --figure docs/figures/learning_curve_grey.png
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from spatialssl import runfolder  # noqa: E402
from spatialssl.study.plan import ALL_TASKS, BUDGETS, CPU_STEPS, Cell, cell_config  # noqa: E402
from spatialssl.study.worker import card_name  # noqa: E402
from spatialssl import runfolder  # noqa: E402

TASKS = ["knn", "linear", "patch_pair"]
METRICS = [("knn", "top1", "kNN top-1"), ("linear", "top1", "linear top-1"), ("patch_pair", "r2_dx", "patch-pair R² dx"),
           ("patch_pair", "r2_ds", "patch-pair R² ds")]
MARGIN = 0.10  # the rule: kNN >= floor + MARGIN


def point_dir(runs: Path, fw: str, n: int) -> Path:
    return runs / "curve" / fw / f"step_{n}"


def snapshot(run_dir: Path, dst: Path) -> None:
    """The run's checkpoint at this step, as a run folder of its own (evaluations write there)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in (runfolder.CHECKPOINT, runfolder.CONFIG, runfolder.CURVE):
        shutil.copy(run_dir / f, dst / f)


def evaluate_point(dst: Path, cfg: dict, n: int, reference: bool) -> dict:
    from spatialssl.evals import evaluate

    overrides = {"eval": cfg["eval"], "train": {**cfg["train"], "steps": n}}  # the reference trains N steps
    t0 = time.time()
    res = evaluate(dst, TASKS, seeds=1, overrides=overrides, device="cpu", progress=False,
                   reference="supervised" if reference else None)
    return {"values": res, "eval_s": time.time() - t0}


def read_point(dst: Path) -> dict:
    out = {}
    for task in TASKS:
        p = dst / "metrics" / f"{task}.json"
        if p.exists():
            out[task] = json.loads(p.read_text())["values"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frameworks", default="byol,simclr,mocov3,dino")
    p.add_argument("--budgets", default="400,1000,2000,3000")
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--runs", default="runs/study/cpu", help="the cpu study's scratch folder")
    p.add_argument("--results", default="results/curve")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override on every run and reference (a changed recipe: use its own --runs, --results)")
    p.add_argument("--figure", default=str(REPO / "docs" / "figures" / "learning_curve.png"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    import torch

    from spatialssl.engine.trainer import pretrain

    budget = BUDGETS["cpu"]
    torch.set_num_threads(budget.num_threads)
    runs, results = Path(args.runs), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    budgets = [int(b) for b in args.budgets.split(",")]
    rec_path = results / "curve.json"
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else {"points": {}}
    rec.update({"max_steps": args.max_steps, "budgets": budgets, "rule": f"kNN top-1 >= random-init floor + {MARGIN}",
                "machine": f"{card_name()}, {torch.get_num_threads()} threads",
                "command": "python " + " ".join(sys.argv), "overrides": args.set})
    for fw in args.frameworks.split(","):
        if args.report_only:
            break
        cell = Cell(fw, "base", "cnn", 0)
        # the study's own cell (its run folder and config): at --max-steps == the cpu budget's steps the
        # curve's run is the study's seed-0 baseline cell, which the study then only evaluates
        extra = [] if args.max_steps == CPU_STEPS and not args.set else [
            f"train.steps={args.max_steps}", f"out_dir={runs / 'curve' / cell.name}"]
        extra += args.set
        cfg = cell_config(cell, budget, runs, ALL_TASKS, extra)
        run_dir = Path(cfg["out_dir"])
        for n in budgets:
            key = f"{fw}/{n}"
            dst = point_dir(runs, fw, n)
            if key in rec["points"] and rec["points"][key].get("values"):
                continue
            if not (dst / runfolder.CHECKPOINT).exists():
                done = runfolder.last_step(run_dir)
                if done > n:
                    raise SystemExit(f"{run_dir} is at step {done}, past budget {n}, whose snapshot is missing")
                t0 = time.time()
                if done < n:
                    pretrain(cfg, resume=True, stop_after=n - done)
                train_s = time.time() - t0
                snapshot(run_dir, dst)
            else:
                train_s = rec["points"].get(key, {}).get("train_s")
            # the reference depends on the recipe (lr), not on the framework: once per lr
            ref = fw == "byol" or (fw == "dino" and "dino_ref" in args.frameworks)
            out = evaluate_point(dst, cfg, n, reference=ref)
            rec["points"][key] = {"framework": fw, "steps": n, "train_s": train_s, "eval_s": out["eval_s"],
                                  "values": read_point(dst)}
            # several processes may share the file (one per framework group): merge, don't clobber
            on_disk = json.loads(rec_path.read_text()) if rec_path.exists() else {"points": {}}
            rec["points"] = {**on_disk["points"], **rec["points"]}
            tmp = rec_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(rec, indent=1))
            tmp.replace(rec_path)
            shutil.copytree(dst / "metrics", results / fw / f"step_{n}", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*_outcomes.pt", "*_outcomes.npz"))  # per-item outcomes stay in runs/
            print(f"{key}: kNN {rec['points'][key]['values']['knn'].get('top1', float('nan')):.3f} "
                  f"(floor {rec['points'][key]['values']['knn'].get('random_top1', float('nan')):.3f}), "
                  f"train {train_s or 0:.0f} s, eval {out['eval_s']:.0f} s", flush=True)
    write_outputs(rec, results, Path(args.figure))


def write_outputs(rec: dict, results: Path, png: Path) -> None:
    """The table (Markdown) and the plot from the recorded points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = rec["points"]
    fws = list(dict.fromkeys(v["framework"] for v in pts.values()))
    budgets = sorted({v["steps"] for v in pts.values()})
    sup = {v["steps"]: v["values"] for v in pts.values() if v["framework"] == "byol"}
    lines = [f"| framework | steps | {' | '.join(m[2] for m in METRICS)} |", "|---" * (2 + len(METRICS)) + "|"]
    for fw in fws + ["random-init floor", "supervised (same CNN, steps, batch)"]:
        for n in budgets:
            if fw == "random-init floor":
                v = sup.get(n) or next(iter(pts.values()))["values"]
                cells = [v.get(t, {}).get(f"random_{k}") for t, k, _ in METRICS]
            elif fw.startswith("supervised"):
                v = sup.get(n, {})
                cells = [v.get(t, {}).get(f"supervised_{k}") for t, k, _ in METRICS]
            else:
                v = pts.get(f"{fw}/{n}", {}).get("values", {})
                cells = [v.get(t, {}).get(k) for t, k, _ in METRICS]
            if all(c is None for c in cells):
                continue
            lines.append(f"| {fw} | {n} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |")
            if fw == "random-init floor":
                break  # one floor (the same random CNN at every budget)
    chosen = None
    for n in budgets:
        ok = [pts.get(f"{fw}/{n}", {}).get("values", {}).get("knn", {}) for fw in fws]
        if ok and all(o and o["top1"] >= o["random_top1"] + MARGIN for o in ok):
            chosen = n
            break
    lines.append("")
    lines.append(f"Rule: the smallest budget at which every baseline's kNN top-1 >= its random-init floor + {MARGIN}: "
                 + (f"**{chosen} steps**." if chosen else "**none of these budgets** meets it."))
    (results / "curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    for ax, (task, key, label) in zip(axes, METRICS):
        for fw in fws:
            xs = [n for n in budgets if f"{fw}/{n}" in pts and task in pts[f"{fw}/{n}"]["values"]]
            ax.plot(xs, [pts[f"{fw}/{n}"]["values"][task][key] for n in xs], marker="o", label=fw)
        xs = [n for n in budgets if task in sup.get(n, {})]
        if xs:
            ax.plot(xs, [sup[n][task].get(f"supervised_{key}", float("nan")) for n in xs], "k--", marker="s",
                    label="supervised")
            ax.axhline(sup[xs[0]][task].get(f"random_{key}", float("nan")), color="grey", ls=":", label="random init")
        ax.set_title(label)
        ax.set_xlabel("pretraining steps (batch 64)")
    axes[0].legend(fontsize=8)
    extra = f" ({', '.join(rec['overrides'])})" if rec.get("overrides") else ""
    fig.suptitle(f"PartsWorld{extra}, demo CNN, 2-core CPU: baselines (no SP) by budget", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    rec["chosen_budget"] = chosen
    (results / "curve.json").write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
