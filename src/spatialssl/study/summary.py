"""The study's tables and figure, from the committed cells' small files alone.

``summary.md``: the tuning (every grid point's validation score per arm, the picks, picks on
a grid's edge flagged), default vs default (the tuning seed at the presets' values, test
split), best vs best (each arm at its pick: mean ± std over pretraining seeds of every key
metric, base / control / + SP, SP's Δ against the *better* of base and control, paired by
seed and marked by a paired t-test; how many marks survive a Holm correction), and each
pair's provenance (device, CPU, versions, commit; a pair whose arms differ is flagged).
``summary.png``: the key rows seed by seed. ``report/``: ``spatialssl report`` over the
complete seed-0 pairs. ``readme_table``: the rows README.md shows, printed by
``spatialssl compare --readme-table`` (a test holds README to it).

Marks (``verdict``): ✓ SP better / ✗ SP worse where the paired t-test over seeds gives
p < 0.05, ≈ where not. Where both arms sit at or below their random-init floor the cell says
so *and* keeps the verdict ("≤ floor; ✗ p 0.023"); a metric whose floor means nothing
(``evals.NO_FLOOR``: mCA / clean) is never floored, and says so.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ..evals import floor_meaningful
from .plan import (ARM_LABEL, BACKBONES, Budget, Cell, arms_of, cell_status, grid, grid_points, is_default,
                   pick, point_overrides, point_tag, presets_and_overrides, read_json, results_dir, with_picks)
from .worker import read_card

ALPHA = 0.05
FIGURE_METRICS = ["kNN top-1", "linear top-1", "patch-pair R² dx", "patch-pair R² ds", "segmentation mIoU",
                  "depth RMSE", "mean corruption acc. (mCA)", "jigsaw tile acc."]
CURVE_ROWS = [("teacher_entropy", "teacher entropy, per sample (end of training)", 0),
              ("teacher_mean_entropy", "teacher entropy, batch mean (end of training)", 0),
              ("rankme", "RankMe of the embeddings (end of training)", 1)]
# the rows README.md's table shows (labels of report.KEY_METRICS)
README_ROWS = ["kNN top-1", "linear top-1", "patch-pair R² dx", "patch-pair R² dy", "patch-pair R² ds",
               "fine-grained kNN top-1", "segmentation mIoU", "depth RMSE", "mean corruption acc. (mCA)",
               "mCA / clean", "OOD split top-1", "jigsaw tile acc."]
PROVENANCE_KEYS = ("device", "cpu", "cpu_flags", "torch", "torchvision", "timm", "lightly", "commit")


# ----------------------------------------------------------------------------- statistics

def paired_t(d: list[float]) -> tuple[float, float, float, float]:
    """Mean, std, two-sided p and 95% half-width of a paired t-test of the differences ``d``
    (two or more)."""
    from scipy import stats

    m, sd = statistics.fmean(d), statistics.stdev(d)
    if sd == 0:
        return m, 0.0, (0.0 if m else 1.0), 0.0
    se = sd / math.sqrt(len(d))
    return m, sd, float(stats.t.sf(abs(m) / se, len(d) - 1) * 2), float(stats.t.ppf(0.975, len(d) - 1)) * se


def holm(pvalues: list[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down correction: which of ``pvalues`` stay significant at family-wise
    ``alpha`` (scipy has no Holm of its own; statsmodels' multipletests would be one more
    dependency for six lines)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    keep = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        keep[i] = True
    return keep


def verdict(m: float, p: float, sign: int) -> str:
    """✓ / ✗ / ≈ for a mean difference ``m`` (SP − other) with p-value ``p``."""
    if p >= ALPHA or m == 0:
        return "≈"
    return "✓" if m * sign > 0 else "✗"


def at_floor(sign: int, value: float | None, floor: float | None) -> bool:
    from ..report import at_floor as _at

    return _at(sign, value, floor)


def _ms(vals: list[float]) -> str:
    if not vals:
        return "–"
    m = statistics.fmean(vals)
    text = f"{m:.3f}" if abs(m) < 100 else f"{m:.1f}"
    return f"{text} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else text


def _mean(vals: list[float | None]) -> float | None:
    """The mean, or None when any value is missing."""
    return None if not vals or any(v is None for v in vals) else statistics.fmean(vals)


def _last(curve: list[dict], key: str) -> float | None:
    for rec in reversed(curve):
        if isinstance(rec.get(key), (int, float)):
            return float(rec[key])
    return None


def delta_cell(other: list[float], sp: list[float], sign: int, floors: tuple[float | None, float | None],
               floor_ok: bool = True) -> tuple[str, float | None, str | None]:
    """The Δ cell (text), its p-value (None without a test) and its verdict (None without).

    Mean ± std over seeds of (SP − other) paired by seed, the verdict with its p, and
    "≤ floor" beside it when both arms' means are at or below their mean floor."""
    from ..report import NO_TEST

    if not other or sign == 0:
        return "–", None, None
    d = [b - a for a, b in zip(other, sp)]
    floor = floor_ok and all(at_floor(sign, statistics.fmean(v), f) for v, f in zip((other, sp), floors))
    note = "≤ floor; " if floor else ""
    if len(d) == 1:
        return f"{d[0]:+.3f} {note}{NO_TEST} (1 seed)", None, None
    m, sd, p, _ = paired_t(d)
    v = verdict(m, p, sign)
    nf = "" if floor_ok else ", no floor"
    return f"{m:+.3f} ± {sd:.3f} {note}{v} (p {p:.2g}{nf})", p, v


# ----------------------------------------------------------------------------- reading

def complete_groups(budget: Budget, frameworks, backbones, seeds, results: Path, tasks: list[str]
                    ) -> dict[str, dict[str, list[tuple[int, dict]]]]:
    """backbone -> framework -> [(seed, {arm: report.Run})], the seeds whose every arm is done,
    in grid order; backbones without any are left out."""
    from ..report import read_run

    finals = with_picks(grid(frameworks, backbones, seeds, budget), results, budget, tasks)
    done = {c.name for c in finals if cell_status(c, results, Path("/nonexistent"), budget, tasks) == "done"}
    out: dict[str, dict[str, list[tuple[int, dict]]]] = {}
    for bb in BACKBONES:
        for fw in frameworks:
            arms = arms_of(fw, budget)
            for s in seeds:
                names = {a: Cell(fw, a, bb, s).name for a in arms}
                if all(n in done for n in names.values()):
                    out.setdefault(bb, {}).setdefault(fw, []).append(
                        (s, {a: read_run(results / n) for a, n in names.items()}))
    return out


def complete_pairs(budget: Budget, frameworks, backbones, seeds, results, tasks):
    """backbone -> framework -> [(seed, baseline run, SP run)]: ``complete_groups`` as pairs."""
    return {bb: {fw: [(s, g["base"], g["sp"]) for s, g in v] for fw, v in by.items()}
            for bb, by in complete_groups(budget, frameworks, backbones, seeds, results, tasks).items()}


# ----------------------------------------------------------------------------- tables

def main_table(by_fw: dict[str, list[tuple[int, dict]]], budget: Budget, rows_wanted: list[str] | None = None
               ) -> tuple[list[str], list[list[str]], list[tuple[str, str, float, str]]]:
    """Header, rows and the tests ``(framework, label, p, verdict)`` of the best-vs-best table."""
    from ..report import ARROWS, KEY_METRICS

    fws = list(by_fw)
    header = ["metric"]
    for fw in fws:
        arms = list(by_fw[fw][0][1])
        header += [f"{fw} {ARM_LABEL[a]}" if a != "base" else fw for a in arms]
        header.append("Δ SP − " + ("better of base, control" if "ctl" in arms else "base"))
    rows, tests = [], []
    for task, key, label, sign in KEY_METRICS:
        if rows_wanted is not None and label not in rows_wanted:
            continue
        row, seen = [f"{label}{ARROWS.get(sign, '')}"], False
        ok = floor_meaningful(task, key)
        for fw in fws:
            groups = [g for _, g in by_fw[fw]]
            arms = list(groups[0])
            vals = {a: [g[a].value(task, key)[0] for g in groups] for a in arms}
            keep = [i for i in range(len(groups)) if all(vals[a][i] is not None for a in arms)]
            vals = {a: [vals[a][i] for i in keep] for a in arms}
            seen |= bool(keep)
            floors = {a: _mean([groups[i][a].value(task, f"random_{key}")[0] for i in keep]) for a in arms}
            row += [_ms(vals[a]) for a in arms]
            others = [a for a in arms if a != "sp"]
            if keep and sign:
                other = max(others, key=lambda a: sign * statistics.fmean(vals[a]))
            else:
                other = others[0]
            text, p, v = delta_cell(vals[other], vals["sp"], sign, (floors[other], floors["sp"]), ok)
            if len(others) > 1 and text != "–":
                text += f" vs {ARM_LABEL[other]}"
            row.append(text)
            if p is not None:
                tests.append((fw, label, p, v))
        if seen:
            rows.append(row)
    return header, rows, tests


def tuning_section(budget: Budget, frameworks, backbones, results: Path, tasks: list[str]) -> list[str]:
    """Every grid point's validation score per arm, the pick (*) and edge flags."""
    from ..report import markdown_table

    task, key = budget.pick
    lines = [f"## Tuning (seed {budget.tune_seed}, validation split: data.holdout={budget.holdout} training images "
             f"held out; score: {task} {key})", "",
             "Every arm ran the same grid: " + "; ".join(f"`{k}` in {{{', '.join(v)}}}" for k, v in budget.tune)
             + " (x<m>: m times the arm's own preset value; `train.schedule_steps` x1 is `train.steps`). "
             "Picks (*) maximise the validation score, ties to the earlier point; where an arm's pick lies on the "
             f"edge of a key with three or more values, that key gets one more value beyond it for every arm of the "
             f"framework (at most {budget.widen} times), and a pick still on an edge is flagged.", ""]
    from .plan import val_score

    from .plan import framework_grid

    for bb in backbones:
        for fw in frameworks:
            arms = arms_of(fw, budget)
            picks = {a: pick(fw, a, bb, results, budget, tasks) for a in arms}
            header = ["grid point", "values"] + [ARM_LABEL[a] for a in arms]
            rows = []
            tune, settled = framework_grid(fw, bb, results, budget, tasks)
            for p in grid_points(tune):
                presets, ov = presets_and_overrides(Cell(fw, "base", bb, budget.tune_seed), budget, tasks)
                vals = ", ".join(o.split(".", 1)[1] for o in point_overrides(presets, ov, p))
                row = [point_tag(p) + (" (default)" if is_default(p) else ""), vals]
                for a in arms:
                    s = val_score(Cell(fw, a, bb, budget.tune_seed, p, tuning=True), results, budget)
                    star = " *" if picks[a] is not None and picks[a].point == p else ""
                    row.append("–" if s is None else f"{s:.3f}{star}")
                rows.append(row)
            wider = [f"`{k}` + {', '.join(v for v in vals if v not in dict(budget.tune)[k])}"
                     for k, vals in tune if set(vals) != set(dict(budget.tune)[k])]
            lines += [f"### {fw} ({bb})", ""]
            if wider:
                lines += ["Grid widened past an edge pick, for every arm alike: " + "; ".join(wider) + ".", ""]
            lines += [markdown_table(header, rows), ""]
            flags = [f"{ARM_LABEL[a]}: {', '.join(pk.edges)}" for a, pk in picks.items() if pk and pk.edges]
            pending = [ARM_LABEL[a] for a, pk in picks.items() if pk is None]
            if flags:
                lines += ["Pick on the edge of its grid: " + "; ".join(flags) + ".", ""]
            if pending:
                lines += ["Not yet picked (tuning cells missing): " + ", ".join(pending) + ".", ""]
    return lines


def default_section(budget: Budget, frameworks, backbones, results: Path) -> list[str]:
    """Default vs default: the tuning seed's default point, on test (one seed: no test)."""
    from ..report import markdown_table, read_run

    default = next((p for p in grid_points(budget.tune) if is_default(p)), None)
    if default is None:
        return []
    rows_by = {}
    for bb in backbones:
        for fw in frameworks:
            for a in arms_of(fw, budget):
                c = Cell(fw, a, bb, budget.tune_seed, default, tuning=True)
                if (results_dir(c, results) / "metrics").is_dir():
                    rows_by[(bb, fw, a)] = read_run(results_dir(c, results))
    if not rows_by:
        return []
    header = ["framework", "arm"] + [f"{t} {k} ↑" for t, k in [(t, "top1") for t in budget.default_test_tasks]]
    rows = [[f"{fw} ({bb})" if bb != "cnn" else fw, ARM_LABEL[a]]
            + [("–" if (v := r.value(t, "top1")[0]) is None else f"{v:.3f}") for t in budget.default_test_tasks]
            for (bb, fw, a), r in rows_by.items()]
    return [f"## Default vs default (seed {budget.tune_seed}, test split, every arm at its presets' values)", "",
            "One pretraining seed (each value the mean over the probe seeds): no paired test, no mark.", "",
            markdown_table(header, rows), ""]


def provenance_section(groups: dict) -> list[str]:
    """Per framework and seed: what its arms ran on, flagged where they differ."""
    from ..report import markdown_table

    rows, flagged = [], []
    for bb, by_fw in groups.items():
        for fw, items in by_fw.items():
            for s, g in items:
                cards = {a: read_card(r.path) for a, r in g.items()}
                differ = [k for k in PROVENANCE_KEYS if len({c.get(k, "?") for c in cards.values()}) > 1]
                first = next(iter(cards.values()))
                if differ:
                    flagged.append(f"{fw} seed {s} ({', '.join(differ)})")
                rows.append([f"{fw} ({bb})", str(s), first.get("device", "?"), first.get("torch", "?"),
                             first.get("commit", "?")[:12] + (" (+ uncommitted)" if "uncommitted" in first.get("commit", "") else ""), "⚠ " + ", ".join(differ) if differ else "same"])
    if not rows:
        return []
    out = ["## Provenance", "",
           "Each pair's arms: device (CPU model and bf16 instructions, or GPU), torch and commit of the first arm, "
           "and whether the arms differ in device, CPU flags, torch, torchvision, timm, lightly or commit "
           "(card.txt of each cell).", "",
           markdown_table(["framework", "seed", "device", "torch", "commit", "arms"], rows), ""]
    if flagged:
        out += ["⚠ Arms that ran on different machines, versions or commits: " + "; ".join(flagged) + ".", ""]
    return out


def summary(budget: Budget, frameworks, backbones, seeds, results: Path, tasks: list[str]) -> str:
    """Markdown: tuning, default vs default, best vs best per backbone, Holm, provenance."""
    from ..report import NO_TEST, markdown_table

    lines = [f"# Study summary ({budget.name} budget)", "",
             "Mean ± std over pretraining seeds (each value itself the mean over "
             f"{budget.eval_seeds} probe seeds). Δ = SP − the better of the other arms (by the mean; base, or base and "
             "the control with SP's targets shuffled), paired by seed, marked ✓ (SP better) / ✗ (SP worse) where a "
             "paired t-test over the seeds gives p < 0.05, ≈ where not; '≤ floor' beside the mark where both arms "
             "are at or below their random-init floor; 'no floor' where the floor means nothing (mCA / clean); "
             f"with one seed, no test and no mark ({NO_TEST}). Only seeds whose every arm is complete are counted. "
             "Written by `spatialssl compare --report-only` from the cells' files (docs/study.md).", ""]
    from .plan import SP_REUSES_VIEWS

    no_ctl = [fw for fw in frameworks if "ctl" in budget.arms and fw in SP_REUSES_VIEWS]
    if no_ctl:
        lines += [f"No control arm for {', '.join(no_ctl)}: SP pairs the framework's own local views and adds no "
                  "views of its own (only its head), so there is no extra compute for a control to match; SP is "
                  "compared with the baseline there.", ""]
    if budget.tune:
        lines += tuning_section(budget, frameworks, backbones, results, tasks)
        lines += default_section(budget, frameworks, backbones, results)
    groups = complete_groups(budget, frameworks, backbones, seeds, results, tasks)
    all_tests = []
    for bb, by_fw in groups.items():
        fws = list(by_fw)
        title = "Best vs best (each arm at its pick)" if budget.tune else "Results"
        lines += [f"## {title}: {bb}", "",
                  "Seeds per framework: " + ", ".join(f"{fw} {sorted(s for s, _ in by_fw[fw])}" for fw in fws) + ".",
                  ""]
        if budget.tune:
            picks = []
            for fw in fws:
                for a in by_fw[fw][0][1]:
                    pk = pick(fw, a, bb, results, budget, tasks)
                    if pk is not None:
                        picks.append(f"{fw} {ARM_LABEL[a]}: " + ", ".join(o.split('.', 1)[1] for o in pk.overrides)
                                     + (f" (⚠ edge: {', '.join(pk.edges)})" if pk.edges else ""))
            lines += ["Picks: " + "; ".join(picks) + ".", ""]
        header, rows, tests = main_table(by_fw, budget)
        all_tests += tests
        rows += curve_rows(by_fw)
        lines += [markdown_table(header, rows), ""]
    if all_tests:
        keep = holm([p for *_, p, _ in all_tests])
        marks = [(t, k) for t, k in zip(all_tests, keep) if t[3] in ("✓", "✗")]
        survive = [t for t, k in marks if k]
        lines += [f"Holm correction over the {len(all_tests)} paired tests above (family-wise α {ALPHA}): "
                  f"{len(survive)} of {len(marks)} marks survive ("
                  + (", ".join(f"{fw} {label} {v}" for fw, label, _, v in survive) or "none") + ").", ""]
    lines += provenance_section(groups)
    if not groups:
        lines.append("(no complete comparison yet)")
    return "\n".join(lines) + "\n"


def curve_rows(by_fw: dict) -> list[list[str]]:
    """Collapse indicators at the end of training (diagnostics: no mark)."""
    rows = []
    for key, label, _sign in CURVE_ROWS:
        row, seen = [label], False
        for fw, items in by_fw.items():
            arms = list(items[0][1])
            vals = {a: [v for _, g in items if (v := _last(g[a].curve, key)) is not None] for a in arms}
            seen |= any(vals.values())
            row += [_ms(vals[a]) for a in arms] + ["–"]
        if seen:
            rows.append(row)
    return rows


def readme_table(budget: Budget, frameworks, backbones, seeds, results: Path, tasks: list[str]) -> str:
    """The README's result table: ``README_ROWS`` of the best-vs-best table, CNN backbone."""
    from ..report import markdown_table

    groups = complete_groups(budget, frameworks, backbones, seeds, results, tasks)
    if not groups:
        return "(no complete comparison yet)\n"
    bb = next(iter(groups))
    header, rows, _ = main_table(groups[bb], budget, README_ROWS)
    return markdown_table(header, rows) + "\n"


# ----------------------------------------------------------------------------- figure

def figure(budget: Budget, frameworks, backbones, seeds, results: Path, tasks: list[str]) -> list[str]:
    """``summary.png``: per backbone, one panel per metric of ``FIGURE_METRICS``: for each
    framework, every pretraining seed's arms joined by a line (the paired differences the
    summary tests), the means as larger markers, the mean random-init floor dashed."""
    from ..report import KEY_METRICS

    groups = complete_groups(budget, frameworks, backbones, seeds, results, tasks)
    metrics = {label: (task, key, sign) for task, key, label, sign in KEY_METRICS if label in FIGURE_METRICS}
    panels = []
    for bb, by_fw in groups.items():
        for label in FIGURE_METRICS:
            if label in metrics:
                task, key, sign = metrics[label]
                if any(r.value(task, key)[0] is not None for v in by_fw.values() for _, g in v for r in g.values()):
                    panels.append((bb, label, task, key, sign))
    if not panels:
        return []
    from ..report.figures import _plt, _save  # the report's Agg setup and PNG settings

    plt = _plt()
    ncol = 4
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False)
    colours = {"base": "C0", "ctl": "C2", "sp": "C1"}
    for ax, (bb, label, task, key, sign) in zip(axes.flat, panels):
        fws = list(groups[bb])
        floors = []
        for i, fw in enumerate(fws):
            arms = list(groups[bb][fw][0][1])
            xs = {a: i + (j - (len(arms) - 1) / 2) * 0.25 for j, a in enumerate(arms)}
            for _, g in groups[bb][fw]:
                pts = [(xs[a], g[a].value(task, key)[0]) for a in arms]
                pts = [(x, y) for x, y in pts if y is not None]
                ax.plot([x for x, _ in pts], [y for _, y in pts], color="0.6", lw=0.8, marker="o", ms=2.5, zorder=1)
            for a in arms:
                ys = [y for _, g in groups[bb][fw] if (y := g[a].value(task, key)[0]) is not None]
                if ys:
                    ax.scatter([xs[a]], [statistics.fmean(ys)], color=colours[a], s=36, zorder=2,
                               label=ARM_LABEL[a] if i == 0 else None)
            floors += [f for _, g in groups[bb][fw] if (f := g["base"].value(task, f"random_{key}")[0]) is not None]
        if floors:
            floor = statistics.fmean(floors)
            ax.axhline(floor, color="0.3", ls="--", lw=0.8, label="random init")
            lo, hi = ax.get_ylim()
            pad = 0.05 * (max(hi, floor) - min(lo, floor))  # the floor clear of the frame's edge
            ax.set_ylim(min(lo, floor - pad), max(hi, floor + pad))
        ax.set_xticks(range(len(fws)), fws)
        ax.set_title(f"{label} {'↑' if sign > 0 else '↓' if sign < 0 else ''}"
                     + (f" ({bb})" if len(groups) > 1 else ""), fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best")
    used = sorted({s for by in groups.values() for v in by.values() for s, _ in v})
    what = "each arm at its pick" if budget.tune else "baseline vs + SP"
    fig.suptitle(f"spatialssl study, {budget.name} budget: {what}, per pretraining seed "
                 f"(seeds {', '.join(map(str, used))}; lines join a seed's arms)", fontsize=10)
    _save(fig, results / "summary.png")
    return [f"{b}: {label}" for b, label, *_ in panels]


def write_tables(budget: Budget, frameworks, backbones, seeds, results: Path, tasks: list[str]) -> Path:
    """``summary.md``, ``summary.png`` and ``report/`` (``spatialssl report`` over the
    complete seed-0 pairs, arms adjacent so the report pairs them right)."""
    from ..report import write_report

    results.mkdir(parents=True, exist_ok=True)
    text = summary(budget, frameworks, backbones, seeds, results, tasks)
    (results / "summary.md").write_text(text)
    print(text, flush=True)
    if figure(budget, frameworks, backbones, seeds, results, tasks):
        print(f"figure: {results / 'summary.png'}", flush=True)
    groups = complete_groups(budget, frameworks, backbones, seeds[:1], results, tasks)
    dirs = [g[a].path for by in groups.values() for v in by.values() for _, g in v for a in ("base", "sp")]
    if dirs:
        path = write_report(dirs, results / "report", f"spatialssl study ({budget.name} budget): seed-{seeds[0]} pairs")
        print(f"report: {path}", flush=True)
    return results / "summary.md"
