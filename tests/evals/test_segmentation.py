"""segmentation: a planted backbone exposing the mask scores ~1 mIoU; helpers are exact."""

import torch

from spatialssl.evals import segmentation


def test_planted_near_perfect(planted_tools, tmp_path):
    t = planted_tools
    splits = {"train": t["dense_set"](60, 4, 0), "test": t["dense_set"](30, 4, 1)}
    ctx = t["context"](t["Planted"](4, stride=2), splits)
    ctx.cache_dir = tmp_path / "features"  # examples land in tmp_path/metrics
    out = segmentation.run(ctx)
    assert out["miou"] > 0.98 and out["pixel_acc"] > 0.99
    assert out["n_classes"] == 4 and "iou_background" in out and "iou_c3" in out
    assert out["majority_miou"] < 0.3
    ex = torch.load(tmp_path / "metrics" / "segmentation_examples.pt", weights_only=False)
    assert ex["pred"].shape == ex["target"].shape == (2, t["SIZE"], t["SIZE"])


def test_random_backbone_is_poor(planted_tools):
    t = planted_tools
    tr, te = t["dense_set"](60, 4, 0), t["dense_set"](30, 4, 1)
    for cs in (tr, te):  # drop the planted code: masks are independent of the pixels
        cs.images[:, 1] = 0
    out = segmentation.run(t["context"](t["random_backbone"](), {"train": tr, "test": te}))
    assert out["miou"] < 0.35  # 4 balanced classes: ~0.25 at best for a constant guess


def test_iou_and_confusion():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    conf = segmentation.confusion(pred, target, 3, ignore=255)
    assert conf.sum() == 7
    s = segmentation.iou_scores(conf, ["bg", "a", "b"])
    # bg: tp 1, fp 1, fn 1 -> 1/3; a: tp 3, fp 1 -> 3/4; b: tp 1, fn 1 -> 1/2
    assert abs(s["iou_bg"] - 1 / 3) < 1e-9 and abs(s["iou_a"] - 0.75) < 1e-9 and abs(s["iou_b"] - 0.5) < 1e-9
    assert abs(s["miou"] - (1 / 3 + 0.75 + 0.5) / 3) < 1e-9


def test_deterministic(planted_tools):
    t = planted_tools
    splits = {"train": t["dense_set"](30, 3, 0), "test": t["dense_set"](10, 3, 1)}
    bb = t["random_backbone"]()
    a = segmentation.run(t["context"](bb, splits, dense_epochs=3))
    b = segmentation.run(t["context"](bb, splits, dense_epochs=3))
    assert a == b


def test_upsample_equals_interpolate():
    import torch.nn.functional as F

    x = torch.randn(2, 3, 4, 5)
    ref = F.interpolate(x, size=(24, 17), mode="bilinear", align_corners=False)
    assert torch.allclose(segmentation.upsample(x, (24, 17)), ref, atol=1e-5)
