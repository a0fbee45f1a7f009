"""Side-by-side reports of evaluated runs: ``report.md``, ``report.html`` and PNG plots.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` (the
training curve: ``step``, ``loss_fw``, ``loss_sp``, ``sp_r2_dx/dy/ds``, ...) and
``metrics/<task>.json`` (written by ``evals.evaluate``: ``values``, and ``std`` when more
than one seed ran), plus optional ``metrics/<task>_examples.pt`` (small example arrays the
dense and jigsaw protocols save for the figures).

Runs are paired by framework: a run without SP and one with SP of the same framework
become "baseline | + SP | difference" columns; other runs get a column each.

>>> write_report(["runs/demo/dino", "runs/demo/dino_sp"], "runs/demo")
PosixPath('runs/demo/report.md')
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

# (task, value key, label, +1 higher is better / -1 lower is better): the summary rows
KEY_METRICS: list[tuple[str, str, str, int]] = [
    ("knn", "top1", "kNN top-1", 1),
    ("linear", "top1", "linear top-1", 1),
    ("patch_pair", "r2_dx", "patch-pair R² dx", 1),
    ("patch_pair", "r2_dy", "patch-pair R² dy", 1),
    ("patch_pair", "r2_ds", "patch-pair R² ds", 1),
    ("patch_pair", "train_r2_ds", "patch-pair R² ds (probe-train)", 1),
    ("patch_pair", "random_r2_ds", "patch-pair R² ds (random-init)", 1),
    ("finegrained", "knn_top1", "fine-grained kNN top-1", 1),
    ("finegrained", "linear_top1", "fine-grained linear top-1", 1),
    ("segmentation", "miou", "segmentation mIoU", 1),
    ("segmentation", "pixel_acc", "segmentation pixel acc.", 1),
    ("segmentation", "random_miou", "segmentation mIoU (random-init)", 1),
    ("depth", "rmse", "depth RMSE", -1),
    ("depth", "abs_rel", "depth AbsRel", -1),
    ("depth", "delta1", "depth δ<1.25", 1),
    ("depth", "random_rmse", "depth RMSE (random-init)", -1),
    ("robustness", "clean_top1", "clean top-1 (robustness subset)", 1),
    ("robustness", "mCA", "mean corruption acc. (mCA)", 1),
    ("robustness", "rel_mCA", "mCA / clean", 1),
    ("robustness", "ood_top1", "OOD split top-1", 1),
    ("jigsaw", "tile_acc", "jigsaw tile acc.", 1),
    ("jigsaw", "puzzle_acc", "jigsaw puzzle acc.", 1),
    ("jigsaw", "random_tile_acc", "jigsaw tile acc. (random-init)", 1),
    ("jigsaw", "top1_original", "top-1 original", 1),
    ("jigsaw", "top1_shuffled", "top-1 shuffled", 1),
    ("jigsaw", "top1_reconstructed", "top-1 reconstructed", 1),
]


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

    def value(self, task: str, key: str) -> tuple[float | None, float | None]:
        """(mean, std or None) of a metric, or (None, None) when absent."""
        rec = self.metrics.get(task)
        if not rec:
            return None, None
        v = rec.get("values", {}).get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return None, None
        s = rec.get("std", {}).get(key) if rec.get("seeds", 1) > 1 else None
        return float(v), (float(s) if s is not None else None)

    def examples(self, task: str) -> dict | None:
        p = self.path / "metrics" / f"{task}_examples.pt"
        if not p.exists():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception:  # a damaged example file only costs a figure
            return None


def read_run(path: str | Path) -> Run:
    """Read a run directory (any of its files may be missing)."""
    path = Path(path)
    cfg: dict = {}
    if (path / "config.yaml").exists():
        cfg = yaml.safe_load((path / "config.yaml").read_text()) or {}
    curve = []
    if (path / "metrics.jsonl").exists():
        for line in (path / "metrics.jsonl").read_text().splitlines():
            if line.strip():
                try:
                    curve.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by an interrupted run
                    pass
    metrics = {}
    for p in sorted((path / "metrics").glob("*.json")) if (path / "metrics").is_dir() else []:
        rec = json.loads(p.read_text())
        metrics[rec.get("task", p.stem)] = rec
    first = next(iter(metrics.values()), {})
    framework = cfg.get("framework", {}).get("name") or first.get("framework") or "?"
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


def columns(runs: list[Run]) -> list[tuple[Run, Run | None]]:
    """(baseline, + SP) pairs by framework, in order of first appearance; unpaired runs alone."""
    out: list[tuple[Run, Run | None]] = []
    used: set[int] = set()
    for i, r in enumerate(runs):
        if i in used:
            continue
        used.add(i)
        mate = next((j for j, o in enumerate(runs) if j not in used and o.framework == r.framework
                     and o.sp != r.sp), None)
        if mate is None:
            out.append((r, None))
        else:
            used.add(mate)
            base, sp = (r, runs[mate]) if not r.sp else (runs[mate], r)
            out.append((base, sp))
    return out


def _fmt(v: float | None, s: float | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    text = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return f"{text} ± {s:.3f}" if s is not None else text


def _diff(a: float | None, b: float | None, sign: int, sa: float | None = None, sb: float | None = None) -> str:
    """SP minus baseline, marked ✓ (SP better) or ✗; with probe stds of both runs (several
    evaluation seeds), marked only beyond 2 combined stds and ≈ within them."""
    if a is None or b is None:
        return "–"
    d = b - a
    if sa is not None and sb is not None and abs(d) <= 2 * math.hypot(sa, sb):
        return f"{d:+.3f} ≈"
    mark = "" if abs(d) < 5e-4 else (" ✓" if d * sign > 0 else " ✗")
    return f"{d:+.3f}{mark}"


def table_rows(runs: list[Run], rows: list[tuple[str, str, str, int]] | None = None
               ) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table (rows where no run has a value are left out)."""
    rows = KEY_METRICS if rows is None else rows
    cols = columns(runs)
    header = ["metric"]
    for base, sp in cols:
        header += [base.label] if sp is None else [base.label, sp.label, "Δ (SP − base)"]
    out = []
    for task, key, label, sign in rows:
        cells, seen = [f"{label} {'↑' if sign > 0 else '↓'}"], False
        for base, sp in cols:
            a, sa = base.value(task, key)
            seen |= a is not None
            if sp is None:
                cells.append(_fmt(a, sa))
                continue
            b, sb = sp.value(task, key)
            seen |= b is not None
            cells += [_fmt(a, sa), _fmt(b, sb), _diff(a, b, sign, sa, sb)]
        if seen:
            out.append(cells)
    return header, out


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    rule = "|".join("---" if i == 0 else "---:" for i in range(len(header)))
    lines = ["| " + " | ".join(header) + " |", f"|{rule}|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_table(run_dirs: list[str | Path]) -> str:
    """The key metrics of each run, side by side (Markdown), as the CLI prints it."""
    header, rows = table_rows(read_runs(run_dirs))
    if not rows:
        return "(no metrics found: run `spatialssl eval` first)"
    return _markdown(header, rows)


def detail_tables(runs: list[Run]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every numeric value of every task, one table per task: (task, header, rows)."""
    out = []
    for task in sorted({t for r in runs for t in r.metrics}):
        keys: list[str] = []
        for r in runs:
            for k, v in r.metrics.get(task, {}).get("values", {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                    keys.append(k)
        rows = [(task, k, k, -1 if k.endswith(("rmse", "abs_rel", "mae")) else 1) for k in keys]
        header, body = table_rows(runs, rows)
        body = [[c.replace(" ↑", "").replace(" ↓", "") if i == 0 else c for i, c in enumerate(r)] for r in body]
        skipped = [f"{r.label}: {r.metrics[task]['values']['skipped']}" for r in runs
                   if "skipped" in r.metrics.get(task, {}).get("values", {})]
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
                if task == t and any(r.value(t, key)[0] is not None for r in runs)]
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


def write_report(run_dirs: list[str | Path], out_dir: str | Path, title: str = "spatialssl report") -> Path:
    """Write ``report.md``, ``report.html`` and the PNG figures into ``out_dir``; returns the .md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = read_runs(run_dirs)
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
    header, rows = table_rows(runs)
    details = detail_tables(runs)
    runs_header = ["run", "framework", "SP", "steps", "backbone", "directory"]
    runs_rows = [[r.label, r.framework, "yes" if r.sp else "no", str(r.config.get("train", {}).get("steps", "?")),
                  str(r.config.get("backbone", {}).get("name", "?")), str(r.path)] for r in runs]
    note = ("Δ = (+ SP) − baseline; ✓ where SP is better (↑: higher is better, ↓: lower is better). "
            "± is the standard deviation over evaluation seeds when more than one ran; then ✓ / ✗ "
            "only where |Δ| exceeds twice the combined std, ≈ within it. With one seed a mark is the "
            "sign of Δ, not a significance test (nor does any mark cover pretraining-seed spread). "
            "See docs/evaluations.md for what each number means.")

    md = [f"# {title}", "", "## Runs", "", _markdown(runs_header, runs_rows), "", "## Summary", "", note, "",
          _markdown(header, rows) if rows else "(no metrics found)", ""]
    md += ["## Figures", ""] + [f"**{cap}**\n\n![{cap}]({p.name})\n" for cap, p in figures]
    md += ["## All values by task", ""]
    for task, h, body in details:
        md += [f"### {task}", "", _markdown(h, body), ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
         f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>",
         "<h2>Runs</h2>", _html_table(runs_header, runs_rows), "<h2>Summary</h2>", f"<p>{html.escape(note)}</p>",
         _html_table(header, rows) if rows else "<p>(no metrics found)</p>", "<h2>Figures</h2>"]
    h += [f"<figure><img src='{p.name}' alt='{html.escape(cap)}'><figcaption>{html.escape(cap)}</figcaption></figure>"
          for cap, p in figures]
    h.append("<h2>All values by task</h2>")
    for task, hh, body in details:
        h += [f"<details><summary>{html.escape(task)}</summary>", _html_table(hh, body), "</details>"]
    h.append("</body></html>")
    (out / "report.html").write_text("\n".join(h))
    return md_path
