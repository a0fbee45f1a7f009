"""The study's plan: budgets, arms, cells, tuning grids, each cell's config, and the picks.

A *cell* is one pretraining run plus its evaluations. Its name is
``<framework><arm>-<backbone>-s<seed>`` for a final cell (``byol_sp-cnn-s0``) and the same
with ``-<grid point>`` for a tuning cell (``byol_ctl-cnn-s0-lrx2_schedx1.5``):

  arms        base   the framework alone
              ctl    the compute-matched control: SP's views, pairs, head and weight with its
                     targets permuted across each step's pairs (``sp.targets=shuffled``), so it
                     adds what SP adds except the geometry (frameworks whose local views SP
                     reuses, DINO and iBOT, get no extra views from SP: no control by default)
              sp     the framework + SP
  tuning      a grid (``Budget.tune`` or ``--tune KEY=V1,V2,...``) run identically for every
              arm at the tuning seed; each value is a number or ``x<m>`` (m times the arm's own
              resolved value; ``train.schedule_steps``' own value is ``train.steps``). Each cell
              is scored on the validation split carved from the training images
              (``data.holdout``, split ``holdout``), never on test; each arm's pick is its best
              point by ``Budget.pick`` (linear top-1 on validation by default); a pick on the
              edge of a grid of >= 3 values is flagged.
  finals      each arm at its pick, every seed, every evaluation on the test split; the
              tuning seed's final cell reuses its tuning run (the same config: nothing trains
              twice).

Budgets without a grid (``tiny``, ``gpu``, ``cpu``, ``cpu_grey``: the earlier studies) have
finals only, at the presets' values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .. import config as config_mod
from .. import runfolder
from ..data import HOLDOUT
from ..errors import UserError

FRAMEWORKS = ["dino", "simclr", "mocov3", "byol", "ibot"]
BACKBONES = ["cnn", "vits16", "vit_tiny"]
SEEDS = [0, 1, 2]
ALL_TASKS = ["knn", "linear", "patch_pair", "finegrained", "segmentation", "depth", "robustness", "jigsaw"]
VITS16_FRAMEWORKS = ["dino"]  # the real-preset cell
ARMS = ("base", "ctl", "sp")
ARM_SUFFIX = {"base": "", "ctl": "_ctl", "sp": "_sp"}
ARM_LABEL = {"base": "base", "ctl": "control", "sp": "+ SP"}
# frameworks whose own local views SP pairs (sp.extra_local_views is not used): SP adds no
# views there, only its head, so the control arm is optional (docs/study.md)
SP_REUSES_VIEWS = ("dino", "ibot")
TUNE_DIR = "tune"  # results/<budget>/tune/<tuning cell>
VAL_DIR = "val"  # <cell>/val/metrics/<task>.json: the tuning evaluation, on the holdout split

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
# the demo's reduced evaluation sizes (full settings: the defaults, or --set eval.*)
DEMO_EVAL = ["eval.n_train=2000", "eval.n_test=1000", "eval.dense_n_train=500", "eval.dense_n_test=250",
             "eval.dense_epochs=15", "eval.robust_n_test=300", "eval.robust_severities=[1,3,5]",
             "eval.jigsaw_n_train=500", "eval.jigsaw_n_test=250", "eval.jigsaw_epochs=60"]
# frameworks that need a ViT: a tiny one at the demo's view sizes (patch 4: 8x8 tokens at 32 px)
VIT_ONLY = {"ibot": ["backbone.name=vit_tiny", "backbone.patch_size=4", "backbone.img_size=32"]}
# short names of tuned keys in cell names (any other key: its last part)
SHORT = {"train.lr": "lr", "train.schedule_steps": "sched", "train.min_lr": "minlr",
         "framework.momentum": "mom", "framework.temperature": "temp", "framework.teacher_temp": "ttemp"}


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
    arms: tuple[str, ...] = ("base", "sp")
    # the tuning grid: ((key, (value, ...)), ...); values as written (a number or x<multiplier>)
    tune: tuple[tuple[str, tuple[str, ...]], ...] = ()
    tune_seed: int = 0
    holdout: int = 0  # data.holdout: training images held out as the validation split
    pick: tuple[str, str] = ("linear", "top1")  # the validation metric an arm's pick maximises
    val_tasks: tuple[str, ...] = ("linear", "knn")  # evaluated on validation in every tuning cell
    # how many times a framework's grid is extended past an edge: when an arm's pick lies on the
    # lowest or highest value of a key with >= 3 values, that key gets one more value beyond it
    # (the same factor) for every arm of the framework, and every arm picks again (``framework_grid``)
    widen: int = 0
    # evaluated on test in the default point's tuning cell (the default-vs-default table)
    default_test_tasks: tuple[str, ...] = ("knn", "linear")
    seeds: tuple[int, ...] = (0, 1, 2)  # pretraining seeds when none are asked for
    extra: tuple[str, ...] = ()  # key=value overrides of every cell, last (``compare --set``)
    plugins: tuple[str, ...] = ()  # modules every worker imports first (``compare --plugin``)

    def to_json(self) -> str:
        """The budget as a worker process receives it (``from_json``)."""
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> "Budget":
        d = json.loads(text)
        d["train"] = {k: list(v) for k, v in d["train"].items()}
        d["expected"] = {k: tuple(v) for k, v in d["expected"].items()}
        d["tune"] = tuple((k, tuple(v)) for k, v in d["tune"])
        for k in ("arms", "pick", "val_tasks", "default_test_tasks", "seeds", "extra", "plugins"):
            d[k] = tuple(d[k])
        return Budget(**d)


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
    # ~13 img/s on one thread, ~4 h a cell: left to the gpu budget, docs/study.md) at the budget the
    # learning curve picked (benchmarks/learning_curve.py), the demo preset's fast step (bf16 +
    # channels_last), two cells at a time, one core each; evaluation at the demo's probe sizes,
    # 3 probe seeds
    "cpu": Budget(
        "cpu",
        train={"cnn": [f"train.steps={CPU_STEPS}", "train.batch_size=64", "data.n_train=8000", "data.n_eval=1000",
                       "train.warmup_steps=40", "train.checkpoint_every=250", "train.log_every=50",
                       "train.collapse_every=250"]},
        eval=list(DEMO_EVAL),
        eval_seeds=3,
        # two cells at once on one thread each: 1.6x the throughput of one cell on two threads, whose
        # OpenMP regions stall whenever anything else runs (benchmarks/cpu_step.py, RESULTS.md "CPU step")
        expected={"cnn": (CPU_STEPS * 0.25, 300.0)},
        workers=2, num_threads=1, margin_s=20.0, device="cpu"),
}
# the cpu budget on PartsWorld with a grey background (data.background=grey): the sky and ground
# colours are what BYOL's and DINO's neighbourhoods shared at the cpu budget (benchmarks/knn_features.py)
CPU_GREY_STEPS = 2000
BUDGETS["cpu_grey"] = dataclasses.replace(
    BUDGETS["cpu"], name="cpu_grey",
    train={"cnn": [*(o for o in BUDGETS["cpu"].train["cnn"] if not o.startswith("train.steps=")),
                   f"train.steps={CPU_GREY_STEPS}", "data.background=grey"]},
    expected={"cnn": (CPU_GREY_STEPS * 0.25, 300.0)})
# the fair CPU study (docs/study.md): cpu_grey's recipe with 1,000 of 9,000 training images held out
# for validation (pretraining sees 8,000, as cpu_grey did), three arms, and a grid tuned identically
# for every arm on that validation split: the lr at 0.5, 1 and 2 times each framework's preset
# value, and the schedule's length (the 2,000 steps of the cosine itself, or of one 1.5 times as
# long: step 2,000 of a 3,000-step run beat the 2,000-step baseline, issue "Fair by construction")
BUDGETS["cpu_tuned"] = dataclasses.replace(
    BUDGETS["cpu_grey"], name="cpu_tuned",
    train={"cnn": [*(o for o in BUDGETS["cpu_grey"].train["cnn"] if not o.startswith("data.n_train=")),
                   "data.n_train=9000"]},
    arms=ARMS, holdout=1000, widen=2,
    tune=(("train.lr", ("x0.5", "x1", "x2")), ("train.schedule_steps", ("x1", "x1.5"))))
# `spatialssl compare`'s quick budgets (config.BUDGETS: the demo's 400 steps, 1,500 steps), one
# pretraining seed unless asked for more, evaluated at the demo's probe sizes
for _name in ("small", "medium"):
    BUDGETS[_name] = dataclasses.replace(
        BUDGETS["cpu"], name=_name, seeds=(0,), device="auto",
        train={"cnn": [*config_mod.BUDGETS[_name], "train.checkpoint_every=100", "train.log_every=10"]},
        expected={"cnn": ({"small": 120.0, "medium": 450.0}[_name], 250.0)})
# the tiny budget with a tuning grid and three arms (tests)
BUDGETS["tiny_tuned"] = dataclasses.replace(
    BUDGETS["tiny"], name="tiny_tuned", arms=ARMS, holdout=16,
    tune=(("train.lr", ("x0.5", "x1")),))


# ----------------------------------------------------------------------------- cells

@dataclass(frozen=True)
class Cell:
    framework: str
    arm: str  # base | ctl | sp
    backbone: str
    seed: int
    # the grid point, ((key, value as written), ...): a tuning cell's own, a final cell's pick
    # (() without a grid)
    point: tuple[tuple[str, str], ...] = ()
    tuning: bool = False

    @property
    def sp(self) -> bool:
        return self.arm != "base"

    @property
    def arm_name(self) -> str:
        """``byol_ctl``: the framework and arm, as in cell names."""
        return f"{self.framework}{ARM_SUFFIX[self.arm]}"

    @property
    def name(self) -> str:
        base = f"{self.arm_name}-{self.backbone}-s{self.seed}"
        return f"{base}-{point_tag(self.point)}" if self.tuning else base

    @property
    def pair(self) -> str:
        return f"{self.framework}-{self.backbone}-s{self.seed}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> "Cell":
        d = json.loads(text)
        d["point"] = tuple(tuple(p) for p in d.get("point", ()))
        return Cell(**d)


def point_tag(point: tuple[tuple[str, str], ...]) -> str:
    """``lrx2_schedx1.5``: a grid point in a cell name (letters, digits, ``.``, ``_``, ``-``)."""
    tag = "_".join(f"{SHORT.get(k, k.rsplit('.', 1)[-1])}{v}" for k, v in point) or "default"
    return re.sub(r"[^A-Za-z0-9._-]", "-", tag)


def parse_tune(specs: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``["train.lr=x0.5,x1,x2", ...]`` -> the grid; each key must be a config key and each
    value a number or ``x<number>``."""
    out = []
    flat = config_mod.flatten(config_mod.DEFAULTS)
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise UserError(f"--tune {spec!r}: expected KEY=V1,V2,... (e.g. train.lr=x0.5,x1,x2)")
        if key not in flat:
            raise UserError(f"--tune: unknown config key '{key}'")
        vals = tuple(v.strip() for v in values.split(",") if v.strip())
        for v in vals:
            try:
                float(v[1:] if v.startswith("x") else v)
            except ValueError:
                raise UserError(f"--tune {key}: value {v!r} is neither a number nor x<multiplier>") from None
        if len(set(vals)) != len(vals):
            raise UserError(f"--tune {key}: repeated values in {', '.join(vals)}")
        out.append((key, vals))
    if len({k for k, _ in out}) != len(out):
        raise UserError("--tune: a key is given twice")
    return tuple(out)


def grid_points(tune) -> list[tuple[tuple[str, str], ...]]:
    """Every point of the grid (the product of its values), the default point (every value
    ``x1``) first, then the first key varying slowest: a study stopped early has the
    default-vs-default comparison, and ties in a pick go to the default."""
    points: list[tuple[tuple[str, str], ...]] = [()]
    for key, values in tune:
        points = [(*p, (key, v)) for p in points for v in values]
    return sorted(points, key=lambda p: not is_default(p)) if tune else []


def is_default(point: tuple[tuple[str, str], ...]) -> bool:
    """Every value of the point is ``x1`` (the arm's own value)."""
    return all(v.strip() in ("x1", "x1.0") for _, v in point)


def arms_of(framework: str, budget: Budget) -> list[str]:
    """The budget's arms for a framework: no control where SP adds no views (SP_REUSES_VIEWS)."""
    return [a for a in budget.arms if not (a == "ctl" and framework in SP_REUSES_VIEWS)]


def grid(frameworks: list[str] = FRAMEWORKS, backbones: list[str] = BACKBONES, seeds: list[int] = SEEDS,
         budget: Budget | None = None) -> list[Cell]:
    """The final cells in study order: seed 0 of every framework's arms on the CNN, the
    ViT-S/16 pair, the further CNN seeds, then the ViT-Tiny cells (by seed); each framework's
    arms adjacent. Their ``point`` is () here: a budget with a grid fills in the picks
    (``with_picks``)."""
    arms = list(budget.arms) if budget else ["base", "sp"]

    def group(fws: list[str], backbone: str, seed: int) -> list[Cell]:
        return [Cell(fw, a, backbone, seed) for fw in fws for a in arms
                if not (a == "ctl" and budget is not None and fw in SP_REUSES_VIEWS)]

    out: list[Cell] = []
    first, rest = seeds[:1], seeds[1:]
    if "cnn" in backbones:
        out += [c for s in first for c in group(frameworks, "cnn", s)]
    if "vits16" in backbones:
        out += [c for s in first for c in group([f for f in frameworks if f in VITS16_FRAMEWORKS], "vits16", s)]
    if "cnn" in backbones:
        out += [c for s in rest for c in group(frameworks, "cnn", s)]
    if "vit_tiny" in backbones:
        out += [c for s in seeds for c in group(frameworks, "vit_tiny", s)]
    return out


def tuning_cells(frameworks: list[str], backbones: list[str], budget: Budget, results: Path | None = None,
                 tasks: list[str] = ALL_TASKS) -> list[Cell]:
    """Every tuning cell: per framework, per point of its grid (``framework_grid``: the
    budget's, widened where picks lay on an edge; the budget's alone without ``results``), its
    arms adjacent (so that an interrupted study has compared its arms on the same points)."""
    out = []
    for bb in backbones:
        for fw in frameworks:
            tune = framework_grid(fw, bb, results, budget, tasks)[0] if results is not None else budget.tune
            out += [Cell(fw, a, bb, budget.tune_seed, p, tuning=True) for p in grid_points(tune)
                    for a in arms_of(fw, budget)]
    return out


def parse_cell(name: str) -> Cell:
    """A final cell from its name (``byol_ctl-cnn-s1``)."""
    try:
        arm_name, backbone, seed = name.split("-")
        arm = next((a for a, s in ARM_SUFFIX.items() if s and arm_name.endswith(s)), "base")
        fw = arm_name[:len(arm_name) - len(ARM_SUFFIX[arm])]
        if fw not in FRAMEWORKS or backbone not in BACKBONES or not seed.startswith("s"):
            raise ValueError
        return Cell(fw, arm, backbone, int(seed[1:]))
    except ValueError:
        raise SystemExit(f"bad cell name '{name}' (expected <framework>[_sp|_ctl]-<backbone>-s<seed>, framework one "
                         f"of {', '.join(FRAMEWORKS)}, backbone one of {', '.join(BACKBONES)})") from None


# ----------------------------------------------------------------------------- configs

def presets_and_overrides(cell: Cell, budget: Budget, tasks: list[str]) -> tuple[list[str], list[str]]:
    """The presets and overrides of a cell, before its grid point."""
    if cell.backbone == "vits16":
        if cell.framework not in VITS16_FRAMEWORKS:
            raise ValueError(f"the vits16 cell is DINO's real preset only, not {cell.framework}")
        presets = [f"{cell.framework}_sp" if cell.sp else cell.framework]
        ov: list[str] = []
    else:  # as `spatialssl compare` builds them (experiments.framework_presets)
        demo = f"demo_{cell.framework}" if (config_mod.CONFIG_DIR / f"demo_{cell.framework}.yaml").exists() else "demo"
        presets = ([cell.framework] if (config_mod.CONFIG_DIR / f"{cell.framework}.yaml").exists() else []) + [demo]
        ov = [f"framework.name={cell.framework}"]
        if cell.backbone == "cnn":
            ov += VIT_ONLY.get(cell.framework, [])
    ov += [*BACKBONE_SETTINGS[cell.backbone], *budget.train[cell.backbone], *budget.eval,
           f"eval.tasks=[{','.join(tasks)}]", f"eval.seeds={budget.eval_seeds}",
           f"sp.enabled={str(cell.sp).lower()}", f"sp.targets={'shuffled' if cell.arm == 'ctl' else 'geometry'}",
           "views.local_flip=per_image", f"seed={cell.seed}", f"device={budget.device}", "train.progress=false",
           f"train.num_threads={budget.num_threads}"]
    if budget.holdout:
        ov.append(f"data.holdout={budget.holdout}")
    return presets, [*ov, *budget.extra]


def point_overrides(presets: list[str], ov: list[str], point) -> list[str]:
    """``key=value`` overrides of a grid point, multipliers resolved against the arm's own
    value (``train.schedule_steps`` 0 counts as ``train.steps``)."""
    if not point:
        return []
    cfg = config_mod.resolve(presets, ov, warn=False)
    out = []
    for key, v in point:
        if v.startswith("x"):
            own = config_mod.get(cfg, key)
            if key == "train.schedule_steps" and not own:
                own = cfg["train"]["steps"]
            value = float(v[1:]) * own
            value = int(round(value)) if isinstance(own, int) and not isinstance(own, bool) else float(f"{value:.6g}")
        else:
            value = float(v) if "." in v or "e" in v.lower() else int(v)
        out.append(f"{key}={value}")
    return out


def cell_config(cell: Cell, budget: Budget, runs: Path, tasks: list[str], extra: list[str] = ()) -> dict:
    """The resolved config of a cell: presets, then backbone settings, the budget, the arm,
    then its grid point."""
    presets, ov = presets_and_overrides(cell, budget, tasks)
    ov += point_overrides(presets, ov, cell.point)
    ov += [f"name={cell.name}", f"out_dir={run_dir(cell, budget, runs)}", *extra]
    return config_mod.resolve(presets, ov)


def run_dir(cell: Cell, budget: Budget, runs: Path) -> Path:
    """The cell's scratch run folder: the tuning seed's final cell of a tuned budget trains
    nothing of its own, it is its pick's tuning run."""
    if budget.tune and not cell.tuning and cell.seed == budget.tune_seed:
        return runs / TUNE_DIR / dataclasses.replace(cell, tuning=True).name
    return runs / (TUNE_DIR if cell.tuning else "") / cell.name


def results_dir(cell: Cell, results: Path) -> Path:
    return results / TUNE_DIR / cell.name if cell.tuning else results / cell.name


# ----------------------------------------------------------------------------- state

def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def cell_status(cell: Cell, results: Path, runs: Path, budget: Budget, tasks: list[str]) -> str:
    """``done`` (results complete for these tasks and this budget), ``failed`` (the worker
    raised: see cell.json and worker.log; ``--retry-failed`` runs it again), ``partial`` (a
    checkpoint or some results exist) or ``new``."""
    res = results_dir(cell, results)
    rec = read_json(res / "cell.json")
    if rec and rec.get("budget") != budget.name:
        raise SystemExit(f"{res} holds a cell run at budget '{rec.get('budget')}', not "
                         f"'{budget.name}': use another --results folder")
    need = set(budget.val_tasks) if cell.tuning else set(tasks)
    have = {p.stem for p in (res / (VAL_DIR if cell.tuning else "") / runfolder.EVALS).glob("*.json")}
    if rec.get("complete") and need <= have:
        return "done"
    if rec.get("failed"):
        return "failed"
    if (run_dir(cell, budget, runs) / runfolder.CHECKPOINT).exists() or rec:
        return "partial"
    return "new"


@dataclass
class Pick:
    """An arm's pick: its best grid point on validation, every point's score, edge flags."""

    point: tuple[tuple[str, str], ...]
    score: float
    scores: dict[str, float]  # point tag -> validation score
    edges: list[str]  # keys whose picked value is the lowest or highest of >= 3
    overrides: list[str]  # the resolved key=value of the pick
    edge_sides: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (key, "low" | "high")


def val_score(cell: Cell, results: Path, budget: Budget) -> float | None:
    """The tuning cell's validation score (``budget.pick``, mean over probe seeds), read only
    from an evaluation on the holdout split: a metrics file scored on any other split is an
    error, never a pick."""
    task, key = budget.pick
    p = results_dir(cell, results) / VAL_DIR / runfolder.EVALS / f"{task}.json"
    rec = read_json(p)
    if not rec:
        return None
    split = rec.get("eval_config", {}).get("split_test")
    held = rec.get("data_config", {}).get("holdout", 0)
    if split != HOLDOUT or not held:
        raise UserError(f"{p}: a tuning score must come from the validation split '{HOLDOUT}' carved from the "
                        f"training images (data.holdout > 0), but it was scored on split '{split}' with "
                        f"data.holdout={held}: picking on it would tune on the test data")
    v = rec.get("values", {}).get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _value(v: str) -> float:
    return float(v[1:] if v.startswith("x") else v)


def _pick_on(framework: str, arm: str, backbone: str, results: Path, budget: Budget, tasks: list[str], tune,
             runs: Path = Path("/nonexistent")) -> Pick | None:
    """The arm's best point of grid ``tune`` once every one of its cells is done (else None):
    the highest validation score, ties to the earlier point of the grid (the default first)."""
    cells = [Cell(framework, arm, backbone, budget.tune_seed, p, tuning=True) for p in grid_points(tune)]
    if not cells or any(cell_status(c, results, runs, budget, tasks) != "done" for c in cells):
        return None
    scores = {point_tag(c.point): val_score(c, results, budget) for c in cells}
    if any(v is None for v in scores.values()):
        return None
    best = max(cells, key=lambda c: (scores[point_tag(c.point)], -cells.index(c)))
    sides = []
    for key, values in tune:
        if len(values) >= 3:
            num = sorted(values, key=_value)
            v = dict(best.point)[key]
            if v in (num[0], num[-1]):
                sides.append((key, "low" if v == num[0] else "high"))
    presets, ov = presets_and_overrides(best, budget, tasks)
    return Pick(best.point, scores[point_tag(best.point)], scores, [k for k, _ in sides],
                point_overrides(presets, ov, best.point), sides)


def _extend(tune, sides: set[tuple[str, str]]):
    """``tune`` with one more value past each (key, side): the next value by the ratio of the two
    nearest (x0.5, x1, x2 -> x4 above, x0.25 below)."""
    out = []
    for key, values in tune:
        vals = list(values)
        num = sorted(vals, key=_value)
        mult = all(v.startswith("x") for v in vals)
        for side in ("low", "high"):
            if (key, side) in sides:
                a, b = (num[0], num[1]) if side == "low" else (num[-1], num[-2])
                new = _value(a) * _value(a) / _value(b)
                text = f"{'x' if mult else ''}{new:.6g}"
                if text not in vals:
                    vals.append(text)
        out.append((key, tuple(vals)))
    return tuple(out)


def framework_grid(framework: str, backbone: str, results: Path | None, budget: Budget, tasks: list[str]):
    """``(grid, settled)``: the framework's tuning grid, the budget's widened (at most
    ``budget.widen`` times) past every edge on which an arm's pick lay, the same for every arm;
    ``settled`` once every arm is done on it and no widening is due (only then do picks count)."""
    tune = budget.tune
    if results is None or not tune:
        return tune, False
    for n in range(budget.widen + 1):
        picks = [_pick_on(framework, a, backbone, results, budget, tasks, tune) for a in arms_of(framework, budget)]
        if any(p is None for p in picks):
            return tune, False
        sides = {s for p in picks for s in p.edge_sides}
        if not sides or n == budget.widen:
            return tune, True
        tune = _extend(tune, sides)
    return tune, True


def pick(framework: str, arm: str, backbone: str, results: Path, budget: Budget, tasks: list[str],
         runs: Path = Path("/nonexistent")) -> Pick | None:
    """The arm's pick once its framework's grid is settled (``framework_grid``: every arm done
    on it, no widening due), else None."""
    tune, settled = framework_grid(framework, backbone, results, budget, tasks)
    if not settled:
        return None
    return _pick_on(framework, arm, backbone, results, budget, tasks, tune, runs)


def with_picks(cells: list[Cell], results: Path, budget: Budget, tasks: list[str]) -> list[Cell]:
    """The final cells whose arm has its pick, each carrying it (all of them without a grid)."""
    if not budget.tune:
        return cells
    out, memo = [], {}
    for c in cells:
        k = (c.framework, c.arm, c.backbone)
        if k not in memo:
            memo[k] = pick(c.framework, c.arm, c.backbone, results, budget, tasks)
        if memo[k] is not None:
            out.append(dataclasses.replace(c, point=memo[k].point))
    return out


def waiting_finals(budget: Budget, frameworks, backbones, seeds, results: Path, tasks: list[str]) -> int:
    """How many final cells still wait for their arm's pick."""
    finals = grid(frameworks, backbones, seeds, budget)
    return len(finals) - len(with_picks(finals, results, budget, tasks))
