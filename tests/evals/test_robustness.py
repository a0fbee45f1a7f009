"""robustness: severity 0 is the clean accuracy; corruptions that erase the planted code hurt."""

import pytest
import torch

from spatialssl.evals import linear, robustness
from spatialssl.evals.corruptions import CORRUPTIONS


def test_clean_accuracy_is_the_linear_protocol_on_the_same_images(planted_tools):
    """With every test image kept, the clean top-1 is the linear protocol's test top-1 (same
    probe, same images), image by image."""
    t = planted_tools
    splits = {"train": t["labelled_set"](160, 3, 0), "test": t["labelled_set"](80, 3, 1)}
    ctx = t["context"](t["random_backbone"](), splits, robust_corruptions=["gaussian_noise"],
                      robust_severities=[1], robust_n_test=0)
    out = robustness.run(ctx)
    clean = ctx.outcomes["clean_top1"]["x"]
    lin = linear.run(ctx)
    assert out["clean_top1"] == lin["top1"] and torch.equal(clean, ctx.outcomes["top1"]["x"])
    assert 0.2 < out["clean_top1"] < 0.8  # a random backbone on random codes: neither 0 nor 1
    assert "ood_top1" not in out  # no ood split here


def test_planted_grid_and_ood(planted_tools):
    t = planted_tools
    test = t["labelled_set"](60, 3, 1)
    splits = {"train": t["labelled_set"](120, 3, 0), "test": test, "ood": t["labelled_set"](40, 3, 2)}
    ctx = t["context"](t["Planted"](6), splits, robust_corruptions=["contrast", "frost"],
                      robust_severities=[1, 5], robust_n_test=50)
    out = robustness.run(ctx)
    assert out["clean_top1"] > 0.98 and out["ood_top1"] > 0.98 and out["n_test"] == 50
    # ImageNet-C contrast keeps each channel's mean, which is the planted code; frost blends in
    # a bright texture that moves it: the code is lost
    assert out["acc_contrast_s5"] > 0.98 and out["acc_frost_s5"] < 0.5
    for key in ("acc_frost", "acc_s1", "acc_s5", "mCA", "rel_mCA"):
        assert 0.0 <= out[key] <= 1.0
    assert abs(out["mCA"] - sum(out[f"acc_{c}_s{s}"] for c in ("contrast", "frost") for s in (1, 5)) / 4) < 1e-6


def test_settings_and_determinism():
    names, sevs = robustness.settings({"robust_corruptions": [], "robust_severities": ["5", "1"]})
    assert names == CORRUPTIONS and sevs == [1, 5]
    with pytest.raises(ValueError, match="unknown"):
        robustness.settings({"robust_corruptions": ["rain"], "robust_severities": []})
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g)
    a = robustness.corrupted(x, "shot_noise", 3)
    robustness._CACHE.clear()  # recomputed from scratch, not the cached object
    b = robustness.corrupted(x.clone(), "shot_noise", 3)
    assert a is not b and torch.equal(a, b) and not torch.equal(a, x)
    assert not torch.equal(robustness.corrupted(x, "shot_noise", 5), a)
