"""The study: every framework with and without SP, per backbone and pretraining seed, on
PartsWorld, evaluated on all eight protocols; resumable, time-boxed, N cells at once.

A *cell* is one pretraining run plus its evaluations: framework x {base, + SP} x backbone
x seed, named ``<framework>[_sp]-<backbone>-s<seed>`` (e.g. ``dino_sp-cnn-s0``):

  frameworks  dino, simclr, mocov3, byol, ibot
  backbones   cnn       the demo's resnet_mini, 32 px global / 16 px local views of 64 px
                        canvases (configs/demo.yaml; DINO: configs/demo_dino.yaml), as
                        ``spatialssl compare`` runs it. iBOT needs patch tokens: its ``cnn``
                        cells use compare's stand-in, a ViT-Tiny/4 at 32 px
                        (``experiments.VIT_ONLY``).
              vits16    the real preset, DINO only: configs/dino.yaml / dino_sp.yaml (ViT-S/16,
                        2x224 + 6x96 views) on 256 px PartsWorld canvases
              vit_tiny  ViT-Tiny/8 at 64 px (64 px global / 32 px local views of 64 px canvases)
  seeds       0, 1, 2 (the run seed: initialisation, data order, views; the data set is fixed)

Both arms of a pair differ only in ``sp.enabled`` (and their names): ``views.local_flip`` is
pinned to ``per_image`` in both (SP needs one flip per image; pinning it keeps the flip
policy out of the comparison). docs/study.md gives the budgets and why.

Order (every prefix of it is a useful partial grid): seed 0 of every framework pair on the
CNN, the ViT-S/16 pair, the further CNN seeds, then the ViT-Tiny cells.

Per call: cells whose results are complete are skipped; the rest start, up to ``--workers``
at once (one subprocess each, sharing the one GPU as benchmarks/gpu_release.sh does), in
order, each only when its expected time fits in what is left of ``--time-limit``. A worker
sizes ``pretrain(stop_after=...)`` to its deadline, so it stops with a checkpoint, and
evaluates only when the run is complete; as a backstop the scheduler sends SIGTERM to a
worker still running at the deadline (then SIGKILL), which loses at most
``train.checkpoint_every`` steps. An interrupted cell resumes from its checkpoint.

Files: checkpoints and feature caches in ``--runs`` (scratch, default runs/study); the
small files to commit in ``--results`` (default results/study; layout in its README.md).
At the end (or with ``--report-only``): ``summary.md`` (mean ± std over pretraining seeds
per framework x arm x backbone, the paired SP − base difference, DINO/iBOT teacher entropy
and RankMe: ``spatialssl report`` pairs runs by framework only and has no spread over
pretraining seeds, so that aggregation lives here) and ``report/`` (``spatialssl report``
over the complete seed-0 pairs).

Usage:
    python benchmarks/study.py --budget cpu --backbones cnn --frameworks simclr,byol,mocov3,dino \
        --results results/study/cpu --runs runs/study/cpu [--time-limit S]   # the CPU study (docs/study.md)
    python benchmarks/study.py --budget gpu --time-limit 540 [--workers 4]
    python benchmarks/study.py --budget tiny --frameworks dino,simclr --backbones cnn --seeds 0
    python benchmarks/study.py --budget gpu --list          # the cells, their status, expected s
    python benchmarks/study.py --budget gpu --report-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from spatialssl import config as config_mod  # noqa: E402
from spatialssl import experiments  # noqa: E402
from spatialssl import runfolder  # noqa: E402

FRAMEWORKS = ["dino", "simclr", "mocov3", "byol", "ibot"]
BACKBONES = ["cnn", "vits16", "vit_tiny"]
SEEDS = [0, 1, 2]
ALL_TASKS = ["knn", "linear", "patch_pair", "finegrained", "segmentation", "depth", "robustness", "jigsaw"]
VITS16_FRAMEWORKS = ["dino"]  # the real-preset cell

# settings per backbone, on top of the framework's preset and the demo's (see cell_config)
BACKBONE_SETTINGS = {
    "cnn": [],
    # 128 px canvases: no 32 px local view enlarged (smallest box 40 px; at 64 px they were 1.6x
    # enlarged, and their blur told SP their size: docs/sp.md "Resampling")
    "vit_tiny": ["backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=64", "data.canvas_size=128",
                 "views.global_size=64", "views.local_size=32", "views.local_scale=[0.1,0.25]",
                 "eval.img_size=64", "train.lr=0.0005"],
    # the dino / dino_sp presets as they are (448 px canvases)
    "vits16": [],
}

CPU_STEPS = 3000  # the cpu budget's steps: set from the learning curve (docs/study.md)

TINY_TRAIN = ["train.steps=8", "train.batch_size=16", "data.n_train=128", "data.n_eval=64", "train.warmup_steps=2",
              "train.checkpoint_every=4", "train.log_every=4", "train.collapse_every=4"]
TINY_EVAL = ["eval.n_train=64", "eval.n_test=32", "eval.linear_epochs=20", "eval.linear_lr=[0.01]",
             "eval.pp_epochs=20", "eval.pp_pairs_per_image=4", "eval.dense_n_train=32", "eval.dense_n_test=16",
             "eval.dense_epochs=2", "eval.robust_n_test=32", "eval.robust_severities=[1]",
             "eval.jigsaw_n_train=32", "eval.jigsaw_n_test=16", "eval.jigsaw_epochs=5"]


@dataclass(frozen=True)
class Budget:
    """Pretraining and evaluation settings of one study budget (docs/study.md: why these)."""

    name: str
    train: dict[str, list[str]]  # backbone -> overrides (steps, batch, data size, ...)
    eval: list[str]  # eval.* overrides, every cell
    eval_seeds: int  # probe seeds per evaluation (mean ± std; the report's marks use them)
    # backbone -> (pretrain s, eval s) expected per cell with `workers` cells running at once;
    # replaced by the measured times of finished cells (cell.json) as soon as there are some
    expected: dict[str, tuple[float, float]]
    workers: int
    num_threads: int  # torch CPU threads per worker
    margin_s: float  # kept free before the time limit (report, copies, process exit)
    device: str = "auto"


BUDGETS: dict[str, Budget] = {
    # CPU smoke test (tests/test_study.py): runs learn nothing; every code path runs
    "tiny": Budget(
        "tiny",
        train={"cnn": TINY_TRAIN, "vit_tiny": TINY_TRAIN,
               "vits16": ["train.steps=2", "train.batch_size=4", "data.n_train=16", "data.n_eval=16",
                          "data.canvas_size=96", "views.global_size=64", "views.local_size=32",
                          "framework.out_dim=1024", "train.warmup_steps=1", "train.checkpoint_every=1",
                          "train.log_every=1", "eval.n_train=16", "eval.n_test=16"]},
        eval=TINY_EVAL, eval_seeds=2,
        expected={"cnn": (8.0, 6.0), "vit_tiny": (12.0, 8.0), "vits16": (60.0, 30.0)},
        workers=2, num_threads=1, margin_s=5.0, device="cpu"),
    # one GPU: the released checkpoints' budget (benchmarks/gpu_release.sh), where the SimCLR
    # baseline reached linear 63.5% and kNN 50% (chance 10%); the real preset ~5 GPU minutes
    "gpu": Budget(
        "gpu",
        # cnn: the released runs' CNN too (width 32, timm's stem width; the CPU demo's is 16 / 16)
        train={"cnn": ["train.steps=3000", "train.batch_size=256", "data.n_train=20000", "data.n_eval=2000",
                       "train.checkpoint_every=250", "train.log_every=50", "backbone.width=32",
                       "backbone.stem_width=0"],
               "vit_tiny": ["train.steps=3000", "train.batch_size=256", "data.n_train=20000",
                            "data.n_eval=2000", "train.checkpoint_every=250", "train.log_every=50",
                            "train.warmup_steps=300"],
               "vits16": ["train.steps=2000", "train.batch_size=128", "data.n_train=5000", "data.n_eval=1000",
                          "train.warmup_steps=200", "train.compile=true", "train.checkpoint_every=250",
                          "train.log_every=50"]},
        eval=["eval.n_train=5000", "eval.n_test=2000"], eval_seeds=3,  # n_test: all of a 2,000-image split
        expected={"cnn": (330.0, 120.0), "vit_tiny": (300.0, 120.0), "vits16": (360.0, 150.0)},
        workers=4, num_threads=2, margin_s=30.0, device="cuda"),
    # the 2-core CPU: the demo CNN (DINO, SimCLR, MoCo v3, BYOL; iBOT's ViT-Tiny/4 stand-in runs at
    # ~13 img/s on one thread, ~4 h a cell: left to the gpu budget, docs/study.md) at the budget the learning curve picked (benchmarks/learning_curve.py: the smallest
    # at which every baseline's kNN is >= its random-init floor + 0.10), the demo preset's fast step
    # (bf16 + channels_last), two cells at a time, one core each; evaluation at the demo's
    # probe sizes, 3 probe seeds
    "cpu": Budget(
        "cpu",
        train={"cnn": [f"train.steps={CPU_STEPS}", "train.batch_size=64", "data.n_train=8000", "data.n_eval=1000",
                       "train.warmup_steps=40", "train.checkpoint_every=250", "train.log_every=50", "train.collapse_every=250"]},
        eval=list(experiments.DEMO_EVAL),
        eval_seeds=3,
        # two cells at once on one thread each: 1.6x the throughput of one cell on two threads, whose
        # OpenMP regions stall whenever anything else runs (benchmarks/cpu_step.py, RESULTS.md "CPU step")
        expected={"cnn": (CPU_STEPS * 0.25, 300.0)},
        workers=2, num_threads=1, margin_s=20.0, device="cpu"),
}
# the cpu budget on PartsWorld with a grey background (data.background=grey): the sky and ground
# colours are what BYOL's and DINO's neighbourhoods shared at the cpu budget (benchmarks/knn_features.py);
# without them every baseline's kNN clears its floor (the grey learning curve, RESULTS.md)
CPU_GREY_STEPS = 2000  # the smallest budget of that curve where every baseline's kNN >= floor + 0.10
BUDGETS["cpu_grey"] = dataclasses.replace(
    BUDGETS["cpu"], name="cpu_grey",
    train={"cnn": [*(o for o in BUDGETS["cpu"].train["cnn"] if not o.startswith("train.steps=")),
                   f"train.steps={CPU_GREY_STEPS}", "data.background=grey"]},
    expected={"cnn": (CPU_GREY_STEPS * 0.25, 300.0)})


@dataclass(frozen=True)
class Cell:
    framework: str
    sp: bool
    backbone: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.framework}{'_sp' if self.sp else ''}-{self.backbone}-s{self.seed}"

    @property
    def pair(self) -> str:
        return f"{self.framework}-{self.backbone}-s{self.seed}"


def grid(frameworks: list[str] = FRAMEWORKS, backbones: list[str] = BACKBONES, seeds: list[int] = SEEDS
         ) -> list[Cell]:
    """The cells in study order: seed 0 of every pair on the CNN, the ViT-S/16 pair, the
    further CNN seeds, then the ViT-Tiny cells (by seed); each pair's two arms adjacent."""
    def pairs(fws: list[str], backbone: str, seed: int) -> list[Cell]:
        return [Cell(fw, sp, backbone, seed) for fw in fws for sp in (False, True)]

    out: list[Cell] = []
    first, rest = seeds[:1], seeds[1:]
    if "cnn" in backbones:
        out += [c for s in first for c in pairs(frameworks, "cnn", s)]
    if "vits16" in backbones:
        out += [c for s in first for c in pairs([f for f in frameworks if f in VITS16_FRAMEWORKS], "vits16", s)]
    if "cnn" in backbones:
        out += [c for s in rest for c in pairs(frameworks, "cnn", s)]
    if "vit_tiny" in backbones:
        out += [c for s in seeds for c in pairs(frameworks, "vit_tiny", s)]
    return out


def parse_cell(name: str) -> Cell:
    try:
        arm, backbone, seed = name.split("-")
        fw, sp = (arm[:-3], True) if arm.endswith("_sp") else (arm, False)
        if fw not in FRAMEWORKS or backbone not in BACKBONES or not seed.startswith("s"):
            raise ValueError
        return Cell(fw, sp, backbone, int(seed[1:]))
    except ValueError:
        raise SystemExit(f"bad cell name '{name}' (expected <framework>[_sp]-<backbone>-s<seed>, framework one of "
                         f"{', '.join(FRAMEWORKS)}, backbone one of {', '.join(BACKBONES)})") from None


def cell_config(cell: Cell, budget: Budget, runs: Path, tasks: list[str], extra: list[str] = ()) -> dict:
    """The resolved config of a cell: presets, then backbone settings, then the budget."""
    if cell.backbone == "vits16":
        if cell.framework not in VITS16_FRAMEWORKS:
            raise ValueError(f"the vits16 cell is DINO's real preset only, not {cell.framework}")
        presets = [f"{cell.framework}_sp" if cell.sp else cell.framework]
        ov = []
    else:  # as `spatialssl compare` builds them (experiments.compare)
        demo = f"demo_{cell.framework}" if (config_mod.CONFIG_DIR / f"demo_{cell.framework}.yaml").exists() else "demo"
        presets = ([cell.framework] if (config_mod.CONFIG_DIR / f"{cell.framework}.yaml").exists() else []) + [demo]
        ov = [f"framework.name={cell.framework}"]
        if cell.backbone == "cnn":
            ov += experiments.VIT_ONLY.get(cell.framework, [])
    ov += [*BACKBONE_SETTINGS[cell.backbone], *budget.train[cell.backbone], *budget.eval,
           f"eval.tasks=[{','.join(tasks)}]", f"eval.seeds={budget.eval_seeds}",
           f"sp.enabled={str(cell.sp).lower()}", "views.local_flip=per_image", f"seed={cell.seed}",
           f"name={cell.name}", f"out_dir={runs / cell.name}", f"device={budget.device}", "train.progress=false",
           f"train.num_threads={budget.num_threads}", *extra]
    return config_mod.resolve(presets, ov)


# ----------------------------------------------------------------------------- cell state

def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def cell_status(cell: Cell, results: Path, runs: Path, budget: Budget, tasks: list[str]) -> str:
    """``done`` (results complete for these tasks and this budget), ``failed`` (the worker
    raised: see cell.json and worker.log; ``--retry-failed`` runs it again), ``partial`` (a
    checkpoint or some results exist) or ``new``."""
    rec = read_json(results / cell.name / "cell.json")
    if rec and rec.get("budget") != budget.name:
        raise SystemExit(f"{results / cell.name} holds a cell run at budget '{rec.get('budget')}', not "
                         f"'{budget.name}': use another --results folder")
    have = {p.stem for p in (results / cell.name / "metrics").glob("*.json")}
    if rec.get("complete") and set(tasks) <= have:
        return "done"
    if rec.get("failed"):
        return "failed"
    if (runs / cell.name / runfolder.CHECKPOINT).exists() or rec:
        return "partial"
    return "new"


def done_steps(run_dir: Path) -> int:
    """Steps of a run recorded in its metrics.jsonl (0 when none): a cheap progress read
    (loading a ViT-S checkpoint to read its step would cost seconds)."""
    return runfolder.last_step(run_dir)


def measured_times(results: Path, budget: Budget) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(framework, backbone) -> [(pretrain s, eval s)] of cells this budget finished in one go."""
    out: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for p in results.glob("*/cell.json"):
        rec = read_json(p)
        t = rec.get("timing", {})
        if rec.get("budget") == budget.name and rec.get("complete") and t.get("pretrain_full_s"):
            out.setdefault((rec["framework"], rec["backbone"]), []).append((t["pretrain_full_s"], t["eval_s"]))
    return out


def expected_times(cell: Cell, budget: Budget, measured: dict) -> tuple[float, float]:
    """(full pretrain s, eval s) expected for a cell: the median of finished cells of the same
    framework and backbone, else of the same backbone, else the budget's prior."""
    same = measured.get((cell.framework, cell.backbone)) or [
        v for (fw, bb), vals in measured.items() if bb == cell.backbone for v in vals]
    if same:
        return statistics.median(p for p, _ in same), statistics.median(e for _, e in same)
    return budget.expected[cell.backbone]


def remaining_time(cell: Cell, budget: Budget, runs: Path, measured: dict, steps: int) -> float:
    pre, ev = expected_times(cell, budget, measured)
    left = max(0.0, 1.0 - done_steps(runs / cell.name) / steps)
    return pre * left + ev


# ----------------------------------------------------------------------------- one cell (worker)

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


def cpu_model() -> str:
    """This CPU's model and its bf16 instructions, e.g. ``AMD EPYC (avx512_bf16)``: bf16
    kernels differ between CPUs (AMX on a Xeon, AVX512-BF16 alone on an EPYC), and with them
    the last digits of a bf16 run. Also benchmarks/cpu_step.py's machine line."""
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
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return model + (f" ({', '.join(bf16)})" if bf16 else "")


def card_name() -> str:
    """The device a cell ran on: the GPU's name, else ``cpu: <cpu_model()>``."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu: {cpu_model()}"


class Interrupted(Exception):
    """SIGTERM / SIGINT reached a worker: stop now (the last checkpoint is kept)."""


def _raise_interrupted(signum, frame):  # noqa: ARG001
    raise Interrupted(signal.Signals(signum).name)


def copy_small_files(run_dir: Path, res: Path, items: bool = True) -> None:
    """The files to commit (never checkpoint.pt, features, TensorBoard). ``items``: also the
    evaluations' per-item outcomes and example images (``metrics/*.pt``), which the seed-0
    report's paired tests and figures read (patch-pair's are ~2.3 MB a cell at the cpu
    budget's probe sizes); the summary over seeds reads ``metrics/*.json`` alone, so the
    other seeds' cells leave them in the scratch folder."""
    res.mkdir(parents=True, exist_ok=True)
    for f in (*runfolder.SMALL_FILES, "worker.log"):
        if (run_dir / f).exists():
            shutil.copy(run_dir / f, res / f)
    if (run_dir / "metrics").is_dir():
        (res / "metrics").mkdir(exist_ok=True)
        for p in (run_dir / "metrics").iterdir():
            if p.is_file() and (p.suffix == ".json" or (items and p.stat().st_size <= 8 * 2**20)):
                shutil.copy(p, res / "metrics" / p.name)


def run_cell(cell: Cell, budget: Budget, results: Path, runs: Path, tasks: list[str], deadline: float,
             command: str = "") -> str:
    """Pretrain (resuming) and evaluate one cell before ``deadline`` (time.time()); returns
    ``done``, ``pretrained`` (no time left to evaluate) or ``partial`` (stopped with a checkpoint)."""
    import torch

    from spatialssl.engine.trainer import pretrain
    from spatialssl.evals import evaluate

    old_handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    torch.set_num_threads(budget.num_threads)
    cfg = cell_config(cell, budget, runs, tasks)
    run_dir, res = Path(cfg["out_dir"]), results / cell.name
    res.mkdir(parents=True, exist_ok=True)
    rec = read_json(res / "cell.json") or {"cell": cell.name, "framework": cell.framework, "sp": cell.sp,
                                           "backbone": cell.backbone, "seed": cell.seed, "budget": budget.name,
                                           "tasks": tasks, "complete": False, "timing": {}, "calls": 0}
    rec["calls"] += 1
    rec["tasks"] = tasks
    (res / "command.txt").write_text(command + "\n")
    (res / "commit.txt").write_text(commit_id() + "\n")
    (res / "card.txt").write_text(card_name() + "\n")
    timing = rec["timing"]
    steps = cfg["train"]["steps"]
    pre_s, eval_s = expected_times(cell, budget, measured_times(results, budget))
    status = "partial"
    try:
        start_step = done_steps(run_dir)
        if start_step < steps or not (run_dir / runfolder.BACKBONE).exists():
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
        if done_steps(run_dir) < steps or not (run_dir / runfolder.BACKBONE).exists():
            return status
        status = "pretrained"
        have = {p.stem for p in (res / "metrics").glob("*.json")}
        todo = [t for t in tasks if t not in have]
        if todo and time.time() + 0.5 * eval_s > deadline:
            return status  # evaluate on the next call
        t0 = time.time()
        if todo:
            evaluate(run_dir, todo, seeds=budget.eval_seeds, overrides={"eval": cfg["eval"]},
                     device="cuda" if torch.cuda.is_available() and budget.device != "cpu" else "cpu",
                     progress=False)
        timing["eval_s"] = timing.get("eval_s", 0.0) + time.time() - t0
        copy_small_files(run_dir, res, items=cell.seed == 0)
        rec["complete"], status = True, "done"
        return status
    except Interrupted as e:
        rec["interrupted"] = f"{e} at step {done_steps(run_dir)}"
        return status
    except Exception as e:  # a non-finite loss, a bug: recorded, so later calls skip the cell
        status = "failed"
        rec["failed"] = f"{type(e).__name__}: {e}"[:2000]
        raise
    finally:
        copy_small_files(run_dir, res, items=cell.seed == 0)
        rec["steps_done"] = done_steps(run_dir)
        rec["status"] = status
        (res / "cell.json").write_text(json.dumps(rec, indent=2) + "\n")
        for sig, h in old_handlers.items():
            signal.signal(sig, h)


# ----------------------------------------------------------------------------- the scheduler

@dataclass
class Worker:
    cell: Cell
    proc: subprocess.Popen
    log: Path
    started: float
    term_sent: float = 0.0


@dataclass
class CallLog:
    started: list[str] = field(default_factory=list)
    finished: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # not started: expected time did not fit


def prepare_data(cfg: dict, device: str) -> None:
    """Render (once, cached) every PartsWorld split a cell needs, here, before the cell's
    workers start: two workers never render the same split at once."""
    from spatialssl.data import SPLITS, partsworld, partsworld_config

    pcfg = partsworld_config(cfg["data"])
    for split in SPLITS:
        if not os.path.exists(partsworld.cache_path(split, pcfg, cfg["data"]["cache_dir"] or None)):
            t0 = time.time()
            partsworld.load(split, pcfg, cache_dir=cfg["data"]["cache_dir"] or None, device=device, progress=False)
            print(f"study: rendered partsworld {split} ({pcfg.n_for(split)} x {pcfg.size} px) in "
                  f"{time.time() - t0:.0f}s", flush=True)


def schedule(cells: list[Cell], budget: Budget, results: Path, runs: Path, tasks: list[str], workers: int,
             time_limit: float, allow_partial: bool = False, poll_s: float = 0.5, retry_failed: bool = False
             ) -> CallLog:
    """Run the cells not yet done, ``workers`` at a time, and return before ``time_limit`` s."""
    t_start = time.time()
    m = budget.margin_s
    hard = t_start + time_limit - m  # every worker gone by here; the rest: tables, report, exit
    deadline = hard - m  # each worker stops itself by here (its pretrain sized to it)
    device = "cuda" if budget.device != "cpu" and _cuda() else "cpu"
    results.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    calllog = CallLog()
    status = {c.name: cell_status(c, results, runs, budget, tasks) for c in cells}
    failed = [n for n, s in status.items() if s == "failed"]
    if retry_failed:
        for n in failed:  # forget the failure: the cell runs (and resumes) again
            rec = read_json(results / n / "cell.json")
            rec.pop("failed", None)
            (results / n / "cell.json").write_text(json.dumps(rec, indent=2) + "\n")
    elif failed:
        print(f"study: skipping {len(failed)} failed cell(s) ({', '.join(failed)}; see their cell.json and "
              f"worker.log; --retry-failed runs them again)", flush=True)
    skip = {"done"} | (set() if retry_failed else {"failed"})
    pending = [c for c in cells if status[c.name] not in skip]
    print(f"study: {sum(s == 'done' for s in status.values())} of {len(cells)} cells done; {len(pending)} to run; "
          f"{workers} at a time; time limit {time_limit:.0f}s", flush=True)
    running: list[Worker] = []
    stop = {"now": False}

    def on_signal(signum, frame):  # noqa: ARG001 - stop the workers, then exit
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while (pending or running) and not stop["now"]:
            now = time.time()
            for w in list(running):
                if w.proc.poll() is not None:
                    running.remove(w)
                    rec = read_json(results / w.cell.name / "cell.json")
                    calllog.finished[w.cell.name] = rec.get("status", f"exit {w.proc.returncode}")
                    print(f"study: {w.cell.name} {calllog.finished[w.cell.name]} after {now - w.started:.0f}s "
                          f"(exit {w.proc.returncode}; log {w.log})", flush=True)
                elif now > deadline + 0.3 * m and not w.term_sent:
                    w.proc.send_signal(signal.SIGTERM)  # backstop: it should have stopped itself
                    w.term_sent = now
                    print(f"study: {w.cell.name} past its deadline: SIGTERM", flush=True)
                elif w.term_sent and now > hard - 0.2 * m:
                    w.proc.kill()
            measured = measured_times(results, budget)
            while pending and len(running) < workers:
                cell = pending.pop(0)
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
                if cfg["data"]["name"] == "partsworld":
                    prepare_data(cfg, device)  # (a no-op when done above)
                running.append(start_worker(cell, budget, results, runs, tasks, deadline))
                calllog.started.append(cell.name)
                print(f"study: started {cell.name} (expected {need:.0f}s, {left:.0f}s left)", flush=True)
            if pending or running:
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


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def start_worker(cell: Cell, budget: Budget, results: Path, runs: Path, tasks: list[str], deadline: float) -> Worker:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", cell.name, "--budget", budget.name,
           "--results", str(results), "--runs", str(runs), "--tasks", ",".join(tasks), "--deadline", f"{deadline:.1f}"]
    (runs / cell.name).mkdir(parents=True, exist_ok=True)
    log = runs / cell.name / "worker.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=str(budget.num_threads))
    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
    return Worker(cell, proc, log, time.time())


# ----------------------------------------------------------------------------- the tables

def _last(curve: list[dict], key: str) -> float | None:
    for rec in reversed(curve):
        if isinstance(rec.get(key), (int, float)):
            return float(rec[key])
    return None


def _mean(vals: list[float | None]) -> float | None:
    """The mean, or None when any value is missing."""
    return None if not vals or any(v is None for v in vals) else statistics.fmean(vals)


def _ms(vals: list[float]) -> str:
    if not vals:
        return "–"
    m = statistics.fmean(vals)
    text = f"{m:.3f}" if abs(m) < 100 else f"{m:.1f}"
    return f"{text} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else text


def _paired(base: list[float], sp: list[float], sign: int, floors: tuple[float | None, float | None] = (None, None)
            ) -> str:
    """Mean ± std over seeds of (SP − base) paired by seed, marked by the report's one rule
    (``report.mark``) on the 95% t-interval of the mean over seeds (it excludes 0 exactly when
    a paired t-test gives p < 0.05); "≤ floor" instead of a mark when both arms' means are at
    or below their mean random-init floor (``floors``: baseline's, SP's). With one seed there
    is no interval: no mark (``report.NO_TEST``). A diagnostic (``sign`` 0): "–"."""
    from spatialssl import report

    if not base or sign == 0:
        return "–"
    d = [b - a for a, b in zip(base, sp)]
    m = statistics.fmean(d)
    floor = all(report.at_floor(sign, statistics.fmean(v), f) for v, f in zip((base, sp), floors))
    note = f" {report.FLOOR_NOTE}" if floor else ""
    if len(d) == 1:
        return f"{m:+.3f} {report.NO_TEST}{note} (1 seed)"
    sd = statistics.stdev(d)
    if sd == 0:
        p, h = (0.0 if m else 1.0), 0.0
    else:
        from scipy import stats

        se = sd / math.sqrt(len(d))
        p = float(stats.t.sf(abs(m) / se, len(d) - 1) * 2)
        h = float(stats.t.ppf(0.975, len(d) - 1)) * se
    return f"{m:+.3f} ± {sd:.3f} {report.mark(m - h, m + h, sign, floor)} (p {p:.2g}, {len(d)} seeds)"


CURVE_ROWS = [("teacher_entropy", "teacher entropy, per sample (end of training)", 0),
              ("teacher_mean_entropy", "teacher entropy, batch mean (end of training)", 0),
              ("rankme", "RankMe of the embeddings (end of training)", 1)]


def complete_pairs(cells: list[Cell], results: Path, budget: Budget, tasks: list[str]
                   ) -> dict[str, dict[str, list[tuple[int, object, object]]]]:
    """backbone -> framework -> [(seed, baseline run, SP run)] (``report.Run``), the pairs whose
    two arms are both done, in grid order; backbones without any are left out."""
    from spatialssl.report import read_run

    done = {c.name for c in cells if cell_status(c, results, Path("/nonexistent"), budget, tasks) == "done"}
    out: dict[str, dict[str, list[tuple[int, object, object]]]] = {}
    for backbone in BACKBONES:
        for c in cells:
            mate = Cell(c.framework, True, c.backbone, c.seed)
            if c.backbone == backbone and not c.sp and c.name in done and mate.name in done:
                out.setdefault(backbone, {}).setdefault(c.framework, []).append(
                    (c.seed, read_run(results / c.name), read_run(results / mate.name)))
    return out


FIGURE_METRICS = ["kNN top-1", "linear top-1", "patch-pair R² dx", "patch-pair R² ds", "segmentation mIoU",
                  "depth RMSE", "mean corruption acc. (mCA)", "jigsaw tile acc."]


def figure(cells: list[Cell], results: Path, budget: Budget, tasks: list[str]) -> list[str]:
    """``summary.png``: per backbone, one panel per metric of ``FIGURE_METRICS`` (those the
    results hold): for each framework, every pretraining seed's baseline and SP values joined
    by a line (the paired difference the summary tests), the means as larger markers, and the
    mean random-init floor dashed. Returns the panels drawn, ``backbone: metric``."""
    from spatialssl.report import KEY_METRICS

    pairs = complete_pairs(cells, results, budget, tasks)
    metrics = {label: (task, key, sign) for task, key, label, sign in KEY_METRICS if label in FIGURE_METRICS}
    panels = []
    for backbone, by_pair in pairs.items():
        for label in FIGURE_METRICS:
            if label in metrics:
                task, key, sign = metrics[label]
                if any(a.value(task, key)[0] is not None for v in by_pair.values() for _, a, _ in v):
                    panels.append((backbone, label, task, key, sign))
    if not panels:
        return []
    from spatialssl.report.figures import _plt, _save  # the report's Agg setup and PNG settings

    plt = _plt()
    ncol = 4
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.9 * nrow), squeeze=False)
    for ax, (backbone, label, task, key, sign) in zip(axes.flat, panels):
        fws = list(pairs[backbone])
        floors = []
        for i, fw in enumerate(fws):
            rows = [(a.value(task, key)[0], b.value(task, key)[0]) for _, a, b in pairs[backbone][fw]]
            rows = [(x, y) for x, y in rows if x is not None and y is not None]
            for x, y in rows:
                ax.plot([i - 0.17, i + 0.17], [x, y], color="0.6", lw=0.8, marker="o", ms=2.5, zorder=1)
            if rows:
                ax.scatter([i - 0.17], [statistics.fmean(x for x, _ in rows)], color="C0", s=36, zorder=2,
                           label="baseline" if i == 0 else None)
                ax.scatter([i + 0.17], [statistics.fmean(y for _, y in rows)], color="C1", s=36, zorder=2,
                           label="+ SP" if i == 0 else None)
            floors += [f for _, a, _ in pairs[backbone][fw] if (f := a.value(task, f"random_{key}")[0]) is not None]
        if floors:
            floor = statistics.fmean(floors)
            ax.axhline(floor, color="0.3", ls="--", lw=0.8, label="random init")
            lo, hi = ax.get_ylim()
            pad = 0.05 * (max(hi, floor) - min(lo, floor))  # the floor clear of the frame's edge
            ax.set_ylim(min(lo, floor - pad), max(hi, floor + pad))
        ax.set_xticks(range(len(fws)), fws)
        ax.set_title(f"{label} {'↑' if sign > 0 else '↓' if sign < 0 else ''}"
                     + (f" ({backbone})" if len(pairs) > 1 else ""), fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    seeds = sorted({s for by_pair in pairs.values() for v in by_pair.values() for s, _, _ in v})
    fig.suptitle(f"spatialssl study, {budget.name} budget: baseline vs + SP per pretraining seed "
                 f"(seeds {', '.join(map(str, seeds))}; lines join a seed's pair)", fontsize=10)
    _save(fig, results / "summary.png")
    return [f"{b}: {label}" for b, label, *_ in panels]


def summary(cells: list[Cell], results: Path, budget: Budget, tasks: list[str]) -> str:
    """Markdown: per backbone, each key metric as mean ± std over pretraining seeds per
    framework x arm, with the paired difference; only pairs whose two arms are complete."""
    from spatialssl.report import ARROWS, KEY_METRICS, NO_TEST, markdown_table

    lines = [f"# Study summary ({budget.name} budget)", "",
             "Mean ± std over pretraining seeds (each value itself the mean over "
             f"{budget.eval_seeds} probe seeds); Δ = SP − base paired by seed, marked ✓ (SP better) / ✗ "
             "(SP worse) where a paired t-test over the seeds gives p < 0.05, ≈ where not, ≤ floor (no mark) "
             f"where both arms are at or below their random-init floor; with one seed, no test and no mark "
             f"({NO_TEST}). Only pairs with both arms complete are counted. Written by "
             "benchmarks/study.py from results/study/*/ (docs/study.md).", ""]
    for backbone, by_pair in complete_pairs(cells, results, budget, tasks).items():
        fws = list(by_pair)
        r0 = by_pair[fws[0]][0][1]
        bb = r0.config.get("backbone", {})
        lines += [f"## {backbone}", "",
                  "Seeds per framework: " + ", ".join(f"{fw} {sorted(s for s, _, _ in by_pair[fw])}" for fw in fws)
                  + ". Backbones: " + ", ".join(sorted({_backbone_label(r.config) for fw in fws
                                                        for _, a, b in by_pair[fw] for r in (a, b)})) + ".", ""]
        header = ["metric"] + [h for fw in fws for h in (fw, f"{fw} + SP", "Δ")]
        rows = []
        for task, key, label, sign in KEY_METRICS:
            cells_row, seen = [f"{label}{ARROWS.get(sign, '')}"], False
            for fw in fws:
                base = [a.value(task, key)[0] for _, a, _ in by_pair[fw]]
                sp = [b.value(task, key)[0] for _, _, b in by_pair[fw]]
                keep = [(x, y) for x, y in zip(base, sp) if x is not None and y is not None]
                seen |= bool(keep)
                xs, ys = [x for x, _ in keep], [y for _, y in keep]
                floors = tuple(_mean([r.value(task, f"random_{key}")[0] for r in arm])
                               for arm in ([a for _, a, _ in by_pair[fw]], [b for _, _, b in by_pair[fw]]))
                cells_row += [_ms(xs), _ms(ys), _paired(xs, ys, sign, floors)]
            if seen:
                rows.append(cells_row)
        for key, label, sign in CURVE_ROWS:
            cells_row, seen = [label], False
            for fw in fws:
                base = [_last(a.curve, key) for _, a, _ in by_pair[fw]]
                sp = [_last(b.curve, key) for _, _, b in by_pair[fw]]
                keep = [(x, y) for x, y in zip(base, sp) if x is not None and y is not None]
                seen |= bool(keep)
                xs, ys = [x for x, _ in keep], [y for _, y in keep]
                cells_row += [_ms(xs), _ms(ys), _paired(xs, ys, sign)]
            if seen:
                rows.append(cells_row)
        maxent = sorted({f"{fw} log({by_pair[fw][0][1].config['framework']['out_dim']}) = "
                         f"{math.log(by_pair[fw][0][1].config['framework']['out_dim']):.2f}"
                         for fw in fws if any("teacher_entropy" in r for r in by_pair[fw][0][1].curve)})
        lines.append(markdown_table(header, rows))
        if maxent:
            lines += ["", "Teacher entropy maximum (uniform outputs): " + "; ".join(maxent) + " nats."]
        lines.append("")
    if not any(line.startswith("## ") for line in lines):
        lines.append("(no complete pair yet)")
    return "\n".join(lines) + "\n"


def _backbone_label(cfg: dict) -> str:
    b = cfg.get("backbone", {})
    name = b.get("name", "?")
    if name.startswith("vit"):
        name += f"/{b.get('patch_size')}"
    return f"{name} @ {cfg.get('views', {}).get('global_size')} px"


def write_tables(cells: list[Cell], results: Path, budget: Budget, tasks: list[str]) -> Path:
    """``summary.md`` (seed aggregation), ``summary.png`` (its key rows, seed by seed) and
    ``report/`` (``spatialssl report`` over the complete seed-0 pairs, arms adjacent so the
    report pairs them right)."""
    from spatialssl.report import write_report

    text = summary(cells, results, budget, tasks)
    (results / "summary.md").write_text(text)
    print(text, flush=True)
    if figure(cells, results, budget, tasks):
        print(f"figure: {results / 'summary.png'}", flush=True)
    status = {c.name: cell_status(c, results, Path("/nonexistent"), budget, tasks) for c in cells}
    dirs = []
    for c in cells:
        mate = Cell(c.framework, True, c.backbone, c.seed)
        if c.seed == min(x.seed for x in cells) and not c.sp and status[c.name] == status.get(mate.name) == "done":
            dirs += [results / c.name, results / mate.name]
    if dirs:
        path = write_report(dirs, results / "report", f"spatialssl study ({budget.name} budget): seed-0 pairs")
        print(f"report: {path}", flush=True)
    return results / "summary.md"


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="gpu", choices=sorted(BUDGETS))
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--tasks", default=",".join(ALL_TASKS))
    p.add_argument("--workers", type=int, default=0, help="cells at once (0 = the budget's)")
    p.add_argument("--time-limit", type=float, default=math.inf, help="seconds this call may take")
    p.add_argument("--results", default="results/study", help="small files to commit")
    p.add_argument("--runs", default="runs/study", help="scratch: checkpoints, feature caches")
    p.add_argument("--allow-partial", action="store_true",
                   help="also start cells that cannot finish in time (they stop with a checkpoint)")
    p.add_argument("--retry-failed", action="store_true", help="run cells whose worker failed again")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--list", action="store_true", help="print the cells in order with status and expected s")
    p.add_argument("--cell", default="", help=argparse.SUPPRESS)  # worker: run this one cell
    p.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    budget, results, runs = BUDGETS[a.budget], Path(a.results), Path(a.runs)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in ALL_TASKS]
    if bad:
        raise SystemExit(f"unknown task(s) {', '.join(bad)} (known: {', '.join(ALL_TASKS)})")
    if a.cell:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
        status = run_cell(parse_cell(a.cell), budget, results, runs, tasks, a.deadline or math.inf,
                          command=shlex.join([sys.executable, *sys.argv]))
        print(f"cell {a.cell}: {status}", flush=True)
        return 0
    fws = [f.strip() for f in a.frameworks.split(",") if f.strip()]
    bbs = [b.strip() for b in a.backbones.split(",") if b.strip()]
    for name, vals, known in (("framework", fws, FRAMEWORKS), ("backbone", bbs, BACKBONES)):
        if any(v not in known for v in vals):
            raise SystemExit(f"unknown {name} in {vals} (known: {', '.join(known)})")
    cells = grid(fws, bbs, [int(s) for s in a.seeds.split(",")])
    if a.list:
        measured = measured_times(results, budget)
        for i, c in enumerate(cells):
            steps = cell_config(c, budget, runs, tasks)["train"]["steps"]
            print(f"{i:3d} {c.name:24s} {cell_status(c, results, runs, budget, tasks):8s} "
                  f"{remaining_time(c, budget, runs, measured, steps):6.0f}s")
        return 0
    if not a.report_only:
        (results).mkdir(parents=True, exist_ok=True)
        schedule(cells, budget, results, runs, tasks, a.workers or budget.workers, a.time_limit, a.allow_partial,
                 retry_failed=a.retry_failed)
    write_tables(cells, results, budget, tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
