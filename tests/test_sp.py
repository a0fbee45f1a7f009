import pytest
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


def test_fallback_pairs_are_left_out_of_the_loss():
    """A pair marked invalid (``Views.sp_valid``) changes neither the loss nor its gradient."""
    torch.manual_seed(0)
    sp = SpatialPrediction(8, (64, 64), (0.05, 0.25))
    g = torch.Generator().manual_seed(0)
    boxes = geometry.sample_boxes(2 * 6, (64, 64), (0.05, 0.25), (0.75, 4 / 3), g).view(2, 6, 4)
    emb = torch.randn(2, 6, 8)
    valid = torch.tensor([[True, True, False, True, False, True]])
    loss = sp(emb, boxes, torch.tensor([[0, 1]]), valid)["loss"]
    keep = valid[0]
    ref = sp(emb[:, keep], boxes[:, keep], torch.tensor([[0, 1]]))["loss"]
    torch.testing.assert_close(loss, ref)
    emb2 = emb.clone()
    emb2[:, ~keep] = 100.0  # whatever fallback pairs hold
    torch.testing.assert_close(sp(emb2, boxes, torch.tensor([[0, 1]]), valid)["loss"], loss)


def test_sp_head_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    sp = SpatialPrediction(16, (64, 64), (0.05, 0.25))
    za, zb = torch.randn(32, 16), torch.randn(32, 16)
    ref = sp.head(za, zb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sp.head(za.bfloat16(), zb.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sp.head(za.bfloat16().float(), zb.bfloat16().float()), atol=1e-6, rtol=0)
    assert (ref - out).abs().max() < 0.05  # only the bf16 rounding of the inputs


def test_config_warns_on_fallbacks_and_upsampled_views():
    from spatialssl import config
    from spatialssl.sp import config_warnings

    for preset in ["demo", "dino_sp", "ibot_sp", "mocov3_sp", "simclr_sp", "byol_sp", "demo_dino"]:
        assert config_warnings(config.resolve([preset])) == [], preset
    w = config_warnings(config.resolve([], ["views.local_scale=[0.3,0.6]", "sp.pair_candidates=4",
                                             "data.canvas_size=64", "views.local_size=16", "views.global_size=32"]))
    assert len(w) == 1 and "fallbacks" in w[0] and "sp.pair_candidates" in w[0]
    w = config_warnings(config.resolve([], ["data.canvas_size=64"]))  # 224 / 96 px views from 64 px canvases
    assert len(w) == 2 and "global views" in w[0] and "local views (96 px) are upsampled 2.4-6.7x" in w[1]


def test_views_built_for_training_log_the_fallback_warning(caplog, monkeypatch):
    """``config.resolve`` imports no torch, so the sampler's fallback-rate warning is logged
    where views are built from the config (the trainer's and a user's own loop), once per
    process, with the upsampling ones."""
    import logging

    from spatialssl import config
    from spatialssl.views import MultiCrop

    monkeypatch.setattr(config, "_warned", set())
    cfg = config.resolve([], ["views.local_scale=[0.3,0.6]", "sp.pair_candidates=4", "data.canvas_size=64",
                              "views.local_size=16", "views.global_size=32"])
    with caplog.at_level(logging.WARNING, logger="spatialssl"):
        MultiCrop.from_config(cfg)
        MultiCrop.from_config(cfg)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "fallbacks" in said[0]


def test_shuffled_targets_control_carries_no_pair_information():
    """``sp.targets: shuffled`` (the control arm): the model that fits SP's targets 10x
    (test above) cannot fit them once each step's targets are permuted across pairs, and its
    R² stays near 0. Plant: the permutation removed -> the loss falls as in SP, fails."""
    from spatialssl import config

    torch.manual_seed(0)
    n, hw = 64, (32, 32)
    g = torch.Generator().manual_seed(0)
    a, b, _ = geometry.sample_disjoint_pairs(n, hw, (0.05, 0.25), (0.75, 4 / 3), 0.0, 16, g)
    boxes = torch.stack([a, b])
    feats = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 64, (boxes[..., 2:] - boxes[..., :2]) / 32], -1)
    enc = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    sp = SpatialPrediction(32, hw, (0.05, 0.25), hidden_dim=64, shuffled=True)
    opt = torch.optim.Adam([*enc.parameters(), *sp.parameters()], lr=3e-3)
    pairs = torch.tensor([[0, 1]])
    first = None
    for _ in range(400):
        out = sp(enc(feats), boxes, pairs)
        first = first if first is not None else out["loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss"].item() > first / 2 and max(out[f"r2_{c}"].item() for c in ("dx", "dy", "ds")) < 0.2
    # the config key: geometry (default) or shuffled, named in the error otherwise
    cfg = config.resolve(["demo"], ["sp.enabled=true", "sp.targets=shuffled"])
    assert SpatialPrediction.from_config(cfg["sp"], cfg["views"], 8, (64, 64)).shuffled
    assert not SpatialPrediction.from_config(config.resolve(["demo"])["sp"], cfg["views"], 8, (64, 64)).shuffled
    with pytest.raises(config.ConfigError, match="sp.targets.*geometry, shuffled"):
        config.resolve(["demo"], ["sp.targets=random"])
