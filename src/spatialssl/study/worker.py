"""One cell, in its own process: pretrain (resuming), evaluate, copy the small files.

A tuning cell is evaluated on the validation split (``Budget.val_tasks`` on split
``holdout``, into ``<cell>/val/metrics/``), and its default point also on the test split
(``Budget.default_test_tasks``: the default-vs-default table); a final cell on every task
of the test split. Each cell's ``card.txt`` and ``cell.json`` record where and with what it
ran (``provenance``): the summary flags a pair whose arms differ in any of it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import runfolder
from ..data import HOLDOUT
from .plan import (VAL_DIR, Budget, Cell, cell_config, is_default, read_json, results_dir, run_dir)

REPO = Path(__file__).resolve().parents[3]
# CPU instruction sets whose kernels change the last digits of a bf16 or fp32 run
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


def commit_id() -> str:
    """The code's commit: $SPATIALSSL_COMMIT, else git, else .gpu/commit.txt (the GPU copy of
    the tree may have no .git; docs/study.md writes it there before the device call)."""
    if os.environ.get("SPATIALSSL_COMMIT"):
        return os.environ["SPATIALSSL_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    f = REPO / ".gpu" / "commit.txt"
    return f.read_text().strip() + " (from .gpu/commit.txt)" if f.exists() else "unknown"


def cpu_info() -> tuple[str, list[str]]:
    """This CPU's model name and which of ``CPU_FLAGS`` it has."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux: the model platform gives
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def cpu_model() -> str:
    """This CPU's model and its bf16 instructions, e.g. ``AMD EPYC (avx512_bf16)``: bf16
    kernels differ between CPUs (AMX on a Xeon, AVX512-BF16 alone on an EPYC), and with them
    the last digits of a bf16 run. Also benchmarks/cpu_step.py's machine line."""
    model, flags = cpu_info()
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return model + (f" ({', '.join(bf16)})" if bf16 else "")


def card_name() -> str:
    """The device a cell ran on: the GPU's name, else ``cpu: <cpu_model()>``."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu: {cpu_model()}"


def provenance() -> dict[str, str]:
    """Where and with what a cell ran: device, CPU model and instruction sets, the versions of
    python, torch, torchvision, timm and lightly, and the commit. Two arms of a pair that differ
    in any of these are flagged by the summary (a CPU change alone moved a cell's depth RMSE by
    0.06: docs/study.md)."""
    import importlib.metadata as md

    import torch

    model, flags = cpu_info()
    out = {"device": card_name(), "cpu": model, "cpu_flags": " ".join(flags) or "-",
           "python": platform.python_version()}
    for pkg in ("torch", "torchvision", "timm", "lightly"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    out["cuda"] = torch.version.cuda or "-"
    out["commit"] = commit_id()
    return out


def write_card(res: Path, prov: dict[str, str]) -> None:
    (res / "card.txt").write_text("".join(f"{k}: {v}\n" for k, v in prov.items()))


def read_card(res: Path) -> dict[str, str]:
    """``card.txt`` as a dict; an old one-line card (``cpu``, a GPU name) is ``{"device": ...}``."""
    try:
        lines = (res / "card.txt").read_text().splitlines()
    except OSError:
        lines = []
    out: dict[str, str] = {}
    if len(lines) == 1 and ": " not in lines[0].replace("cpu: ", "", 1):
        dev = lines[0].strip()
        out["device"] = "cpu (model not recorded)" if dev == "cpu" else dev
    else:
        for line in lines:
            k, sep, v = line.partition(": ")
            if sep:
                out[k.strip()] = v.strip()
    if "commit" not in out and (res / "commit.txt").exists():  # the earlier cells kept it beside the card
        out["commit"] = (res / "commit.txt").read_text().strip()
    return out


class Interrupted(Exception):
    """SIGTERM / SIGINT reached a worker: stop now (the last checkpoint is kept)."""


def _raise_interrupted(signum, frame):  # noqa: ARG001
    raise Interrupted(signal.Signals(signum).name)


def copy_small_files(src: Path, res: Path, items: bool = True) -> None:
    """The files to commit (never checkpoint.pt, features, TensorBoard): the run's
    ``SMALL_FILES``, its metrics JSON and, with ``items``, the evaluations' per-item outcomes
    and example images (``metrics/*`` other than JSON), which the seed-0 report's paired
    tests and figures read; the summary over seeds reads ``metrics/*.json`` alone."""
    res.mkdir(parents=True, exist_ok=True)
    for f in (*runfolder.SMALL_FILES, "worker.log"):
        if (src / f).exists():
            shutil.copy(src / f, res / f)
    copy_metrics(src, res, items)


def copy_metrics(src: Path, res: Path, items: bool = True) -> None:
    if (src / runfolder.EVALS).is_dir():
        (res / runfolder.EVALS).mkdir(parents=True, exist_ok=True)
        for p in (src / runfolder.EVALS).iterdir():
            if p.is_file() and (p.suffix == ".json" or (items and p.stat().st_size <= 8 * 2**20)):
                shutil.copy(p, res / runfolder.EVALS / p.name)


def _expected(cell: Cell, budget: Budget, results: Path) -> tuple[float, float]:
    from .scheduler import expected_times, measured_times

    return expected_times(cell, budget, measured_times(results, budget))


def run_cell(cell: Cell, budget: Budget, results: Path, runs: Path, tasks: list[str], deadline: float,
             command: str = "") -> str:
    """Pretrain (resuming) and evaluate one cell before ``deadline`` (time.time()); returns
    ``done``, ``pretrained`` (no time left to evaluate) or ``partial`` (stopped with a checkpoint)."""
    import torch

    from ..engine.trainer import TrainingInterrupted, pretrain
    from ..evals import evaluate

    old_handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    torch.set_num_threads(budget.num_threads)
    cfg = cell_config(cell, budget, runs, tasks)
    rdir, res = run_dir(cell, budget, runs), results_dir(cell, results)
    res.mkdir(parents=True, exist_ok=True)
    rec = read_json(res / "cell.json") or {"cell": cell.name, "framework": cell.framework, "arm": cell.arm,
                                           "sp": cell.sp, "backbone": cell.backbone, "seed": cell.seed,
                                           "budget": budget.name, "tuning": cell.tuning, "tasks": tasks,
                                           "complete": False, "timing": {}, "calls": 0}
    rec["calls"] += 1
    rec["tasks"] = tasks
    rec["point"] = [list(p) for p in cell.point]
    rec["run"] = rdir.name
    prov = provenance()
    rec.setdefault("provenance", prov)
    if rec["provenance"] != prov:  # a cell resumed elsewhere: both are recorded, the summary flags it
        rec.setdefault("provenance_resumed", []).append(prov)
    (res / "command.txt").write_text(command + "\n")
    (res / "commit.txt").write_text(prov["commit"] + "\n")
    write_card(res, prov)
    timing = rec["timing"]
    steps = cfg["train"]["steps"]
    pre_s, eval_s = _expected(cell, budget, results)
    done = lambda: runfolder.last_step(rdir) >= steps and (rdir / runfolder.BACKBONE).exists()  # noqa: E731
    status = "partial"
    device = "cuda" if torch.cuda.is_available() and budget.device != "cpu" else "cpu"
    try:
        start_step = runfolder.last_step(rdir)
        if not done():
            # steps that fit before the deadline at the expected rate: all of them with time
            # left to evaluate, or else (a partial run) as many as fit, checkpointed at the end
            per_step = pre_s / steps
            left = deadline - time.time()
            stop_after = None
            if (left - eval_s) / per_step < steps - start_step:
                stop_after = int(0.9 * left / per_step)
                if stop_after < 1:
                    return status
            t0 = time.time()
            pretrain(cfg, resume=True, stop_after=stop_after)
            dt = time.time() - t0
            timing["pretrain_s"] = timing.get("pretrain_s", 0.0) + dt
            if start_step == 0 and stop_after is None:
                timing["pretrain_full_s"] = dt  # a full run in one go: a sample for expected_times
        if not done():
            return status
        status = "pretrained"
        if time.time() + 0.5 * eval_s > deadline:
            return status  # evaluate on the next call
        t0 = time.time()
        ev = {"eval": cfg["eval"]}
        if cell.tuning:
            have = {p.stem for p in (res / VAL_DIR / runfolder.EVALS).glob("*.json")}
            todo = [t for t in budget.val_tasks if t not in have]
            if todo:  # the validation split: every image of it (eval.n_test: 0)
                evaluate(rdir, todo, seeds=cfg["eval"]["seeds"], out_dir=rdir / VAL_DIR, device=device, progress=False,
                         overrides={"eval": {**cfg["eval"], "split_test": HOLDOUT, "n_test": 0}})
            if is_default(cell.point):
                have = {p.stem for p in (res / runfolder.EVALS).glob("*.json")}
                todo = [t for t in budget.default_test_tasks if t not in have]
                if todo:
                    evaluate(rdir, todo, seeds=cfg["eval"]["seeds"], overrides=ev, device=device, progress=False)
        else:
            have = {p.stem for p in (res / runfolder.EVALS).glob("*.json")}
            todo = [t for t in tasks if t not in have]
            if todo:
                evaluate(rdir, todo, seeds=cfg["eval"]["seeds"], overrides=ev, device=device, progress=False)
        timing["eval_s"] = timing.get("eval_s", 0.0) + time.time() - t0
        rec["complete"], status = True, "done"
        return status
    except Interrupted as e:
        rec["interrupted"] = f"{e} at step {runfolder.last_step(rdir)}"
        return status
    except TrainingInterrupted as e:  # SIGTERM while training: the trainer wrote a checkpoint at its step
        rec["interrupted"] = f"{e.signame} at step {e.step} (checkpoint written)"
        return status
    except Exception as e:  # a non-finite loss, a bug: recorded, so later calls skip the cell
        status = "failed"
        rec["failed"] = f"{type(e).__name__}: {e}"[:2000]
        raise
    finally:
        copy_small_files(rdir, res, items=cell.seed == 0 and not cell.tuning)  # the report's seed-0 pairs
        if cell.tuning:
            copy_metrics(rdir / VAL_DIR, res / VAL_DIR, items=False)
        rec["steps_done"] = runfolder.last_step(rdir)
        rec["status"] = status
        (res / "cell.json").write_text(json.dumps(rec, indent=2) + "\n")
        for sig, h in old_handlers.items():
            signal.signal(sig, h)


def main(argv: list[str]) -> int:
    """Worker entry: ``python -m spatialssl.study.worker CELL_JSON BUDGET_JSON RESULTS RUNS TASKS DEADLINE``
    (BUDGET_JSON: ``Budget.to_json``, or a budget's name)."""
    import logging
    import shlex

    from .plan import BUDGETS

    cell, budget, results, runs, tasks, deadline = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    c = Cell.from_json(cell)
    b = Budget.from_json(budget) if budget.startswith("{") else BUDGETS[budget]
    if b.plugins:  # a user's framework (compare --plugin), found as the command that started us found it
        import importlib

        sys.path.insert(0, os.getcwd())
        for module in b.plugins:
            importlib.import_module(module)
    status = run_cell(c, b, Path(results), Path(runs), tasks.split(","), float(deadline),
                      command=shlex.join([sys.executable, "-m", "spatialssl.study.worker", *argv[:1], b.name, *argv[2:]]))
    print(f"cell {c.name}: {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
