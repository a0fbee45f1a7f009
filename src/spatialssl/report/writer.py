"""``report.md`` and ``report.html`` (``write_report``) and the CLI's summary table."""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path

from .figures import plot_dense, plot_jigsaw, plot_losses, plot_metrics, plot_robustness
from .runs import Run, _finite, check_pairs, columns, read_runs
from .stats import FLOOR_NOTE
from .tables import MISMATCH, NO_TEST, detail_tables, html_table, markdown_table, table_rows

NOTE = ("Δ = (+ SP) − baseline, with its 95% interval in brackets; ✓ (SP better) or ✗ (SP worse) only "
        "where a paired bootstrap over the independent test units (1,000 resamples of the test images, "
        "the same for both runs; patch-pair's pairs are resampled with their image, all pairs of a drawn "
        "image together; with several evaluation seeds Δ is averaged over seeds in each resample and the "
        "interval widened by the t-interval of its between-seed spread) gives an interval that excludes 0, "
        "≈ where it does not. ↑: higher is better, ↓: lower is better; – : a diagnostic (no direction) or a "
        f"missing value; {NO_TEST}: no per-item outcomes of both runs, so no test and no mark; {MISMATCH}: the "
        "pair differs in more than SP (listed under Pairs), so no test; "
        f"{FLOOR_NOTE}: both runs at or below their random-init floor (at or above it where lower is "
        "better), so neither has learnt it; the verdict stays beside it (mCA / clean has no floor: an "
        "untrained network is as bad on clean as on corrupted images). ± is the standard deviation over "
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

    md = [f"# {title}", "", "## Runs", "", markdown_table(runs_header, runs_rows), ""]
    if pairs_rows:
        md += ["## Pairs", "", markdown_table(pairs_header, pairs_rows), ""]
    md += ["## Summary", "", NOTE, ""] + [w + "\n" for w in warnings]
    md += [markdown_table(header, rows) if rows else "(no metrics found)", ""] + [w + "\n" for w in why]
    md += ["## Figures", ""] + [f"**{cap}**\n\n![{cap}]({p.name})\n" for cap, p in figures]
    md += ["## All values by task", ""]
    for task, h, body in details:
        md += [f"### {task}", "", markdown_table(h, body), ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}.warn{color:#b00;font-weight:bold}")
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
         f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>",
         "<h2>Runs</h2>", html_table(runs_header, runs_rows)]
    if pairs_rows:
        h += ["<h2>Pairs</h2>", html_table(pairs_header, pairs_rows)]
    h += ["<h2>Summary</h2>", f"<p>{html.escape(NOTE)}</p>"]
    h += [f"<p class='warn'>{html.escape(w)}</p>" for w in warnings]
    h += [html_table(header, rows) if rows else "<p>(no metrics found)</p>"]
    h += [f"<p>{html.escape(w)}</p>" for w in why]
    h.append("<h2>Figures</h2>")
    h += [f"<figure><img src='{p.name}' alt='{html.escape(cap)}'><figcaption>{html.escape(cap)}</figcaption></figure>"
          for cap, p in figures]
    h.append("<h2>All values by task</h2>")
    for task, hh, body in details:
        h += [f"<details><summary>{html.escape(task)}</summary>", html_table(hh, body), "</details>"]
    h.append("</body></html>")
    (out / "report.html").write_text("\n".join(h))
    return md_path


def summary_table(run_dirs: list[str | Path], allow_mismatch: bool | Iterable[str] = False) -> str:
    """The key metrics of each run, side by side (Markdown), as the CLI prints it."""
    header, rows = table_rows(read_runs(run_dirs), allow_mismatch=allow_mismatch)
    if not rows:
        return "(no metrics found: run `spatialssl eval` first)"
    return markdown_table(header, rows)
