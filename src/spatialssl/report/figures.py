"""The report's PNG figures (matplotlib, Agg backend): training curves, key metrics,
robustness, jigsaw and dense-prediction examples."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .runs import Run
from .tables import KEY_METRICS


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
