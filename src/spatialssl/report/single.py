"""One evaluated run on its own: a verdict per metric that a single run can read.

``spatialssl eval`` and ``spatialssl probe`` print this table and write it to
``metrics/summary.md``: each key metric (``tables.KEY_METRICS``) with its value (± std over
probe seeds), a 95% bootstrap interval over the test items (images for patch-pair; widened by
the probe seeds' spread: ``stats.interval``), the random-init floor, chance, the number of
test items, and the verdict: "above floor" when the interval clears the floor (below it for a
lower-is-better metric), "at floor" when it does not; "no floor" where the floor means nothing
(``evals.NO_FLOOR``); "–" for a diagnostic. A header names the data, image size and probe
sizes. The raw values stay in ``metrics/<task>.json``.
"""

from __future__ import annotations

from pathlib import Path

from .. import runfolder
from ..evals import GROUPED, floor_meaningful
from .runs import read_run
from .stats import interval
from .tables import ARROWS, KEY_METRICS, markdown_table

SUMMARY = "summary.md"  # metrics/summary.md
# the value a metric would have by chance, where the protocol records one
CHANCE = {("knn", "top1"): "chance", ("linear", "top1"): "chance", ("finegrained", "knn_top1"): "chance",
          ("finegrained", "linear_top1"): "chance", ("jigsaw", "tile_acc"): "chance_tile",
          ("jigsaw", "puzzle_acc"): "chance_puzzle", ("segmentation", "miou"): "majority_miou"}


def _f(v) -> str:
    return "–" if not isinstance(v, (int, float)) else (f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}")


def verdict(sign: int, lo: float | None, hi: float | None, floor: float | None, floor_ok: bool = True) -> str:
    """"above floor" / "at floor" from the interval and the floor; "no floor" / "–" otherwise."""
    if sign == 0:
        return "–"
    if not floor_ok:
        return "no floor"
    if floor is None or lo is None or hi is None:
        return "–"
    return "above floor" if (lo > floor if sign > 0 else hi < floor) else "at floor"


def table(run_dir: str | Path) -> tuple[list[str], list[str], list[list[str]]]:
    """(header lines, table header, rows) for a run folder's (or probe folder's) metrics."""
    run = read_run(run_dir)
    header = ["metric", "value", "95% interval", "random-init floor", "chance", "n", "verdict"]
    rows, first = [], None
    for task, key, label, sign in KEY_METRICS:
        rec = run.metrics.get(task)
        if not rec:
            continue
        first = first or rec
        v, s = run.value(task, key)
        if v is None:
            continue
        lo = hi = None
        outs = run.outcomes(task)
        if outs and sign != 0:
            try:
                t = interval(outs, key, grouped=task in GROUPED)
                lo, hi = t.lo, t.hi
            except (ValueError, RuntimeError, TypeError, KeyError):
                pass
        floor = run.value(task, f"random_{key}")[0]
        values = rec.get("values", {})
        chance = values.get(CHANCE.get((task, key), ""))
        rows.append([f"{label}{ARROWS.get(sign, '')}", _f(v) + (f" ± {s:.3f}" if s else ""),
                     "–" if lo is None else f"[{lo:.3f}, {hi:.3f}]", _f(floor), _f(chance),
                     str(rec.get("n_test") or "–"), verdict(sign, lo, hi, floor, floor_ok=floor_meaningful(task, key))])
    lines = []
    if first:
        e, d = first.get("eval_config", {}), first.get("data_config", {})
        where = d.get("root") or d.get("name", "?")
        if d.get("name") == "partsworld":
            where = f"PartsWorld ({d.get('background', 'scene')} background, {d.get('canvas_size')} px canvases)"
        lines = [f"Data: {where}; probe-train split '{e.get('split_train')}', test split '{e.get('split_test')}'; "
                 f"images at {e.get('img_size')} px; probe-train {e.get('n_train') or 'all'} / test "
                 f"{e.get('n_test') or 'all'} images; {first.get('seeds', 1)} probe seed(s).",
                 "Interval: 95% bootstrap over the test items (images for patch-pair), widened by the probe seeds' "
                 "spread. Verdict: 'above floor' when the interval clears the random-init floor, 'at floor' when not."]
    return lines, header, rows


def write(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, str]:
    """Write ``<out_dir or run_dir>/metrics/summary.md``; returns its path and the text."""
    lines, header, rows = table(run_dir)
    text = "\n".join([f"# {Path(run_dir).name}", "", *lines, "", markdown_table(header, rows), ""])
    path = Path(out_dir or run_dir) / runfolder.EVALS / SUMMARY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, text
