"""Reading run directories and pairing them: ``Run``, ``read_run(s)``, ``columns`` (baseline /
+ SP pairs by framework) and ``check_pairs`` (a pair must differ by SP alone)."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


from .. import config as config_mod
from ..errors import NotFound, UserError
from .. import runfolder
from ..runfolder import EVALS, read_config, read_curve


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
        ex = runfolder.read_items(self.path, task, "examples")  # a damaged file only costs a figure
        return ex if isinstance(ex, dict) else None

    def outcomes(self, task: str) -> list[dict] | None:
        """Per-seed outcomes ``[{key: outcome}]`` from ``metrics/<task>_outcomes.npz``, or None
        (absent or unreadable: the report then runs no test, it does not fail)."""
        if task not in self._outcomes:
            rec = runfolder.read_items(self.path, task, "outcomes")
            seeds = rec.get("seeds") if isinstance(rec, dict) else None
            self._outcomes[task] = seeds if isinstance(seeds, list) and seeds else None
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
    cfg = read_config(path) or {}
    curve = read_curve(path)
    metrics = {}
    for p in sorted((path / EVALS).glob("*.json")) if (path / EVALS).is_dir() else []:
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
    return config_mod.eval_data(d or {})


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


def _fix(base: Run, sp: Run) -> str:
    """The ``--set`` that makes the baseline train as its SP mate did, where the only config
    difference is one a user gets by default: the local flip policy (``views.local_flip: auto``
    gives the SP arm one flip per image and the baseline per-view flips)."""
    diff = [k for k, _, _ in _differ(base.config, sp.config, _defaults())
            if not k.startswith("sp.") and not config_mod.number_free(k) and k != "sp"]
    if diff == ["views.local_flip"]:
        want = sp.config.get("views", {}).get("local_flip")
        return (f": train '{base.path}' again with `--set views.local_flip={want}` (the SP arm's flips; "
                f"`spatialssl compare` pins them for both arms)")
    return ""


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
                            f"{'; '.join(refused)}{_fix(base, sp)} (a pair may differ in sp.* and keys that change no "
                            "number (config.NUMBER_FREE) only; `spatialssl report --allow-mismatch` (allow_mismatch=True) "
                            "reports such a pair without marks)")
        found[(id(base), id(sp))] = blocking
    return found
