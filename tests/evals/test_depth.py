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


def test_image_errors_score_valid_pixels_only():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 30.0]], [[2.0, 2.0], [2.0, 2.0]]])
    pred = torch.tensor([[[1.0, 2.0], [5.0, 2.0]], [[2.0, 2.0], [2.0, 3.0]]])
    valid = torch.tensor([[[True, True], [True, False]], [[True, True], [True, True]]])
    e = depth.image_errors(pred, gt, valid)
    assert torch.allclose(e["sq"], torch.tensor([1 / 3, 1 / 4], dtype=torch.float64))
    assert torch.allclose(e["abs_rel"], torch.tensor([0.25 / 3, 0.5 / 4], dtype=torch.float64))
    assert torch.allclose(e["delta1"], torch.tensor([2 / 3, 0.75], dtype=torch.float64))  # 5 / 4 is not < 1.25
    assert e["n"].tolist() == [3, 4]


def test_invalid_pixels_are_not_scored(planted_tools):
    """A far-plane band (depth = far, invalid) whose pixels still show the ramp: the probe
    predicts the ramp there, 20+ units off the stored 30. Scored on valid pixels only, the
    error stays small; the per-image outcomes are over valid pixels too."""
    t = planted_tools
    splits = {}
    for name, seed in (("train", 0), ("test", 1)):
        cs = t["dense_set"](40, 4, seed)
        cs.depth[:, :6] = 30.0
        cs.meta["far"] = 30.0
        splits[name] = cs
    ctx = t["context"](t["Planted"](4, stride=2), splits, dense_epochs=100)
    out = depth.run(ctx)
    assert out["valid_frac"] < 0.8 and out["rmse"] < 0.1 * out["mean_rmse"] and out["delta1"] > 0.99
    sq = ctx.outcomes["rmse"]["sq"]
    assert ctx.outcomes["rmse"]["kind"] == "rmse" and sq.shape == (40,)
    assert abs(float(sq.mean().sqrt()) - out["rmse"]) < 1e-5
