"""Why BYOL's and DINO's kNN sit at the floor while their linear probe learns: the kNN
protocol on the released CPU-study checkpoints, on the features as the protocol sees them
(raw, L2-normalised: DINO's kNN) and after per-unit standardisation with the probe-train
mean and std (what the linear probe sees), beside the random-init floor.

A diagnostic, not a protocol: the study reports the raw kNN. If standardised kNN is far above
raw kNN, the features hold class information that a few large units hide from the cosine.

What the neighbourhoods group instead: for each test image, its nearest probe-train neighbour
(cosine); the table gives how far apart the two are in the mean colour of their sky (depth at
the far plane), their ground (the rest of the background) and their object, and in the
object's area, as a fraction of the same distance between random pairs (1.0: the features
ignore it; near 0: neighbours share it).

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


def attributes(split) -> dict[str, torch.Tensor]:
    """Per-image nuisance and object attributes of a PartsWorld split: mean RGB of the sky,
    the ground and the object, the object's area share, and the class."""
    x = split.images.float() / 255
    sky = split.depth >= split.depth.max() - 1e-3
    obj = split.semantic > 0
    ground = ~obj & ~sky

    def mean_rgb(mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None].float()
        return (x * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1)

    return {"sky": mean_rgb(sky), "ground": mean_rgb(ground), "object": mean_rgb(obj),
            "area": obj.float().mean((1, 2))[:, None]}


def neighbours(ctx: EvalContext, f_tr: torch.Tensor, f_te: torch.Tensor) -> dict[str, float]:
    e = ctx.ecfg
    a_tr, a_te = attributes(ctx.split(e["split_train"])), attributes(ctx.split(e["split_test"]))
    nn = (torch.nn.functional.normalize(f_te.float(), dim=1) @ torch.nn.functional.normalize(f_tr.float(), dim=1).T).argmax(1)
    rand = torch.randint(0, len(f_tr), (len(f_te),), generator=torch.Generator().manual_seed(0))
    return {f"nn_{k}": float((a_te[k] - a_tr[k][nn]).abs().sum(1).mean() / (a_te[k] - a_tr[k][rand]).abs().sum(1).mean())
            for k in a_te}


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
    return {**out, **neighbours(ctx, f_tr, f_te)}


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
    print("\nNearest neighbour's distance / a random pair's distance (1.0: not shared; near 0: shared):\n")
    print("| run | sky colour | ground colour | object colour | object area |")
    print("|---|---:|---:|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s['nn_sky']:.2f} | {s['nn_ground']:.2f} | {s['nn_object']:.2f} | {s['nn_area']:.2f} |")


if __name__ == "__main__":
    main()
