"""The supervised reference: the run's architecture and budget, trained on the labels."""

import pytest
import torch

from spatialssl.evals import knn
from spatialssl.evals.reference import lr_at, supervised_context, train_supervised


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 1.0, 10, 0.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_reference_learns_the_labels_within_the_runs_budget(planted_tools, tmp_path):
    """Labels written into the red channel: a few supervised steps of the run's own settings
    make kNN on the reference's features beat the random-init backbone's; the budget is the
    config's (0 steps = the untouched init), and the weights are cached for the next call."""
    t = planted_tools
    splits = {"train": t["labelled_set"](64, 3, 0), "test": t["labelled_set"](45, 3, 1)}
    ctx = t["context"](t["random_backbone"](), splits)
    ctx.cfg["train"].update(steps=25, batch_size=32, lr=0.004, warmup_steps=3, lr_scale_with_batch=False)
    ctx.cache_dir = tmp_path
    sup = supervised_context(ctx)
    assert sup.role == "supervised" and sup.ckpt_hash.startswith("supervised-")
    top1, floor = knn.run(sup)["top1"], knn.run(ctx.floor())["top1"]
    assert top1 > floor + 0.1 and top1 > 0.75, (top1, floor)
    assert list(tmp_path.glob("supervised_*.pt"))
    assert supervised_context(ctx).ckpt_hash == sup.ckpt_hash  # loaded, same weights
    cfg0 = {**ctx.cfg, "train": {**ctx.cfg["train"], "steps": 0}}
    a, b = train_supervised(cfg0, splits["train"], seed=0), ctx.random_backbone()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
