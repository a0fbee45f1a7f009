"""SP end to end: the targets SP trains on agree with what the views show.

Each test here was checked against planted bugs (docs/sp.md "Tests that fail on wrong SP"):
targets negated, targets from another image's boxes, per-image flips disabled, colour
augmentation disabled; each makes at least one of them fail.
"""

from __future__ import annotations

import pytest
import torch

from spatialssl import config, geometry
from spatialssl.sp import SpatialPrediction
from spatialssl.views import IMAGENET_MEAN, IMAGENET_STD, MultiCrop, cut

H, W = 48, 80  # non-square: dx and dy are normalised by different sides


def _views_cfg(**kw) -> dict:
    """The defaults' augmentation at small sizes; ``kw`` overrides views keys."""
    base = ["views.global_size=16", "views.local_size=16", "views.local_scale=[0.05,0.25]",
            "views.local_flip=per_image", "data.canvas_size=80"]
    return config.resolve([], base + [f"views.{k}={v}" for k, v in kw.items()])


def _plain(**kw) -> dict:
    """No photometric augmentation (pixel values stay readable)."""
    return _views_cfg(color_jitter=0.0, grayscale=0.0, blur="[0.0,0.0]", local_blur=0.0, solarize=0.0, **kw)


def _ramps(b: int) -> torch.Tensor:
    """uint8 [b, 3, H, W] canvases: red = x ramp, green = y ramp, blue = image index."""
    x = ((torch.arange(W) + 0.5) / W * 255).view(1, W).expand(H, W)
    y = ((torch.arange(H) + 0.5) / H * 255).view(H, 1).expand(H, W)
    out = torch.empty(b, 3, H, W)
    out[:, 0], out[:, 1] = x, y
    out[:, 2] = (torch.arange(b) * 255 / max(b - 1, 1)).view(b, 1, 1)
    return out.round().to(torch.uint8)


def _unnormalise(v: torch.Tensor) -> torch.Tensor:
    return v * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def test_targets_match_pixels_on_ramp_canvases():
    """Per image, flipped or not, the offsets read off the views' pixels (mean of a
    coordinate ramp = the box centre in the frame the network sees) equal SP's targets."""
    cfg = _plain()
    sp = SpatialPrediction(8, (H, W), tuple(cfg["views"]["local_scale"]), min_gap=3.0)
    b = 24
    mc = MultiCrop(cfg["views"], n_local=4, min_gap=3.0)
    v = mc(_ramps(b), torch.Generator().manual_seed(0))
    flipped = v.local_flipped
    assert 0 < int(flipped.sum()) < b  # per_image: some images are flipped, some not

    pix = _unnormalise(v.locals).mean(dim=(-2, -1))  # [L, B, 3] in [0, 1]
    cx = torch.where(flipped, 1 - pix[..., 0], pix[..., 0])  # the ramp runs right to left in a mirrored image
    cy = pix[..., 1]
    assert torch.allclose(pix[..., 2], (torch.arange(b) / (b - 1)).expand(4, b), atol=3e-3)  # each view from its image
    targets = sp.targets(v.local_boxes, v.sp_pairs) * sp.t_std + sp.t_mean  # [P*B, 3], as SP trains on them
    a_i, b_i = v.sp_pairs[:, 0], v.sp_pairs[:, 1]
    dx = (cx[b_i] - cx[a_i]).reshape(-1)
    dy = (cy[b_i] - cy[a_i]).reshape(-1)
    assert (targets[:, 0].abs() > 0.05).float().mean() > 0.5  # not a trivial geometry
    torch.testing.assert_close(targets[:, 0], dx, atol=4e-3, rtol=0)
    torch.testing.assert_close(targets[:, 1], dy, atol=4e-3, rtol=0)


def test_per_image_flip_mirrors_the_views_and_their_boxes():
    """``per_image``: a flipped image's local views are its mirrored views, cut at the
    boxes mirrored into the original frame; about half the images are flipped."""
    cfg = _plain()
    c = torch.randint(0, 256, (32, 3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    v = MultiCrop(cfg["views"], n_local=2)(c, torch.Generator().manual_seed(3))
    f = v.local_flipped
    assert 8 <= int(f.sum()) <= 24
    x = c.float() / 255
    for i in range(2):
        boxes = v.local_boxes[i]
        mirrored = geometry.flip_boxes(boxes, W)
        expect = torch.where(f.view(-1, 1, 1, 1), cut(x, mirrored, 16).flip(-1), cut(x, boxes, 16))
        torch.testing.assert_close(_unnormalise(v.locals[i]), expect, atol=1e-4, rtol=0)
    # ...which is not what the unflipped boxes would show
    assert not torch.allclose(_unnormalise(v.locals[0][f]), cut(x[f], v.local_boxes[0][f], 16), atol=1e-2)


def test_colour_augmentation_is_on_and_independent_per_view():
    """Colour jitter on (p = 1): every local view's colours differ from its plain cut, and
    the two views of a pair get different jitter (SP must not match views by colour)."""
    cfg = _views_cfg(color_jitter=1.0, grayscale=0.0, blur="[0.0,0.0]", local_blur=0.0, local_flip="none")
    c = torch.randint(0, 256, (16, 3, H, W), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    c = torch.nn.functional.avg_pool2d(c.float(), 5, 1, 2).to(torch.uint8)  # smooth: colour, not noise
    v = MultiCrop(cfg["views"], n_local=2)(c, torch.Generator().manual_seed(5))
    x = c.float() / 255
    plain = torch.stack([cut(x, v.local_boxes[i], 16) for i in range(2)])  # [2, B, 3, s, s]
    ratio = _unnormalise(v.locals).mean(dim=(-2, -1)) / plain.mean(dim=(-2, -1)).clamp(min=1e-3)  # [2, B, 3]
    assert ((ratio - 1).abs().amax(-1) > 0.03).float().mean() > 0.9
    assert ((ratio[0] - ratio[1]).abs().amax(-1) > 0.03).float().mean() > 0.8


@pytest.mark.parametrize("offsets", ["canvas", "reference"])
def test_swapping_the_views_of_a_pair_negates_targets_and_predictions(offsets):
    sp = SpatialPrediction(16, (H, W), (0.05, 0.25), offsets=offsets, min_gap=3.0)
    g = torch.Generator().manual_seed(0)
    a, b, _ = geometry.sample_pairs(64, (H, W), (0.05, 0.25), (0.75, 4 / 3), 0.0, 64, g, min_gap=3.0)
    boxes = torch.stack([a, b])
    ab, ba = sp.targets(boxes, torch.tensor([[0, 1]])), sp.targets(boxes, torch.tensor([[1, 0]]))
    torch.testing.assert_close(ab, -ba)
    emb = torch.randn(2, 64, 16)
    torch.testing.assert_close(sp.head(emb[0], emb[1]), -sp.head(emb[1], emb[0]))
    # an antisymmetric head can fit them exactly: the targets' mean is zero by construction
    assert torch.equal(sp.t_mean, torch.zeros(3))


def test_sp_batch_r2_rises_on_real_views():
    """A small CNN + SP head on PartsWorld views (the demo's local views, colour
    augmentation on, per-image flips) gets its batch R^2 of dy well above zero (the value
    of predicting the mean) in 40 CPU steps: the targets carry information the views
    show (targets from another image's boxes stay at R^2 <= 0)."""
    from spatialssl.backbones import create_backbone
    from spatialssl.data import load_split

    cfg = config.resolve(["demo"], ["data.n_train=64", "data.n_eval=8", "sp.enabled=true"])
    data = load_split(cfg["data"], "train", progress=False)
    torch.manual_seed(0)
    net = create_backbone({**cfg["backbone"], "width": 8, "stem_width": 8})
    sp = SpatialPrediction.from_config(cfg["sp"], cfg["views"], net.embed_dim, data.size)
    mc = MultiCrop(cfg["views"], n_local=2, min_gap=cfg["sp"]["min_gap"])
    images = data.images[:32]
    opt = torch.optim.AdamW([*net.parameters(), *sp.parameters()], lr=3e-3)
    r2 = []
    for step in range(40):
        v = mc(images, torch.Generator().manual_seed(step))
        emb = net(v.locals.flatten(0, 1)).view(2, 32, -1)
        out = sp(emb, v.local_boxes, v.sp_pairs, v.sp_valid)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        r2.append(torch.stack([out["r2_dx"], out["r2_dy"]]))
    last = torch.stack(r2[-10:]).mean(0)
    assert last[1] > 0.2, f"batch R^2 dx, dy over the last 10 steps: {last.tolist()}"


def test_trainer_logs_the_fallback_rate_between_log_steps(tmp_path, tiny_overrides, random_canvases):
    """``sp_fallback_rate``: fallback pairs over all pairs since the last log step (1.0
    where no two boxes of 60-90% of the canvas can be disjoint; 0 at the usual scale)."""
    import json

    from spatialssl.engine.trainer import pretrain

    for scale, expect in (("[0.6,0.9]", 1.0), ("[0.02,0.05]", 0.0)):
        cfg = config.resolve([], [*tiny_overrides, "framework.name=simclr", "sp.enabled=true", "train.log_every=2",
                                  "train.steps=2", f"views.local_scale={scale}", f"out_dir={tmp_path / scale}"])
        rows = [json.loads(x) for x in open(pretrain(cfg, data=random_canvases) / "metrics.jsonl")]
        rates = [r["sp_fallback_rate"] for r in rows if "sp_fallback_rate" in r]
        assert rates and all(r == expect for r in rates), (scale, rates)
