"""segmentation: a planted backbone exposing the mask scores ~1 mIoU; helpers are exact."""

import torch

from spatialssl import runfolder
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
    ex = runfolder.read_items(tmp_path, "segmentation", "examples")
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
    assert torch.allclose(segmentation.upsample_last(x, (24, 17)), ref.permute(0, 2, 3, 1), atol=1e-5)


def test_miou_averages_over_present_classes_only():
    """Class 3 appears in neither the masks nor the predictions: it is left out of the mean
    (counting it as IoU 0 would give 3/4 of the right value)."""
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    conf = segmentation.confusion(pred, target, 4)
    s = segmentation.iou_scores(conf, ["bg", "a", "b", "c"])
    # bg: tp 1 / union 3; a: 3 / 4; b: 2 / 3
    assert abs(s["miou"] - (1 / 3 + 3 / 4 + 2 / 3) / 3) < 1e-9 and "iou_c" not in s
    inter, union = segmentation.image_counts(pred[:, None], target[:, None], 4)  # two 1 x 4 images
    assert inter.tolist() == [[1, 2, 0, 0], [0, 1, 2, 0]] and union.sum(0).tolist() == [3, 4, 3, 0]
    assert segmentation.iou_from_counts(inter.sum(0), union.sum(0), ["bg", "a", "b", "c"])["miou"] == s["miou"]


def test_prediction_chunks_do_not_change_the_scores(planted_tools, monkeypatch):
    """Argmax per chunk of at most PREDICT_FLOATS logits: one image at a time scores as one big chunk."""
    t = planted_tools
    splits = {"train": t["dense_set"](20, 3, 0), "test": t["dense_set"](12, 3, 1)}
    big = segmentation.run(t["context"](t["random_backbone"](), splits, dense_epochs=3))
    monkeypatch.setattr(segmentation, "PREDICT_FLOATS", 3 * t["SIZE"] ** 2)  # one image's logits
    ctx = t["context"](t["random_backbone"](), splits, dense_epochs=3)
    small = segmentation.run(ctx)
    assert small == big
    o = ctx.outcomes["miou"]
    assert o["kind"] == "miou" and o["inter"].shape == o["union"].shape == (12, 3)
    pooled = segmentation.iou_from_counts(o["inter"].sum(0), o["union"].sum(0), ["a", "b", "c"])["miou"]
    assert abs(pooled - small["miou"]) < 1e-6
