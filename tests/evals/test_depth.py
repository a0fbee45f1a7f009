"""depth: a planted backbone exposing depth is near-perfect; metrics and validity are exact."""

import torch

from spatialssl.evals import depth


def test_planted_near_perfect(planted_tools):
    t = planted_tools
    splits = {"train": t["dense_set"](60, 4, 0), "test": t["dense_set"](30, 4, 1)}
    out = depth.run(t["context"](t["Planted"](4, stride=2), splits, dense_epochs=100))
    assert out["delta1"] > 0.99 and out["abs_rel"] < 0.03
    assert out["rmse"] < 0.1 * out["mean_rmse"]


def test_random_backbone_is_poor(planted_tools):
    t = planted_tools
    tr, te = t["dense_set"](60, 4, 0), t["dense_set"](30, 4, 1)
    for cs in (tr, te):
        cs.images[:, 2] = torch.randint(0, 256, cs.images[:, 2].shape, dtype=torch.uint8)  # depth not in pixels
    out = depth.run(t["context"](t["random_backbone"](), {"train": tr, "test": te}))
    assert out["rmse"] > 0.8 * out["mean_rmse"]


def test_scores_exact():
    gt = torch.tensor([1.0, 2.0, 4.0, 8.0])
    pred = torch.tensor([1.0, 2.0, 4.0, 12.0])
    s = depth.depth_scores(pred, gt)
    assert abs(s["rmse"] - 2.0) < 1e-6 and abs(s["abs_rel"] - 0.125) < 1e-6 and s["delta1"] == 0.75


def test_far_plane_is_invalid(planted_tools):
    cs = planted_tools["dense_set"](4, 2, 0)
    cs.depth[0, :4] = 30.0
    cs.depth[1, 0, 0] = 0.0
    cs.meta["far"] = 30.0
    v = depth.valid_mask(cs)
    assert not v[0, :4].any() and not v[1, 0, 0] and v[2].all()
