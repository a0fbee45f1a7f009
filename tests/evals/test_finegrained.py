"""finegrained: planted fine labels score ~100%; a random backbone on signal-free images ~chance."""

import pytest
import torch

from spatialssl.evals import finegrained
from spatialssl.data.canvases import CanvasSet


def test_planted_fine_labels_near_perfect(planted_tools):
    t = planted_tools
    splits = {"train": t["labelled_set"](240, 4, 0), "test": t["labelled_set"](120, 4, 1)}
    out = finegrained.run(t["context"](t["Planted"](8), splits))
    assert out["knn_top1"] > 0.98 and out["linear_top1"] > 0.98
    assert out["linear_coarse_consistent"] > 0.98
    assert abs(out["chance"] - 1 / 8) < 1e-9


def test_random_backbone_near_chance(planted_tools):
    t = planted_tools
    tr, te = t["labelled_set"](240, 4, 0), t["labelled_set"](200, 4, 1)
    tr.images[:, 0] = te.images[:, 0] = 128  # remove the planted code: labels are independent of pixels
    out = finegrained.run(t["context"](t["random_backbone"](), {"train": tr, "test": te}))
    assert out["knn_top1"] < 0.3 and out["linear_top1"] < 0.3  # chance 1/8


def test_skipped_without_fine_labels(planted_tools):
    t = planted_tools
    cs = t["labelled_set"](40, 2, 0)
    plain = CanvasSet(cs.images, labels=cs.labels)
    with pytest.warns(UserWarning, match="no fine_labels"):
        out = finegrained.run(t["context"](t["Planted"](4), {"train": plain, "test": plain}))
    assert "skipped" in out


def test_fine_to_coarse():
    fine, coarse = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([0, 0, 1, 1, 0])
    assert finegrained.fine_to_coarse(fine, coarse).tolist() == [0, 0, 1, 1]
    assert finegrained.fine_to_coarse(fine, torch.tensor([0, 0, 1, 1, 1])) is None
