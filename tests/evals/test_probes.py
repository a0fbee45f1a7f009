import math

import pytest
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


# ---- kNN: weights and k on hand-computed cases -------------------------------------------

def _at_cos(cos: list[float]) -> torch.Tensor:
    """2-D unit vectors whose cosine with the query [1, 0] is each of ``cos``."""
    c = torch.tensor(cos, dtype=torch.float64)
    return torch.stack([c, (1 - c ** 2).sqrt()], 1).float()


def test_knn_temperature_weights_by_exp_cos_over_t():
    """One class-0 neighbour at cos 0.9 against two class-1 neighbours at cos 0.6 (k = 3):
    exp(0.9/0.07) = 3.8e5 outweighs 2 exp(0.6/0.07) = 1.1e4, so class 0; weighting by
    exp(cos * t) (an inverted temperature: 1.065 vs 2 x 1.043) or by counts gives class 1."""
    from spatialssl.evals.probes import knn_predict, knn_votes

    train, y, q = _at_cos([0.9, 0.6, 0.6]), torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]])
    votes = knn_votes(train, y, q, 2, k=3, t=0.07)
    expect = torch.tensor([[math.exp(0.9 / 0.07), 2 * math.exp(0.6 / 0.07)]])
    assert torch.allclose(votes.double(), expect.double(), rtol=1e-4)
    assert knn_predict(train, y, q, 2, k=3, t=0.07).tolist() == [0]


def test_knn_uses_k_neighbours_not_one():
    """Nearest is class 0 (cos 0.90); the next two are class 1 (0.89, 0.88): with k = 3 and
    T = 0.07 class 1 wins (e^12.71 + e^12.57 > e^12.86); 1-NN would say class 0. A fourth,
    farther class-0 point outside the top 3 must not vote."""
    from spatialssl.evals.probes import knn_predict, knn_votes

    train, y = _at_cos([0.90, 0.89, 0.88, 0.5]), torch.tensor([0, 1, 1, 0])
    q = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, y, q, 2, k=3, t=0.07).tolist() == [1]
    votes = knn_votes(train, y, q, 2, k=3, t=0.07)
    assert abs(votes[0, 0].item() - math.exp(0.90 / 0.07)) < 1e-3 * votes[0, 0].item()  # 0.5 left out


def test_knn_chunked_topk_equals_full():
    """Chunking over queries and over the bank (merging top-k) gives the full computation's votes."""
    from spatialssl.evals.probes import knn_votes

    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 8, generator=g), torch.randn(50, 8, generator=g)
    y = torch.randint(0, 5, (300,), generator=g)
    full = knn_votes(train, y, test, 5, k=20, t=0.07, chunk=1000, bank_chunk=1000)
    sim = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    w, idx = sim.topk(20, dim=1)
    ref = torch.zeros(50, 5).scatter_add_(1, y[idx], (w / 0.07).exp())
    assert torch.allclose(full, ref, rtol=1e-5)
    chunked = knn_votes(train, y, test, 5, k=20, t=0.07, chunk=7, bank_chunk=13)
    assert torch.allclose(chunked, ref, rtol=1e-5)


# ---- linear probe: lr chosen on probe-train only -------------------------------------------

def _skewed(n: int, seed: int):
    """x1 = y + n, x2 = n with a shared noise n ~ N(0, 3^2), y = +-1: x1 - x2 separates the
    classes exactly, but the first gradient steps from zero (the class-mean direction, x1
    alone) are right only ~63% of the time. A too-small lr stays there."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    noise = torch.randn(n, generator=g) * 3
    return torch.stack([(2 * y - 1) + noise, noise], 1), y


@pytest.mark.parametrize("lrs", [[1e-7, 0.5], [0.5, 1e-7]])
def test_linear_probe_picks_the_lr_that_works(lrs):
    """A grid of a useless lr (1e-7: stuck at the class-mean direction) and a good one: the
    held-out probe-train accuracy picks the good one, wherever it sits in the grid."""
    from spatialssl.evals.probes import train_linear

    x, y = _skewed(400, 0)
    head, info = train_linear(x, y, 2, lrs, epochs=20, seed=0)
    assert info["best_lr"] == 0.5, info
    assert info["val_acc_by_lr"]["0.5"] > 0.9 > info["val_acc_by_lr"]["1e-07"] + 0.15
    with torch.no_grad():
        assert (head(x).argmax(1) == y).float().mean() > 0.9


def test_linear_lr_selection_never_sees_the_test_split(planted_tools):
    """Scrambling the test labels changes the test top-1, never the lr chosen or its val accuracies."""
    from spatialssl.evals import linear

    t = planted_tools
    tr, te = t["labelled_set"](120, 3, 0), t["labelled_set"](60, 3, 1)
    a = linear.run(t["context"](t["Planted"](6), {"train": tr, "test": te}, linear_lr="[0.0000001,0.5]", linear_epochs=5))
    te.labels = (te.labels + 1) % 3
    b = linear.run(t["context"](t["Planted"](6), {"train": tr, "test": te}, linear_lr="[0.0000001,0.5]", linear_epochs=5))
    assert a["best_lr"] == b["best_lr"] and a["val_acc_by_lr"] == b["val_acc_by_lr"]
    assert a["top1"] > 0.9 and b["top1"] < 0.1


def test_chance_counts_the_classes_the_test_split_holds(planted_tools):
    """A label id no image has (an empty class folder keeps its id) does not lower chance:
    1 / classes present, not 1 / (max label + 1) (issue 28; plant: 1 / n_cls -> 1/4, fails)."""
    from spatialssl.evals import knn, linear

    t = planted_tools
    tr, te = t["labelled_set"](64, 4, seed=0, variants=1), t["labelled_set"](32, 4, seed=1, variants=1)
    keep = te.labels != 2  # class 2 absent from the test split, present in train
    te = te.subset(keep.nonzero().flatten())
    ctx = t["context"](t["Planted"](n_codes=4), {"train": tr, "test": te})
    assert knn.run(ctx)["chance"] == pytest.approx(1 / 3)
    assert linear.run(ctx)["chance"] == pytest.approx(1 / 3)
