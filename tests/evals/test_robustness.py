"""robustness: severity 0 is the clean accuracy; corruptions that erase the planted code hurt."""

import pytest
import torch

from spatialssl.evals import linear, robustness
from spatialssl.evals.corruptions import CORRUPTIONS


def test_severity0_equals_clean_accuracy(planted_tools):
    t = planted_tools
    splits = {"train": t["labelled_set"](160, 3, 0), "test": t["labelled_set"](80, 3, 1)}
    ctx = t["context"](t["random_backbone"](), splits, robust_corruptions=["gaussian_noise"],
                      robust_severities=[1], robust_n_test=0)
    out = robustness.run(ctx)
    assert out["acc_s0"] == out["clean_top1"] == linear.run(ctx)["top1"]
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
    assert abs(out["mCA"] - sum(out[f"acc_{c}_s{s}"] for c in ("contrast", "frost") for s in (1, 5)) / 4) < 1e-9


def test_settings_and_determinism():
    names, sevs = robustness.settings({"robust_corruptions": [], "robust_severities": ["5", "1"]})
    assert names == CORRUPTIONS and sevs == [1, 5]
    with pytest.raises(ValueError, match="unknown"):
        robustness.settings({"robust_corruptions": ["rain"], "robust_severities": []})
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(robustness.corrupted(x, "shot_noise", 3), robustness.corrupted(x, "shot_noise", 3))
