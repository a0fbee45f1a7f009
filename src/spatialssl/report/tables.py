"""The side-by-side tables: key metric rows (``KEY_METRICS``), cells (value ± std, Δ with its
interval and mark) and their Markdown / HTML rendering."""

from __future__ import annotations

import html
from collections.abc import Iterable

from ..evals import GROUPED
from ..evals import direction as metric_direction
from .runs import Run, _finite, check_pairs, columns
from ..evals import floor_meaningful
from .stats import FLOOR_NOTE, Test, at_floor, mark, paired_bootstrap

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
        return f"no {task}_outcomes.npz for " + " and ".join(r.label for r, o in ((base, a), (sp, b)) if o is None)
    try:
        return paired_bootstrap(a, b, key, grouped=task in GROUPED)
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        return f"{task}.{key}: {e}"


def _diff(a: float | None, b: float | None, sign: int, test: Test | str | None = None, mismatch: bool = False,
          floor: bool = False) -> str:
    """The Δ cell: SP minus baseline with its interval and mark ("+0.021 [+0.008, +0.034] ✓");
    "–" for a diagnostic or a missing / non-finite value; † (no test) or ‡ (not comparable)
    after a Δ that carries no mark; ``floor`` (both runs at or below their random-init floor):
    "≤ floor" before the mark (no floor for ``evals.NO_FLOOR`` metrics: mCA / clean)."""
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
            floor = floor_meaningful(task, key) and all(at_floor(sign, v, r.value(task, f"random_{key}")[0])
                                                        for v, r in ((a, base), (b, sp)))
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


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    rule = "|".join("---" if i == 0 else "---:" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", f"|{rule}|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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
