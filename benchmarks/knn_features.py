"""Why BYOL's and DINO's kNN sit at the floor while their linear probe learns: the kNN
protocol on the released CPU-study checkpoints, on the features as the protocol sees them
(raw, L2-normalised: DINO's kNN) and after per-unit standardisation with the probe-train
mean and std (what the linear probe sees), beside the random-init floor.

A diagnostic, not a protocol: the study reports the raw kNN. If standardised kNN is far above
raw kNN, the features hold class information that a few large units hide from the cosine.

Usage (CPU, about a minute per checkpoint):
    python benchmarks/knn_features.py [--runs checkpoints/byol-cnn-s0 ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from spatialssl.backbones import create_backbone  # noqa: E402
from spatialssl.evals.features import EvalContext, context_from_checkpoint  # noqa: E402
from spatialssl.evals.probes import knn_predict  # noqa: E402


def scores(ctx: EvalContext) -> dict[str, float]:
    e = ctx.ecfg
    tr, te = ctx.split(e["split_train"]), ctx.split(e["split_test"])
    f_tr, _ = ctx.features(e["split_train"])
    f_te, _ = ctx.features(e["split_test"])
    n = int(max(tr.labels.max(), te.labels.max())) + 1
    mu, sd = f_tr.mean(0), f_tr.std(0).clamp_min(1e-6)
    out = {}
    for name, a, b in (("raw", f_tr, f_te), ("centred", f_tr - mu, f_te - mu),
                       ("standardised", (f_tr - mu) / sd, (f_te - mu) / sd)):
        pred = knn_predict(a, tr.labels, b, n, e["knn_k"], e["knn_t"])
        out[name] = float((pred == te.labels).float().mean())
    # how unequal the units are: share of the total variance in the top 5% of units
    var = f_tr.var(0).sort(descending=True).values
    out["top5pct_var"] = float(var[: max(1, len(var) // 20)].sum() / var.sum())
    out["mean_over_std"] = float((f_tr.mean(0).norm() / f_tr.std(0).norm()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="*", default=sorted(str(d) for d in (REPO / "checkpoints").glob("*-cnn-s0")))
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for run in args.runs:
        ctx = context_from_checkpoint(run, device="cpu", progress=False, cache_dir=Path("runs/knn_features") / Path(run).name)
        rows.append((Path(run).name, scores(ctx)))
        if len(rows) == 1:  # the random-init floor of the same CNN (seed 0), once
            floor = EvalContext(ctx.cfg, create_backbone(ctx.cfg["backbone"]), "random-0", "cpu",
                                Path("runs/knn_features") / "random", 0, False)
            rows.append(("random init", scores(floor)))
    print("| run | kNN raw | kNN centred | kNN standardised | top 5% units' variance share | |mean| / |std| |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s['raw']:.3f} | {s['centred']:.3f} | {s['standardised']:.3f} | {s['top5pct_var']:.2f} | "
              f"{s['mean_over_std']:.2f} |")


if __name__ == "__main__":
    main()
