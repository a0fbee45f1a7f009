import torch

from spatialssl import geometry
from spatialssl.sp import SPHead, SpatialPrediction, target_stats


def test_targets_standardised_by_sampler_constants():
    sp = SpatialPrediction(8, (64, 64), (0.05, 0.25), antisymmetric=False)
    mean, std = target_stats((64, 64), (0.05, 0.25), (0.75, 4 / 3))
    assert torch.allclose(sp.t_mean, mean) and torch.allclose(sp.t_std, std)
    g = torch.Generator().manual_seed(0)
    a, b, _ = geometry.sample_disjoint_pairs(5000, (64, 64), (0.05, 0.25), (0.75, 4 / 3), 0.0, 16, g)
    t = sp.targets(torch.stack([a, b]), torch.tensor([[0, 1]]))
    assert t.mean(0).abs().max() < 0.05 and (t.std(0) - 1).abs().max() < 0.05


def test_swapping_views_negates_targets_and_antisymmetric_predictions():
    sp = SpatialPrediction(16, (64, 64), (0.05, 0.25), antisymmetric=True)
    g = torch.Generator().manual_seed(0)
    boxes = geometry.sample_boxes(2 * 5, (64, 64), (0.05, 0.25), (0.75, 4 / 3), g).view(2, 5, 4)
    ab = sp.targets(boxes, torch.tensor([[0, 1]]))
    ba = sp.targets(boxes, torch.tensor([[1, 0]]))
    assert torch.allclose(ab, -ba, atol=1e-6)
    za, zb = torch.randn(5, 16), torch.randn(5, 16)
    assert torch.allclose(sp.head(za, zb), -sp.head(zb, za), atol=1e-6)
    plain = SPHead(16, antisymmetric=False)
    assert not torch.allclose(plain(za, zb), -plain(zb, za), atol=1e-3)


def test_sp_loss_and_r2_logs():
    sp = SpatialPrediction(16, (64, 64), (0.05, 0.25))
    g = torch.Generator().manual_seed(0)
    boxes = geometry.sample_boxes(4 * 6, (64, 64), (0.05, 0.25), (0.75, 4 / 3), g).view(4, 6, 4)
    out = sp(torch.randn(4, 6, 16), boxes, torch.tensor([[0, 1], [2, 3]]))
    assert out["loss"].requires_grad and out["loss"].ndim == 0
    assert {"r2_dx", "r2_dy", "r2_ds", "loss_zero"} <= set(out)


def test_tiny_model_fits_sp_on_fixed_data():
    """A small encoder + SP head learns (dx, dy, ds) of fixed crops: loss falls 10x."""
    torch.manual_seed(0)
    n, hw = 64, (32, 32)
    g = torch.Generator().manual_seed(0)
    a, b, _ = geometry.sample_disjoint_pairs(n, hw, (0.05, 0.25), (0.75, 4 / 3), 0.0, 16, g)
    boxes = torch.stack([a, b])  # [2, n, 4]
    # "views" that carry their box geometry (centre and size), as an encoder would see it
    feats = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 64, (boxes[..., 2:] - boxes[..., :2]) / 32], -1)
    enc = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    sp = SpatialPrediction(32, hw, (0.05, 0.25), hidden_dim=64)
    opt = torch.optim.Adam([*enc.parameters(), *sp.parameters()], lr=3e-3)
    pairs = torch.tensor([[0, 1]])
    first = None
    for _ in range(400):
        loss = sp(enc(feats), boxes, pairs)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10
