"""The scheduler: the cells not yet done, ``workers`` at a time, within a time limit.

Per call: cells whose results are complete are skipped; the rest start, up to ``workers``
at once (one subprocess each, ``spatialssl.study.worker``), in plan order, each only when
its expected time fits in what is left of the time limit. The plan is read again whenever
a worker ends: a tuned arm's final cells join it as soon as its last tuning cell is done
(``plan.with_picks``), ahead of the next framework's tuning. A worker sizes
``pretrain(stop_after=...)`` to its deadline, so it stops with a checkpoint, and evaluates
only when the run is complete; as a backstop the scheduler sends SIGTERM to a worker still
running at the deadline (then SIGKILL), which loses at most ``train.checkpoint_every``
steps. An interrupted cell resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import runfolder
from .plan import (Budget, Cell, cell_config, cell_status, read_json, results_dir, run_dir)
from .worker import card_name, commit_id

SRC = Path(__file__).resolve().parents[2]


def measured_times(results: Path, budget: Budget) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(framework, backbone) -> [(pretrain s, eval s)] of cells this budget finished in one go."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for p in [*results.glob("*/cell.json"), *results.glob("tune/*/cell.json")]:
        rec = read_json(p)
        t = rec.get("timing", {})
        if rec.get("budget") == budget.name and rec.get("complete") and t.get("pretrain_full_s"):
            out.setdefault((rec["framework"], rec["backbone"]), []).append((t["pretrain_full_s"], t.get("eval_s", 0.0)))
    return out


def expected_times(cell: Cell, budget: Budget, measured: dict) -> tuple[float, float]:
    """(full pretrain s, eval s) expected for a cell: the median of finished cells of the same
    framework and backbone, else of the same backbone, else the budget's prior. (A tuning
    cell's evaluation is shorter than a final one's; the median over both errs long.)"""
    same = measured.get((cell.framework, cell.backbone)) or [
        v for (fw, bb), vals in measured.items() if bb == cell.backbone for v in vals]
    if same:
        return statistics.median(p for p, _ in same), statistics.median(e for _, e in same)
    return budget.expected[cell.backbone]


def remaining_time(cell: Cell, budget: Budget, runs: Path, measured: dict, steps: int) -> float:
    pre, ev = expected_times(cell, budget, measured)
    left = max(0.0, 1.0 - runfolder.last_step(run_dir(cell, budget, runs)) / steps)
    return pre * left + ev


@dataclass
class Worker:
    cell: Cell
    proc: subprocess.Popen
    log: Path
    started: float
    term_sent: float = 0.0
    steps: int = 0
    run_dir: Path | None = None


PROGRESS_S = 60.0  # a progress line for the running cells this often (greppable: "study: running")


@dataclass
class CallLog:
    started: list[str] = field(default_factory=list)
    finished: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # not started: expected time did not fit


def prepare_data(cfg: dict, device: str) -> None:
    """Render (once, cached) every PartsWorld split a cell needs, here, before the cell's
    workers start: two workers never render the same split at once."""
    from ..data import SPLITS, partsworld, partsworld_config

    pcfg = partsworld_config(cfg["data"])
    for split in SPLITS:
        if not os.path.exists(partsworld.cache_path(split, pcfg, cfg["data"]["cache_dir"] or None)):
            t0 = time.time()
            partsworld.load(split, pcfg, cache_dir=cfg["data"]["cache_dir"] or None, device=device, progress=False)
            print(f"study: rendered partsworld {split} ({pcfg.n_for(split)} x {pcfg.size} px) in "
                  f"{time.time() - t0:.0f}s", flush=True)


def start_worker(cell: Cell, budget: Budget, results: Path, runs: Path, tasks: list[str], deadline: float) -> Worker:
    cmd = [sys.executable, "-m", "spatialssl.study.worker", cell.to_json(), budget.to_json(), str(results), str(runs),
           ",".join(tasks), f"{deadline:.1f}"]
    rdir = run_dir(cell, budget, runs)
    rdir.mkdir(parents=True, exist_ok=True)
    log = rdir / f"worker-{cell.name}.log" if rdir.name != cell.name else rdir / "worker.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=str(budget.num_threads))
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
    return Worker(cell, proc, log, time.time())


def _doing(w: Worker) -> str:
    """``step 120/400``, or ``evaluating`` once the run is trained."""
    step = runfolder.last_step(w.run_dir)
    return "evaluating" if w.steps and step >= w.steps else f"step {step}/{w.steps}"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def schedule(plan: Callable[[], list[Cell]], budget: Budget, results: Path, runs: Path, tasks: list[str],
             workers: int, time_limit: float, allow_partial: bool = False, poll_s: float = 0.5,
             retry_failed: bool = False, progress_s: float = PROGRESS_S) -> CallLog:
    """Run the cells ``plan()`` lists that are not yet done, ``workers`` at a time, and
    return before ``time_limit`` s; ``plan`` is called again whenever a worker ends."""
    t_start = time.time()
    m = budget.margin_s
    hard = t_start + time_limit - m  # every worker gone by here; the rest: tables, report, exit
    deadline = hard - m  # each worker stops itself by here (its pretrain sized to it)
    device = "cuda" if budget.device != "cpu" and _cuda() else "cpu"
    results.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    calllog = CallLog()
    status = lambda c: cell_status(c, results, runs, budget, tasks)  # noqa: E731
    cells = plan()
    failed = [c.name for c in cells if status(c) == "failed"]
    if retry_failed:
        for c in cells:  # forget the failure: the cell runs (and resumes) again
            if c.name in failed:
                rec = read_json(results_dir(c, results) / "cell.json")
                rec.pop("failed", None)
                (results_dir(c, results) / "cell.json").write_text(json.dumps(rec, indent=2) + "\n")
    elif failed:
        print(f"study: skipping {len(failed)} failed cell(s) ({', '.join(failed)}; see their cell.json and "
              f"worker log; --retry-failed runs them again)", flush=True)
    skip = {"done", "failed"}
    print(f"study: {sum(status(c) == 'done' for c in cells)} of {len(cells)} cells planned so far are done; "
          f"{workers} at a time; time limit {time_limit:.0f}s", flush=True)
    running: list[Worker] = []
    seen: set[str] = set()  # started or skipped in this call
    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001 - stop the workers, then exit
        stop["now"] = True

    def pending() -> list[Cell]:
        busy = {w.cell.name for w in running}
        return [c for c in plan() if c.name not in seen and c.name not in busy and status(c) not in skip]

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    last_progress = time.time()
    try:
        todo = pending()
        while (todo or running) and not stop["now"]:
            now = time.time()
            if running and now - last_progress >= progress_s:
                last_progress = now
                print("study: running " + "; ".join(f"{w.cell.name} {_doing(w)} ({(now - w.started) / 60:.0f} min)"
                                                    for w in running), flush=True)
            ended = False
            for w in list(running):
                if w.proc.poll() is not None:
                    running.remove(w)
                    ended = True
                    rec = read_json(results_dir(w.cell, results) / "cell.json")
                    calllog.finished[w.cell.name] = rec.get("status", f"exit {w.proc.returncode}")
                    print(f"study: {w.cell.name} {calllog.finished[w.cell.name]} after {now - w.started:.0f}s "
                          f"(exit {w.proc.returncode}; log {w.log})", flush=True)
                elif now > deadline + 0.3 * m and not w.term_sent:
                    w.proc.send_signal(signal.SIGTERM)  # backstop: it should have stopped itself
                    w.term_sent = now
                    print(f"study: {w.cell.name} past its deadline: SIGTERM", flush=True)
                elif w.term_sent and now > hard - 0.2 * m:
                    w.proc.kill()
            if ended:
                todo = pending()
            measured = measured_times(results, budget)
            while todo and len(running) < workers:
                cell = todo.pop(0)
                seen.add(cell.name)
                cfg = cell_config(cell, budget, runs, tasks)
                need = remaining_time(cell, budget, runs, measured, cfg["train"]["steps"])
                if cfg["data"]["name"] == "partsworld" and need <= deadline - time.time():
                    prepare_data(cfg, device)  # before the check below, which then counts its time
                left = deadline - time.time()
                if need > left and not (allow_partial and left > 0.25 * need and left > 30):
                    calllog.skipped.append(cell.name)
                    print(f"study: not starting {cell.name}: expected {need:.0f}s, {max(left, 0):.0f}s left",
                          flush=True)
                    continue
                w = start_worker(cell, budget, results, runs, tasks, deadline)
                w.steps, w.run_dir = cfg["train"]["steps"], run_dir(cell, budget, runs)
                running.append(w)
                calllog.started.append(cell.name)
                print(f"study: started {cell.name} (expected {need:.0f}s, {left:.0f}s left)", flush=True)
            if todo or running:
                time.sleep(poll_s)
    finally:
        for w in running:  # an interrupted call: stop every worker (each keeps its last checkpoint)
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in running:
            try:
                w.proc.wait(timeout=max(2.0, 0.3 * m))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        for s, h in old.items():
            signal.signal(s, h)
    with open(results / "calls.jsonl", "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)),
                            "budget": budget.name, "card": card_name(), "commit": commit_id(),
                            "time_limit_s": time_limit, "wall_s": round(time.time() - t_start, 1),
                            "workers": workers, "started": calllog.started, "finished": calllog.finished,
                            "not_started": calllog.skipped}) + "\n")
    return calllog
