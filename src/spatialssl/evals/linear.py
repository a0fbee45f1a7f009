"""``linear``: a linear classifier on cached frozen global features; test top-1.

A grid of learning rates is trained in one pass (on ``ctx.device``); the best is chosen on
10% of the probe-train subset held out (never on test), then refit on the whole probe-train
subset. Per-item outcome: 0/1 correctness of each test image.
"""

from __future__ import annotations

import torch

from .features import EvalContext
from .probes import correct, feature_stats, train_linear
from ..errors import UserError


def fit(ctx: EvalContext, labels: str = "labels"):
    """The probe (on standardised features) and what it needs to apply:
    (head, normalise fn (moves features to the device), number of classes, info)."""
    e = ctx.ecfg
    tr = ctx.split(e["split_train"])
    y_tr = getattr(tr, labels)
    if y_tr is None:
        raise UserError(f"linear probe needs {labels} on split {e['split_train']}")
    f_tr, _ = ctx.features(e["split_train"])
    f_tr = f_tr.to(ctx.device)
    mean, std = feature_stats(f_tr, 0)
    n_cls = int(y_tr.max()) + 1
    head, info = train_linear((f_tr - mean) / std, y_tr.to(ctx.device), n_cls, e["linear_lr"], e["linear_epochs"],
                              seed=ctx.seed)
    return head, (lambda f: (f.to(mean.device) - mean) / std), n_cls, info


def predict(head, norm, f: torch.Tensor) -> torch.Tensor:
    """Labels [N] (CPU) of features [N, D] under a fitted probe."""
    with torch.no_grad():
        return head(norm(f)).argmax(1).cpu()


def run(ctx: EvalContext, labels: str = "labels") -> dict:
    e = ctx.ecfg
    te = ctx.split(e["split_test"])
    y_te = getattr(te, labels)
    if y_te is None:
        raise UserError(f"linear probe needs {labels} on split {e['split_test']}")
    head, norm, n_cls, info = fit(ctx, labels)
    f_te, _ = ctx.features(e["split_test"])
    right = correct(predict(head, norm, f_te), y_te)
    ctx.record("top1", "mean", x=right)
    # chance: a uniform guess among the classes the test split holds (not n_cls: see knn.run)
    return {"top1": float(right.mean()), "chance": 1.0 / len(torch.unique(y_te)), **info, "n_test": len(y_te)}
