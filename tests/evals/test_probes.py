import torch

from spatialssl.evals.probes import feature_stats


def test_feature_stats_zero_features_dead_on_probe_train():
    """A unit that is 0 on every probe-train sample but fires on a test sample (a dead ReLU
    of a random-init CNN) standardises to 0, not to ~1e6; live units standardise as usual."""
    g = torch.Generator().manual_seed(0)
    train = torch.randn(100, 4, generator=g).abs()
    train[:, 2] = 0.0
    test = torch.randn(10, 4, generator=g).abs() + 1.0
    mean, scale = feature_stats(train, 0)
    z_tr, z_te = (train - mean) / scale, (test - mean) / scale
    assert torch.isfinite(z_te).all() and (z_te[:, 2] == 0).all() and (z_tr[:, 2] == 0).all()
    live = [0, 1, 3]
    assert torch.allclose(z_tr[:, live].mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z_tr[:, live].std(0), torch.ones(3), atol=1e-5)
    m4, s4 = feature_stats(torch.randn(8, 3, 5, 5, generator=g), (0, 2, 3))  # per-channel maps
    assert m4.shape == s4.shape == (1, 3, 1, 1)
