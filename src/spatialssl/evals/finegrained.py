"""``finegrained``: the ``knn`` and ``linear`` protocols on fine-grained labels.

On PartsWorld the fine label is the variant of an object category (``category * VARIANTS +
variant``): telling variants apart takes the arrangement and shape of parts, not just
the category's overall look. Same settings as ``knn`` (k, T) and ``linear`` (lr grid,
epochs), over the same cached features. Also reported: the fine-label chance level and how
often the linear probe's fine prediction falls in the right *coarse* category (when the
data set's fine ids are ``coarse * VARIANTS + variant``-style, i.e. each fine id belongs to
one coarse label in the probe-train split).

Data sets without fine labels (e.g. folder data) are skipped with a reason in the metrics.
"""

from __future__ import annotations

import warnings

import torch

from . import knn, linear
from .features import EvalContext
from .probes import correct


def fine_to_coarse(fine: torch.Tensor, coarse: torch.Tensor | None) -> torch.Tensor | None:
    """The coarse label of each fine id [F] when every fine id has one coarse label, else None."""
    if coarse is None:
        return None
    table = [-1] * (int(fine.max()) + 1)
    for f, c in torch.unique(torch.stack([fine, coarse], 1), dim=0).tolist():
        if table[f] not in (-1, c):
            return None
        table[f] = c
    return torch.tensor(table)


def run(ctx: EvalContext) -> dict:
    e = ctx.ecfg
    tr, te = ctx.split(e["split_train"]), ctx.split(e["split_test"])
    if tr.fine_labels is None or te.fine_labels is None:
        reason = "data set has no fine_labels"
        warnings.warn(f"finegrained skipped: {reason}")
        return {"skipped": reason}
    pred_k, y, _, n_tr = knn.predict(ctx, labels="fine_labels")
    head, norm, n_cls, info = linear.fit(ctx, labels="fine_labels")
    f_te, _ = ctx.features(e["split_test"])
    pred = linear.predict(head, norm, f_te).clamp(max=n_cls - 1)
    k_right, l_right = correct(pred_k, y), correct(pred, y)
    ctx.record("knn_top1", "mean", x=k_right)
    ctx.record("linear_top1", "mean", x=l_right)
    out = {"knn_top1": float(k_right.mean()), "linear_top1": float(l_right.mean()),
           "chance": 1.0 / max(n_cls, int(y.max()) + 1), "n_fine": n_cls, "best_lr": info["best_lr"],
           "n_train": n_tr, "n_test": len(y)}
    table = fine_to_coarse(tr.fine_labels, tr.labels)
    if table is not None and te.labels is not None:
        consistent = (table[pred] == te.labels).float()
        ctx.record("linear_coarse_consistent", "mean", x=consistent)
        out["linear_coarse_consistent"] = float(consistent.mean())
    return out
