"""``knn``: weighted k-NN (k=20, T=0.07) on L2-normalised frozen global features.

DINO's protocol (Caron et al., 2021, arXiv:2104.14294); top-1 on the test split with the
probe-train split as memory.
"""

from __future__ import annotations

from .features import EvalContext
from .probes import accuracy, knn_predict


def run(ctx: EvalContext, labels: str = "labels") -> dict:
    e = ctx.ecfg
    tr, te = ctx.split(e["split_train"]), ctx.split(e["split_test"])
    y_tr, y_te = getattr(tr, labels), getattr(te, labels)
    if y_tr is None or y_te is None:
        raise ValueError(f"knn needs {labels} on splits {e['split_train']} and {e['split_test']}")
    f_tr, _ = ctx.features(e["split_train"])
    f_te, _ = ctx.features(e["split_test"])
    n_cls = int(max(y_tr.max(), y_te.max())) + 1
    pred = knn_predict(f_tr, y_tr, f_te, n_cls, e["knn_k"], e["knn_t"])
    return {"top1": accuracy(pred, y_te), "chance": 1.0 / n_cls, "k": e["knn_k"], "t": e["knn_t"],
            "n_train": len(f_tr), "n_test": len(f_te)}
