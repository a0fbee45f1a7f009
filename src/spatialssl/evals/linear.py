"""``linear``: a linear classifier on cached frozen global features; test top-1.

A grid of learning rates is trained in one pass; the best is chosen on 10% of the
probe-train split held out (never on test), then refit on the whole probe-train split.
"""

from __future__ import annotations

from .features import EvalContext
from .probes import accuracy, feature_stats, train_linear


def fit(ctx: EvalContext, labels: str = "labels"):
    """The probe (on standardised features) and what it needs to apply: (head, mean/std fn, info)."""
    e = ctx.ecfg
    tr = ctx.split(e["split_train"])
    y_tr = getattr(tr, labels)
    if y_tr is None:
        raise ValueError(f"linear probe needs {labels} on split {e['split_train']}")
    f_tr, _ = ctx.features(e["split_train"])
    mean, std = feature_stats(f_tr, 0)
    n_cls = int(y_tr.max()) + 1
    head, info = train_linear((f_tr - mean) / std, y_tr, n_cls, e["linear_lr"], e["linear_epochs"], seed=ctx.seed)
    return head, (lambda f: (f - mean) / std), n_cls, info


def run(ctx: EvalContext, labels: str = "labels") -> dict:
    e = ctx.ecfg
    te = ctx.split(e["split_test"])
    y_te = getattr(te, labels)
    if y_te is None:
        raise ValueError(f"linear probe needs {labels} on split {e['split_test']}")
    head, norm, n_cls, info = fit(ctx, labels)
    f_te, _ = ctx.features(e["split_test"])
    pred = head(norm(f_te)).argmax(1)
    return {"top1": accuracy(pred, y_te), "chance": 1.0 / n_cls, **info}
