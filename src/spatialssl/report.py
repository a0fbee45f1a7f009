"""Side-by-side reports of evaluated runs: ``report.md``, ``report.html`` and PNG plots.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (the
training curve: ``step``, ``loss_fw``, ``loss_sp``, ``sp_r2_dx/dy/ds``, ...) and, written
by ``evals.evaluate``, ``metrics/<task>.json`` (``values`` with the random-init floors
``random_<key>`` and supervised references ``supervised_<key>``, ``std`` over evaluation
seeds, ``eval_config``, ``step``, ``complete``) and ``metrics/<task>_outcomes.pt`` (per
test item outcomes of each metric, per evaluation seed, see ``metric_from_counts``), plus
optional ``metrics/<task>_examples.pt`` (example arrays for the figures).

Runs are paired by framework: a run without SP and one with SP of the same framework
become "baseline | + SP | difference" columns; other runs get a column each. A pair must
differ by SP alone: ``pair_differences`` lists any config key it differs in outside ``sp.*``
and the keys that change no number (``config.NUMBER_FREE``, the list the resume check and
the feature cache read too), and any difference in the eval settings and data of a task;
``write_report`` refuses such a pair unless ``allow_mismatch`` allows its differences (True:
any; or a list of keys such as ``["views.local_flip"]``); an allowed pair is marked NOT
COMPARABLE and its Δ left untested (CLI: ``spatialssl report --allow-mismatch``).

Significance (``paired_bootstrap``): Δ = SP − baseline gets ✓ (SP better) or ✗ (worse)
only when the 95% paired-bootstrap interval over the independent test units excludes 0
(Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13; paired resampling as
in Koehn, "Statistical Significance Tests for Machine Translation Evaluation", EMNLP 2004),
≈ when it does not; without per-item outcomes of both runs there is no test and no mark.
The units are the test images: items of one image (patch-pair's pairs, ``group`` in the
outcomes) are drawn together. A metric both runs score at or below their random-init floor
gets "≤ floor" instead of a mark. Which way a metric is better comes from the protocols'
declaration, ``evals.METRICS``.

>>> write_report(["runs/demo/byol", "runs/demo/byol_sp"], "runs/demo")
PosixPath('runs/demo/report.md')
"""

from __future__ import annotations

import functools
import html
import json
import math
from dataclasses import dataclass, field
from collections.abc import Iterable
from pathlib import Path

import torch
import yaml
from .errors import NotFound, UserError

from . import config as config_mod
from .evals import GROUPED
from .evals import direction as metric_direction

# (task, value key, label): the summary rows, each with its direction (+1 higher is better,
# -1 lower is better, 0 a diagnostic) from the protocols' one declaration, ``evals.METRICS``.
# Under each directional row the table adds the random-init floor (``random_<key>``) and the
# supervised reference (``supervised_<key>``) where a run has them.
_KEY_ROWS: list[tuple[str, str, str]] = [
    ("knn", "top1", "kNN top-1"),
    ("linear", "top1", "linear top-1"),
    ("patch_pair", "r2_dx", "patch-pair R² dx"),
    ("patch_pair", "r2_dy", "patch-pair R² dy"),
    ("patch_pair", "r2_ds", "patch-pair R² ds"),
    ("patch_pair", "train_r2_ds", "patch-pair R² ds (probe-train)"),
    ("finegrained", "knn_top1", "fine-grained kNN top-1"),
    ("finegrained", "linear_top1", "fine-grained linear top-1"),
    ("segmentation", "miou", "segmentation mIoU"),
    ("segmentation", "pixel_acc", "segmentation pixel acc."),
    ("depth", "rmse", "depth RMSE"),
    ("depth", "abs_rel", "depth AbsRel"),
    ("depth", "delta1", "depth δ<1.25"),
    ("robustness", "clean_top1", "clean top-1 (robustness subset)"),
    ("robustness", "mCA", "mean corruption acc. (mCA)"),
    ("robustness", "rel_mCA", "mCA / clean"),
    ("robustness", "ood_top1", "OOD split top-1"),
    ("jigsaw", "tile_acc", "jigsaw tile acc."),
    ("jigsaw", "puzzle_acc", "jigsaw puzzle acc."),
    ("jigsaw", "top1_original", "top-1 original"),
    ("jigsaw", "top1_shuffled", "top-1 shuffled"),
    ("jigsaw", "top1_reconstructed", "top-1 reconstructed"),
]
FLOORS = [("random_", "↳ random-init"), ("supervised_", "↳ supervised")]
ARROWS = {1: " ↑", -1: " ↓"}


def direction(task: str, key: str) -> int:
    """+1 (higher is better), -1 (lower is better) or 0 (a diagnostic, a setting, a floor or a
    key no protocol declares: never marked), as ``evals.METRICS`` declares it."""
    return metric_direction(task, key) or 0


KEY_METRICS: list[tuple[str, str, str, int]] = [(t, k, label, direction(t, k)) for t, k, label in _KEY_ROWS]


def at_floor(sign: int, value: float | None, floor: float | None) -> bool:
    """Whether ``value`` is no better than its random-init ``floor`` (at or below it; at or
    above it for a lower-is-better metric); False when either is missing."""
    if sign == 0 or value is None or floor is None:
        return False
    return value <= floor if sign > 0 else value >= floor


def _finite(v) -> float | None:
    """A finite float, or None (missing, a string, a bool, NaN or ±inf from an old file)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """One run directory, read."""

    path: Path
    name: str
    framework: str
    sp: bool
    config: dict = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)  # task -> metrics json

    label: str = ""  # column title: the directory name (parent/name where two runs share one)
    _outcomes: dict = field(default_factory=dict, repr=False)

    def value(self, task: str, key: str) -> tuple[float | None, float | None]:
        """(mean, std or None) of a metric, or (None, None) when absent or not finite."""
        rec = self.metrics.get(task)
        if not rec:
            return None, None
        v = _finite(rec.get("values", {}).get(key))
        if v is None:
            return None, None
        s = _finite((rec.get("std") or {}).get(key)) if (_finite(rec.get("seeds")) or 1) > 1 else None
        return v, s

    def examples(self, task: str) -> dict | None:
        p = self.path / "metrics" / f"{task}_examples.pt"
        if not p.exists():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception:  # a damaged example file only costs a figure
            return None

    def outcomes(self, task: str) -> list[dict] | None:
        """Per-seed outcomes ``[{key: outcome}]`` from ``metrics/<task>_outcomes.pt``, or None
        (absent or unreadable: the report then runs no test, it does not fail)."""
        if task not in self._outcomes:
            p = self.path / "metrics" / f"{task}_outcomes.pt"
            seeds = None
            if p.exists():
                try:
                    rec = torch.load(p, map_location="cpu", weights_only=True)
                    seeds = rec.get("seeds") if isinstance(rec, dict) else None
                    seeds = seeds if isinstance(seeds, list) and seeds else None
                except Exception:
                    seeds = None
            self._outcomes[task] = seeds
        return self._outcomes[task]

    @property
    def local_flip(self) -> str:
        return str(self.config.get("views", {}).get("local_flip", "?"))

    def incomplete(self) -> str | None:
        """"step 10 of 40" when the run (or the checkpoint its metrics come from) did not
        finish training; None when finished or when nothing says."""
        steps = _finite(self.config.get("train", {}).get("steps"))
        total = f" of {int(steps)}" if steps is not None else ""
        evaluated = [int(s) for s in (_finite(r.get("step")) for r in self.metrics.values()) if s is not None]
        logged = [int(s) for s in (_finite(row.get("step")) for row in self.curve) if s is not None]
        at = min(evaluated) if evaluated else (max(logged) if logged else None)
        where = f"step {at}{total}" if at is not None else f"no step recorded, not known to have finished{total}"
        if any(r.get("complete") is False for r in self.metrics.values()):
            return where
        if steps is not None and at is not None and at < steps:
            return where
        return None


def _read_json(p: Path) -> dict:
    try:
        rec = json.loads(p.read_text())  # json reads the bare NaN of old files as nan (shown as "–")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"metrics file {p} is not valid JSON: {e}") from None
    if not isinstance(rec, dict):
        raise UserError(f"metrics file {p} must hold a JSON object, got {type(rec).__name__}")
    return rec


def read_run(path: str | Path) -> Run:
    """Read a run directory (any of its files may be missing; the directory may not)."""
    path = Path(path)
    if not path.is_dir():
        raise NotFound(f"run folder '{path}' does not exist" if not path.exists()
                                else f"run folder '{path}' is not a directory")
    cfg: dict = {}
    if (path / "config.yaml").exists():
        try:
            cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path / 'config.yaml'} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(cfg, dict):
            raise UserError(f"{path / 'config.yaml'} must hold a mapping")
    curve = []
    if (path / "metrics.jsonl").exists():
        for line in (path / "metrics.jsonl").read_text().splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by an interrupted run
                    continue
                if isinstance(row, dict):
                    curve.append(row)
    metrics = {}
    for p in sorted((path / "metrics").glob("*.json")) if (path / "metrics").is_dir() else []:
        rec = _read_json(p)
        metrics[rec.get("task", p.stem)] = rec
    first = next(iter(metrics.values()), {})
    # a probed weights file (`spatialssl probe`) has an arch and no framework
    framework = cfg.get("framework", {}).get("name") or first.get("framework") or ("probe" if "arch" in first else "?")
    sp = bool(cfg.get("sp", {}).get("enabled", first.get("sp", False)))
    return Run(path, cfg.get("name") or path.name, framework, sp, cfg, curve, metrics, path.name)


def read_runs(run_dirs: list[str | Path]) -> list[Run]:
    """``read_run`` for each directory, with unique labels."""
    runs = [read_run(d) for d in run_dirs]
    names = [r.label for r in runs]
    for r in runs:
        if names.count(r.label) > 1:
            r.label = f"{r.path.parent.name}/{r.path.name}"
    return runs


# --------------------------------------------------------------------------- comparable pairs

EVAL_KEYS_IGNORED = {"tasks", "n_examples"}  # which tasks ran; how many example images the figures get


@functools.cache
def _defaults() -> dict:
    return config_mod.flatten(config_mod.resolve([], warn=False))


def _differ(a: dict, b: dict, defaults: dict | None = None) -> list[tuple[str, object, object]]:
    """(key, a's value, b's value) of each flattened key whose values differ; a key one side
    lacks counts as its ``defaults`` value (a config written before the key existed), else "(absent)"."""
    fa, fb, d = config_mod.flatten(a), config_mod.flatten(b), defaults or {}
    missing = object()
    out = []
    for k in sorted(set(fa) | set(fb)):
        x, y = fa.get(k, d.get(k, missing)), fb.get(k, d.get(k, missing))
        if x is missing or y is missing or not config_mod.same(x, y):
            out.append((k, "(absent)" if x is missing else x, "(absent)" if y is missing else y))
    return out


def _data_keys(d: dict | None) -> dict:
    return {k: v for k, v in (d or {}).items() if not config_mod.number_free(f"data.{k}")}


def pair_differences(base: Run, sp: Run) -> list[str]:
    """The settings in which a baseline / + SP pair differs beyond SP, as "key (baseline value
    vs SP value)": any config key outside ``sp.*`` and ``config.NUMBER_FREE`` (the keys that
    change no number), and, for each task both evaluated, the eval config, the eval data
    (``data_config``) and the test-set size."""
    fmt = "{} ({!r} vs {!r})".format
    out = [fmt(k, x, y) for k, x, y in _differ(base.config, sp.config, _defaults())
           if not k.startswith("sp.") and not config_mod.number_free(k) and k != "sp"]
    for task in sorted(set(base.metrics) & set(sp.metrics)):
        ea = {k: v for k, v in (base.metrics[task].get("eval_config") or {}).items() if k not in EVAL_KEYS_IGNORED}
        eb = {k: v for k, v in (sp.metrics[task].get("eval_config") or {}).items() if k not in EVAL_KEYS_IGNORED}
        out += [fmt(f"eval_config[{task}].{k}", x, y) for k, x, y in _differ(ea, eb)]
        da, db = base.metrics[task].get("data_config"), sp.metrics[task].get("data_config")
        if da is not None or db is not None:  # the data the evaluation read (may be overridden at eval time)
            out += [fmt(f"data_config[{task}].{k}", x, y) for k, x, y in _differ(_data_keys(da), _data_keys(db))]
        na, nb = base.metrics[task].get("n_test"), sp.metrics[task].get("n_test")
        if na is not None and nb is not None and na != nb:
            out.append(fmt(f"{task}.n_test", na, nb))
    return out


def columns(runs: list[Run]) -> list[tuple[Run, Run | None]]:
    """(baseline, + SP) pairs by framework, in order of first appearance; unpaired runs alone.
    Runs that differ by SP alone are paired first, so a run trained otherwise does not take
    another's comparable mate; what is left pairs by framework (and ``check_pairs`` refuses it)."""
    partner: dict[int, int] = {}
    for strict in (True, False):
        for i, r in enumerate(runs):
            if i in partner:
                continue
            for j, o in enumerate(runs):
                if j == i or j in partner or o.framework != r.framework or o.sp == r.sp:
                    continue
                base, sp = (r, o) if not r.sp else (o, r)
                if strict and pair_differences(base, sp):
                    continue
                partner[i], partner[j] = j, i
                break
    out: list[tuple[Run, Run | None]] = []
    for i, r in enumerate(runs):
        if i not in partner:
            out.append((r, None))
        elif partner[i] > i:
            o = runs[partner[i]]
            out.append((r, o) if not r.sp else (o, r))
    return out


def check_pairs(cols: list[tuple[Run, Run | None]], allow_mismatch: bool | Iterable[str] = False
                ) -> dict[tuple[int, int], list[str]]:
    """{(id(base), id(sp)): differences beyond SP} of each pair (``pair_differences``). Raises
    ValueError naming both runs and the keys when a pair differs in more than SP, unless
    ``allow_mismatch`` is True (any difference is then reported, its Δ without a mark) or
    names the keys (prefixes, e.g. ``["views.local_flip"]``) that may differ: those are
    reported so, any other still refused."""
    allowed = None if allow_mismatch is True else () if allow_mismatch is False else tuple(allow_mismatch)
    found = {}
    for base, sp in cols:
        if sp is None:
            continue
        blocking = pair_differences(base, sp)
        refused = [] if allowed is None else [d for d in blocking if not d.startswith(allowed)]
        if refused:
            raise UserError(f"runs '{base.path}' and '{sp.path}' are not comparable: they differ in "
                            f"{'; '.join(refused)} (a pair may differ in sp.* and keys that change no number "
                             "(config.NUMBER_FREE) only; `spatialssl report --allow-mismatch` (allow_mismatch=True) "
                             "reports such a pair without marks)")
        found[(id(base), id(sp))] = blocking
    return found


# --------------------------------------------------------------------------- significance

BOOT_REPLICATES = 1000
BOOT_SEED = 0
LEVEL = 0.95
KINDS = {"mean": ("x",), "r2": ("err2", "target"), "rmse": ("sq",), "miou": ("inter", "union")}


def _outcome(o, key: str) -> tuple[str, dict[str, torch.Tensor], torch.Tensor | None]:
    """Validated outcome: kind, float64 tensors of N items, and the group (image) of each item
    [N] or None (ValueError when malformed)."""
    if not isinstance(o, dict) or o.get("kind") not in KINDS:
        raise ValueError(f"outcome of '{key}' must be a dict with kind in {sorted(KINDS)}")
    arrs = {f: torch.as_tensor(o[f]).to(torch.float64) for f in KINDS[o["kind"]] if f in o}
    if len(arrs) != len(KINDS[o["kind"]]):
        raise ValueError(f"outcome of '{key}' ({o['kind']}) needs fields {KINDS[o['kind']]}")
    shapes = {tuple(a.shape) for a in arrs.values()}
    want = 2 if o["kind"] == "miou" else 1
    if len(shapes) != 1 or len(next(iter(shapes))) != want or next(iter(shapes))[0] == 0:
        raise ValueError(f"outcome of '{key}' ({o['kind']}) has fields of shapes {sorted(shapes)}")
    if o["kind"] == "r2":  # R^2 is invariant to a shift of the targets; centring avoids cancellation
        arrs["target"] = arrs["target"] - arrs["target"].mean()
    group = None
    if o.get("group") is not None:
        group = torch.as_tensor(o["group"]).to(torch.long)
        n = next(iter(shapes))[0]
        if group.shape != (n,):
            raise ValueError(f"outcome of '{key}': group of shape {tuple(group.shape)} for {n} items")
    return o["kind"], arrs, group


def metric_from_counts(kind: str, arrs: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """The metric of each bootstrap replicate, from item counts ``w`` [R, N] (how often each
    test item is drawn; all ones = the test set itself): [R].

    - ``mean``: mean of ``x`` [N] (e.g. 1 for a correct prediction): top-1, tile accuracy;
    - ``r2``: 1 - Σ err2 / Σ (target - mean target)², ``err2``, ``target`` [N];
    - ``rmse``: sqrt(mean of ``sq`` [N]);
    - ``miou``: mean over classes with Σ union > 0 of Σ inter / Σ union, ``inter``, ``union`` [N, C].
    NaN where a replicate leaves the metric undefined (no target variance, no class present)."""
    n = w.sum(1)
    if kind == "mean":
        return w @ arrs["x"] / n
    if kind == "rmse":
        return (w @ arrs["sq"] / n).sqrt()
    if kind == "r2":
        t = arrs["target"]
        sst = w @ (t * t) - (w @ t) ** 2 / n
        return torch.where(sst > 1e-12 * (w @ (t * t) + 1e-300), 1 - (w @ arrs["err2"]) / sst, torch.nan)
    inter, union = w @ arrs["inter"], w @ arrs["union"]  # [R, C]
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1e-300), 0.0)
    return torch.where(present.any(1), iou.sum(1) / present.sum(1).clamp_min(1), torch.nan)


@dataclass
class Test:
    """A paired test of Δ = SP − baseline: the Δ its outcomes give, and its ``LEVEL`` interval."""

    delta: float
    lo: float
    hi: float
    n_items: int  # independent units resampled: test items, or images where items are grouped
    n_seeds: int

    def mark(self, sign: int) -> str:
        return mark(self.lo, self.hi, sign)


FLOOR_NOTE = "≤ floor"  # in place of a mark: both runs no better than their random-init floor


def mark(lo: float, hi: float, sign: int, floor: bool = False) -> str:
    """The one marking rule: ✓ (SP better) or ✗ (SP worse) when the interval [lo, hi] of
    Δ = SP − baseline excludes 0, ≈ when it does not or the metric has no direction;
    ``FLOOR_NOTE`` instead of any mark when both runs are at or below their random-init
    floor (``floor``: ``at_floor`` of both; neither can be said to have learnt it)."""
    if floor:
        return FLOOR_NOTE
    if sign == 0 or not (lo > 0 or hi < 0):
        return "≈"
    return "✓" if (lo > 0) == (sign > 0) else "✗"


def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _draw_counts(seed: int, draw: int, n: int, r0: int, rc: int) -> torch.Tensor:
    """Item counts [rc, n] of replicates r0 .. r0 + rc: n indices drawn with replacement per
    replicate. A pure function of its arguments (its own generator), so every metric of a
    task, and both runs, see the same resamples."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + draw) * 1_000_003 + n) * 1_000_003 + r0)
    idx = torch.randint(n, (rc, n), generator=g) + torch.arange(rc)[:, None] * n
    return torch.bincount(idx.flatten(), minlength=rc * n).view(rc, n).to(torch.float64)


_cached_counts = functools.lru_cache(maxsize=8)(_draw_counts)  # a task's many metrics share one draw


def _counts(seed: int, draw: int, n: int, r0: int, rc: int, replicates: int) -> torch.Tensor:
    small = replicates * n <= 8 << 20  # all chunks of a draw fit the cache (8 x 8 MB at most)
    return (_cached_counts if small else _draw_counts)(seed, draw, n, r0, rc)


def paired_bootstrap(base: list[dict], sp: list[dict], key: str, replicates: int = BOOT_REPLICATES,
                     seed: int = BOOT_SEED, level: float = LEVEL, chunk: int = 1 << 20,
                     grouped: bool = False) -> Test:
    """Paired bootstrap over the independent test units of Δ = metric(SP) − metric(baseline) for ``key``.

    ``base``, ``sp``: per-seed outcome dicts (``metrics/<task>_outcomes.pt``'s "seeds"); seed i
    of one run is paired with seed i of the other (same test items, same order). The units
    resampled are the items, or, where the outcomes carry ``group`` [N] (the image of each
    item: patch-pair pairs), the groups: all items of a drawn image come together, as the
    pairs of one image are not independent (resampling them one by one shrinks the interval
    by up to sqrt(pairs per image)). ``grouped``: the outcomes must carry ``group``
    (ValueError otherwise). Each replicate draws U unit indices with replacement once and
    applies them to both runs (and to every seed, when all seeds have the same U), so what
    the two runs share cancels; Δ of a replicate is the mean over seeds of the per-seed Δ.
    The percentile interval of the replicates is then widened, in quadrature on each side,
    by the t-interval of the mean of the per-seed Δ (between-seed spread: the probe's own
    randomness, which resampling items does not see). Vectorised: unit counts [R, U] spread
    to item weights [R, N] times the per-item outcomes, ``chunk`` weights at a time.
    Raises ValueError when the outcomes cannot be paired (kind, N or groups differ, key missing)."""
    n_seeds = min(len(base), len(sp))
    if n_seeds == 0:
        raise UserError("no evaluation seed with outcomes in both runs")
    pairs = []
    for s in range(n_seeds):
        if key not in base[s] or key not in sp[s]:
            raise UserError(f"no outcome of '{key}' for seed {s} of both runs")
        (ka, a, ga), (kb, b, gb) = _outcome(base[s][key], key), _outcome(sp[s][key], key)
        if ka != kb or any(a[f].shape != b[f].shape for f in a):
            raise UserError(f"outcomes of '{key}' differ in kind or item count for seed {s}")
        if ga is not None and gb is not None and not torch.equal(ga, gb):
            raise UserError(f"outcomes of '{key}' group their items into other images for seed {s}")
        group = ga if ga is not None else gb
        if grouped and group is None:
            raise UserError(f"outcomes of '{key}' carry no image of each item (group): evaluated before "
                             "items were resampled by image; evaluate again")
        # unit of each item: 0..U-1 (its group's rank), or the item itself
        unit = torch.unique(group, return_inverse=True)[1] if group is not None else None
        pairs.append((ka, a, b, unit))
    ns = [next(iter(a.values())).shape[0] for _, a, _, _ in pairs]
    us = [int(u.max()) + 1 if u is not None else n for (_, _, _, u), n in zip(pairs, ns)]
    full = [float(metric_from_counts(k, b, torch.ones(1, n, dtype=torch.float64))
                  - metric_from_counts(k, a, torch.ones(1, n, dtype=torch.float64)))
            for (k, a, b, _), n in zip(pairs, ns)]
    delta = sum(full) / n_seeds
    if not math.isfinite(delta):
        raise ValueError(f"'{key}' is undefined on the test items")
    shared = len(set(us)) == 1
    reps = []
    per = max(1, min(replicates, chunk // max(ns)))
    for r0 in range(0, replicates, per):
        rc = min(per, replicates - r0)
        acc = torch.zeros(rc, dtype=torch.float64)
        for s, ((k, a, b, unit), u) in enumerate(zip(pairs, us)):
            w = _counts(seed, 0 if shared else s, u, r0, rc, replicates)
            if unit is not None:
                w = w[:, unit]  # each item weighs as often as its image was drawn
            acc += metric_from_counts(k, b, w) - metric_from_counts(k, a, w)
        reps.append(acc / n_seeds)
    d = torch.cat(reps)
    if torch.isnan(d).float().mean() > 0.05:
        raise ValueError(f"'{key}' is undefined on more than 5% of the bootstrap resamples")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = (float(v) for v in torch.nanquantile(d, q))
    if n_seeds > 1:
        sd = torch.tensor(full, dtype=torch.float64).std().item()
        h = _t_quantile((1 + level) / 2, n_seeds - 1) * sd / math.sqrt(n_seeds)
        lo, hi = delta - math.hypot(delta - lo, h), delta + math.hypot(hi - delta, h)
    return Test(delta, lo, hi, us[0], n_seeds)


# --------------------------------------------------------------------------- tables

NO_TEST = "†"  # Δ without a test: no per-item outcomes of both runs (or they cannot be paired)
MISMATCH = "‡"  # Δ of a pair that differs in more than SP (allow_mismatch): not tested


def _fmt(v: float | None, s: float | None = None, count: bool = False) -> str:
    """A value (± its std over seeds); ``count``: a diagnostic row, where an integral value is a
    count (n_test, k) and is shown without decimals."""
    v = _finite(v)
    if v is None:
        return "–"
    s = _finite(s)
    if count and v.is_integer() and not s:
        return f"{int(v)}" if s is None else f"{int(v)} ± 0"
    text = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return f"{text} ± {s:.3f}" if s is not None else text


def _test(base: Run, sp: Run, task: str, key: str) -> Test | str:
    """The paired test of a metric, or the reason there is none."""
    a, b = base.outcomes(task), sp.outcomes(task)
    if a is None or b is None:
        return f"no {task}_outcomes.pt for " + " and ".join(r.label for r, o in ((base, a), (sp, b)) if o is None)
    try:
        return paired_bootstrap(a, b, key, grouped=task in GROUPED)
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        return f"{task}.{key}: {e}"


def _diff(a: float | None, b: float | None, sign: int, test: Test | str | None = None, mismatch: bool = False,
          floor: bool = False) -> str:
    """The Δ cell: SP minus baseline with its interval and mark ("+0.021 [+0.008, +0.034] ✓");
    "–" for a diagnostic or a missing / non-finite value; † (no test) or ‡ (not comparable)
    after a Δ that carries no mark; ``floor`` (both runs at or below their random-init floor):
    "≤ floor" in place of the mark."""
    a, b = _finite(a), _finite(b)
    if a is None or b is None or sign == 0:
        return "–"
    d = b - a
    note = f" {FLOOR_NOTE}" if floor else ""
    if mismatch:
        return f"{d:+.3f} {MISMATCH}{note}"
    if not isinstance(test, Test):
        return f"{d:+.3f} {NO_TEST}{note}"
    return f"{d:+.3f} [{test.lo:+.3f}, {test.hi:+.3f}] {mark(test.lo, test.hi, sign, floor)}"


def _header(runs_cols, mismatched) -> list[str]:
    header = ["metric"]
    for base, sp in runs_cols:
        labels = [_col_label(base)] if sp is None else [_col_label(base), _col_label(sp)]
        header += labels
        if sp is not None:
            header.append("Δ (SP − base)" + (" ⚠ NOT COMPARABLE" if mismatched.get((id(base), id(sp))) else ""))
    return header


def _col_label(r: Run) -> str:
    inc = r.incomplete()
    return r.label if inc is None else f"{r.label} ⚠ INCOMPLETE ({inc})"


def table_rows(runs: list[Run], rows: list[tuple[str, str, str, int]] | None = None,
               allow_mismatch: bool | Iterable[str] = False,
               floors: bool = True, tests: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table (rows where no run has a value are left out).

    Under each directional row, ``floors`` adds "↳ random-init" and "↳ supervised" rows with
    each run's ``random_<key>`` / ``supervised_<key>`` where any run has one. ``tests``, when
    given, collects {(pair labels, task, key): Test or reason} of each Δ cell."""
    rows = KEY_METRICS if rows is None else rows
    cols = columns(runs)
    mismatched = check_pairs(cols, allow_mismatch)
    out = []

    def line(task, key, label, sign, compare):
        cells, seen = [label], False
        for base, sp in cols:
            a, sa = base.value(task, key)
            seen |= a is not None
            if sp is None:
                cells.append(_fmt(a, sa, sign == 0))
                continue
            b, sb = sp.value(task, key)
            seen |= b is not None
            mis = bool(mismatched.get((id(base), id(sp))))
            test = None
            if compare and sign != 0 and a is not None and b is not None and not mis:
                test = _test(base, sp, task, key)
                if tests is not None:
                    tests[(base.label, sp.label, task, key)] = test
            floor = all(at_floor(sign, v, r.value(task, f"random_{key}")[0]) for v, r in ((a, base), (b, sp)))
            cells += [_fmt(a, sa, sign == 0), _fmt(b, sb, sign == 0),
                      _diff(a, b, sign, test, mis, floor) if compare else "–"]
        return cells if seen else None

    for task, key, label, sign in rows:
        arrow = ARROWS.get(sign, "")
        main = line(task, key, f"{label}{arrow}", sign, True)
        if main is None:
            continue
        out.append(main)
        if floors and sign != 0:
            for prefix, name in FLOORS:
                extra = line(task, prefix + key, name, 0, False)
                if extra is not None:
                    out.append(extra)
    return _header(cols, mismatched), out


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    rule = "|".join("---" if i == 0 else "---:" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", f"|{rule}|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_table(run_dirs: list[str | Path], allow_mismatch: bool | Iterable[str] = False) -> str:
    """The key metrics of each run, side by side (Markdown), as the CLI prints it."""
    header, rows = table_rows(read_runs(run_dirs), allow_mismatch=allow_mismatch)
    if not rows:
        return "(no metrics found: run `spatialssl eval` first)"
    return _markdown(header, rows)


def detail_tables(runs: list[Run], allow_mismatch: bool | Iterable[str] = False, tests: dict | None = None
                  ) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every numeric value of every task, one table per task: (task, header, rows); Δ marked
    only on keys with a direction (``direction``: ``evals.METRICS``), "–" on any other."""
    out = []
    for task in sorted({t for r in runs for t in r.metrics}):
        keys: list[str] = []
        for r in runs:
            for k, v in (r.metrics.get(task, {}).get("values") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                    keys.append(k)
        rows = [(task, k, k, direction(task, k)) for k in keys]
        header, body = table_rows(runs, rows, allow_mismatch, floors=False, tests=tests)
        skipped = [f"{r.label}: {r.metrics[task]['values']['skipped']}" for r in runs
                   if "skipped" in (r.metrics.get(task, {}).get("values") or {})]
        if skipped:
            body.append(["skipped"] + ["; ".join(skipped)] + [""] * (len(header) - 2))
        out.append((task, header, body))
    return out


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_losses(runs: list[Run], path: Path) -> Path | None:
    """Framework loss and SP loss (and SP's R² per component) against the step."""
    runs = [r for r in runs if r.curve]
    if not runs:
        return None
    has_sp = any("loss_sp" in row for r in runs for row in r.curve)
    n = 3 if has_sp else 1
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    for i, r in enumerate(runs):
        for ax, key in zip(axes[0], ["loss_fw", "loss_sp", "sp_r2_ds"][:n]):
            pts = [(row["step"], row[key]) for row in r.curve if key in row and row[key] is not None]
            if pts:
                ax.plot(*zip(*pts), label=r.label, lw=1.2, color=f"C{i}")  # one colour per run in every panel
    titles = ["framework loss", "SP loss", "SP R² ds (training batches)"]
    for ax, t in zip(axes[0], titles):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, path)


def plot_metrics(runs: list[Run], path: Path) -> Path | None:
    """Bars of the key metrics, one panel per task, one bar per run."""
    tasks = [t for t in dict.fromkeys(k[0] for k in KEY_METRICS) if any(t in r.metrics for r in runs)]
    panels = []
    for t in tasks:
        rows = [(key, label, sign) for task, key, label, sign in KEY_METRICS
                if task == t and sign != 0 and any(r.value(t, key)[0] is not None for r in runs)]
        if rows:
            panels.append((t, rows))
    if not panels:
        return None
    plt = _plt()
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.2 * nrow), squeeze=False)
    width = 0.8 / len(runs)
    for ax, (t, rows) in zip(axes.flat, panels):
        for i, r in enumerate(runs):
            vals = [r.value(t, key) for key, _, _ in rows]
            xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(rows))]
            err = [s or 0.0 for _, s in vals] if any(s for _, s in vals) else None  # spread over seeds
            ax.bar(xs, [v if v is not None else 0.0 for v, _ in vals], width, yerr=err, label=r.label,
                   capsize=2, color=f"C{i}")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([lab.replace(t.replace("_", "-") + " ", "").replace(f"{t} ", "") for _, lab, _ in rows],
                           rotation=25, ha="right", fontsize=7)
        ax.set_title(t, fontsize=10)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    return _save(fig, path)


def plot_robustness(runs: list[Run], path: Path) -> Path | None:
    """Accuracy against severity (mean over corruptions; 0 = clean), and per corruption."""
    runs = [r for r in runs if "robustness" in r.metrics and "clean_top1" in r.metrics["robustness"]["values"]]
    if not runs:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    names: list[str] = []
    for r in runs:
        v = r.metrics["robustness"]["values"]
        sevs = sorted(int(k[5:]) for k in v if k.startswith("acc_s") and k[5:].isdigit())
        (line,) = a1.plot(sevs, [v[f"acc_s{s}"] for s in sevs], marker="o", label=r.label)
        if "ood_top1" in v:
            a1.scatter([6], [v["ood_top1"]], marker="*", s=90, color=line.get_color())
        names += [c for c in v.get("corruptions", []) if c not in names]
    a1.set_xticks(range(7))
    a1.set_xticklabels(["clean", "1", "2", "3", "4", "5", "OOD"])
    a1.set_xlabel("corruption severity (mean over corruptions); ★: OOD split")
    a1.set_ylabel("linear-probe top-1")
    a1.set_title("accuracy by severity", fontsize=10)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        v = r.metrics["robustness"]["values"]
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(names))]
        a2.bar(xs, [v.get(f"acc_{c}", 0.0) for c in names], width, label=r.label)
    a2.set_xticks(range(len(names)))
    a2.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
    a2.set_title("accuracy per corruption (mean over severities)", fontsize=10)
    a2.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _rgb(img: torch.Tensor):
    return img.permute(1, 2, 0).numpy()


def plot_jigsaw(runs: list[Run], path: Path, k: int = 4) -> Path | None:
    """Original, shuffled and reconstructed images per run; wrong tiles outlined in red."""
    ex = [(r, r.examples("jigsaw")) for r in runs]
    ex = [(r, e) for r, e in ex if e]
    if not ex:
        return None
    k = min(k, *(len(e["original"]) for _, e in ex))
    plt = _plt()
    cols = ["original", "shuffled", "reconstructed"]
    fig, axes = plt.subplots(k, 3 * len(ex), figsize=(1.6 * 3 * len(ex), 1.7 * k), squeeze=False)
    from matplotlib.patches import Rectangle

    for ri, (r, e) in enumerate(ex):
        n = int(e["n"])
        for i in range(k):
            for ci, c in enumerate(cols):
                ax = axes[i, 3 * ri + ci]
                img = e[c][i]
                ax.imshow(_rgb(img))
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{r.label}\n{c}" if ci == 0 else c, fontsize=7)
                if c == "reconstructed":
                    t = img.shape[-1] / n
                    for s, ok in enumerate(e["correct"][i].tolist()):
                        if not ok:
                            ax.add_patch(Rectangle(((s % n) * t - 0.5, (s // n) * t - 0.5), t, t, fill=False,
                                                   edgecolor="red", lw=1.2))
    return _save(fig, path)


def plot_dense(runs: list[Run], task: str, path: Path, k: int = 4) -> Path | None:
    """Image, ground truth and each run's prediction, for segmentation or depth."""
    ex = [(r, r.examples(task)) for r in runs]
    ex = [(r, e) for r, e in ex if e]
    if not ex:
        return None
    k = min(k, *(len(e["images"]) for _, e in ex))
    plt = _plt()
    first = ex[0][1]
    ncol = 2 + len(ex)
    fig, axes = plt.subplots(k, ncol, figsize=(1.9 * ncol, 1.9 * k), squeeze=False)
    if task == "segmentation":
        n_cls = max(int(e["target"].max()) for _, e in ex) + 1
        n_cls = max(n_cls, max(int(e["pred"].max()) for _, e in ex) + 1)
        kw = {"cmap": "tab20", "vmin": 0, "vmax": max(n_cls - 1, 1), "interpolation": "nearest"}
    else:
        valid = first["valid"][:k]
        lo, hi = float(first["target"][:k][valid].min()), float(first["target"][:k][valid].max())
        kw = {"cmap": "magma_r", "vmin": lo, "vmax": hi}

    def show(ax, x, title, i):
        x = x.numpy() if isinstance(x, torch.Tensor) else x
        ax.imshow(x, **kw) if x.ndim == 2 else ax.imshow(x)
        ax.set_xticks([])
        ax.set_yticks([])
        if i == 0:
            ax.set_title(title, fontsize=8)

    for i in range(k):
        show(axes[i, 0], _rgb(first["images"][i]), "image", i)
        tgt = first["target"][i].float()
        if task == "depth":
            tgt = torch.where(first["valid"][i], tgt, torch.nan)
        show(axes[i, 1], tgt, "ground truth", i)
        for j, (r, e) in enumerate(ex):
            pred = e["pred"][i].float()
            if task == "depth":
                pred = torch.where(e["valid"][i], pred, torch.nan)
            show(axes[i, 2 + j], pred, r.label, i)
    return _save(fig, path)


# --------------------------------------------------------------------------- the report

NOTE = ("Δ = (+ SP) − baseline, with its 95% interval in brackets; ✓ (SP better) or ✗ (SP worse) only "
        "where a paired bootstrap over the independent test units (1,000 resamples of the test images, "
        "the same for both runs; patch-pair's pairs are resampled with their image, all pairs of a drawn "
        "image together; with several evaluation seeds Δ is averaged over seeds in each resample and the "
        "interval widened by the t-interval of its between-seed spread) gives an interval that excludes 0, "
        "≈ where it does not. ↑: higher is better, ↓: lower is better; – : a diagnostic (no direction) or a "
        f"missing value; {NO_TEST}: no per-item outcomes of both runs, so no test and no mark; {MISMATCH}: the "
        "pair differs in more than SP (listed under Pairs), so no test; "
        f"{FLOOR_NOTE}: both runs at or below their random-init floor (at or above it where lower is "
        "better), so no mark whatever the interval. ± is the standard deviation over "
        "evaluation seeds. ↳ random-init: the same protocol on a randomly initialised backbone of the same "
        "architecture; ↳ supervised: the same backbone trained on the labels. No mark covers the spread "
        "over pretraining seeds. See docs/evaluations.md for what each number means.")


def _pairs_section(cols, mismatched) -> tuple[list[str], list[list[str]]]:
    header = ["pair (baseline / + SP)", "local-view flip (baseline / + SP)", "differs in more than SP"]
    rows = []
    for base, sp in cols:
        if sp is None:
            continue
        differs = mismatched.get((id(base), id(sp)))
        diff = "⚠ NOT COMPARABLE: " + "; ".join(differs) if differs else "no (SP alone)"
        rows.append([f"{base.label} / {sp.label}", f"{base.local_flip} / {sp.local_flip}", diff])
    return header, rows


def _runs_section(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "framework", "SP", "steps", "status", "backbone", "local-view flip", "eval seeds", "directory"]
    rows = []
    for r in runs:
        seeds = sorted({int(s) for s in (_finite(m.get("seeds")) or 1 for m in r.metrics.values())})
        inc = r.incomplete()
        probed = next((m["arch"] for m in r.metrics.values() if m.get("arch")), None)
        rows.append([r.label, r.framework, "–" if probed else "yes" if r.sp else "no",
                     str(r.config.get("train", {}).get("steps", "–" if probed else "?")),
                     f"⚠ INCOMPLETE: {inc}" if inc else "complete",
                     str(r.config.get("backbone", {}).get("name", probed or "?")), r.local_flip,
                     "/".join(map(str, seeds)) or "–", str(r.path)])
    return header, rows


def _warnings(runs: list[Run], cols, mismatched) -> list[str]:
    out = [f"⚠ {r.label} is incomplete: {r.incomplete()} (its numbers are not those of the finished run)."
           for r in runs if r.incomplete()]
    for base, sp in cols:
        if sp is not None and mismatched.get((id(base), id(sp))):
            out.append(f"⚠ {base.label} and {sp.label} are NOT COMPARABLE: they differ in "
                       f"{'; '.join(mismatched[(id(base), id(sp))])}; their Δ is not tested.")
    return out


def write_report(run_dirs: list[str | Path], out_dir: str | Path, title: str = "spatialssl report",
                 allow_mismatch: bool | Iterable[str] = False) -> Path:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``out_dir``; returns the .md path.

    Raises FileNotFoundError for a run folder that does not exist, and ValueError for a pair
    that differs in more than SP (``pair_differences``) unless ``allow_mismatch`` allows it
    (True, or the keys that may differ: see ``check_pairs``); such a pair is marked NOT
    COMPARABLE and its Δ left untested."""
    runs = read_runs(run_dirs)
    cols = columns(runs)
    mismatched = check_pairs(cols, allow_mismatch)  # refuse before writing anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        ("Training curves", plot_losses(runs, out / "loss_curves.png")),
        ("Key metrics", plot_metrics(runs, out / "metrics.png")),
        ("Robustness by severity and corruption", plot_robustness(runs, out / "robustness.png")),
        ("Jigsaw: original, shuffled, reconstructed (red: tiles put in a wrong slot)",
         plot_jigsaw(runs, out / "jigsaw_examples.png")),
        ("Segmentation: prediction beside ground truth",
         plot_dense(runs, "segmentation", out / "segmentation_examples.png")),
        ("Depth: prediction beside ground truth (white: no valid depth)",
         plot_dense(runs, "depth", out / "depth_examples.png")),
    ]
    figures = [(cap, p) for cap, p in figures if p is not None]
    tests: dict = {}
    header, rows = table_rows(runs, allow_mismatch=allow_mismatch, tests=tests)
    details = detail_tables(runs, allow_mismatch, tests)
    runs_header, runs_rows = _runs_section(runs)
    pairs_header, pairs_rows = _pairs_section(cols, mismatched)
    warnings = _warnings(runs, cols, mismatched)
    untested = sorted({why for why in tests.values() if isinstance(why, str)})
    more = f"; and {len(untested) - 8} more" if len(untested) > 8 else ""
    why = [f"{NO_TEST} no test: " + "; ".join(untested[:8]) + more] if untested else []

    md = [f"# {title}", "", "## Runs", "", _markdown(runs_header, runs_rows), ""]
    if pairs_rows:
        md += ["## Pairs", "", _markdown(pairs_header, pairs_rows), ""]
    md += ["## Summary", "", NOTE, ""] + [w + "\n" for w in warnings]
    md += [_markdown(header, rows) if rows else "(no metrics found)", ""] + [w + "\n" for w in why]
    md += ["## Figures", ""] + [f"**{cap}**\n\n![{cap}]({p.name})\n" for cap, p in figures]
    md += ["## All values by task", ""]
    for task, h, body in details:
        md += [f"### {task}", "", _markdown(h, body), ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}.warn{color:#b00;font-weight:bold}")
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
         f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>",
         "<h2>Runs</h2>", _html_table(runs_header, runs_rows)]
    if pairs_rows:
        h += ["<h2>Pairs</h2>", _html_table(pairs_header, pairs_rows)]
    h += ["<h2>Summary</h2>", f"<p>{html.escape(NOTE)}</p>"]
    h += [f"<p class='warn'>{html.escape(w)}</p>" for w in warnings]
    h += [_html_table(header, rows) if rows else "<p>(no metrics found)</p>"]
    h += [f"<p>{html.escape(w)}</p>" for w in why]
    h.append("<h2>Figures</h2>")
    h += [f"<figure><img src='{p.name}' alt='{html.escape(cap)}'><figcaption>{html.escape(cap)}</figcaption></figure>"
          for cap, p in figures]
    h.append("<h2>All values by task</h2>")
    for task, hh, body in details:
        h += [f"<details><summary>{html.escape(task)}</summary>", _html_table(hh, body), "</details>"]
    h.append("</body></html>")
    (out / "report.html").write_text("\n".join(h))
    return md_path
