"""``knn``: weighted k-NN (k=20, T=0.07) on L2-normalised frozen global features.

DINO's protocol (Caron et al., 2021, arXiv:2104.14294); top-1 on the test subset with the
probe-train subset as memory. Runs on ``ctx.device`` with a top-k chunked over queries and
bank (``probes.knn_votes``). Per-item outcome: 0/1 correctness of each test image.
"""

from __future__ import annotations

import torch

from .features import EvalContext
from .probes import correct, knn_predict
from ..errors import UserError


def predict(ctx: EvalContext, labels: str = "labels") -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(predictions [M], test labels [M], number of classes, probe-train size)."""
    e = ctx.ecfg
    tr, te = ctx.split(e["split_train"]), ctx.split(e["split_test"])
    y_tr, y_te = getattr(tr, labels), getattr(te, labels)
    if y_tr is None or y_te is None:
        raise UserError(f"knn needs {labels} on splits {e['split_train']} and {e['split_test']}")
    f_tr, _ = ctx.features(e["split_train"])
    f_te, _ = ctx.features(e["split_test"])
    n_cls = int(max(y_tr.max(), y_te.max())) + 1
    pred = knn_predict(f_tr.to(ctx.device), y_tr, f_te, n_cls, e["knn_k"], e["knn_t"])
    return pred, y_te, n_cls, len(f_tr)


def run(ctx: EvalContext, labels: str = "labels") -> dict:
    pred, y_te, n_cls, n_tr = predict(ctx, labels)
    right = correct(pred, y_te)
    ctx.record("top1", "mean", x=right)
    e = ctx.ecfg
    # chance: a uniform guess among the classes the test split holds (an empty class folder
    # still takes a label id, so n_cls can count classes no image has)
    present = len(torch.unique(y_te))
    return {"top1": float(right.mean()), "chance": 1.0 / present, "k": e["knn_k"], "t": e["knn_t"],
            "n_train": n_tr, "n_test": len(y_te)}
