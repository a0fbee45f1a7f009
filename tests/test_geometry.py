import math

import pytest
import torch

from spatialssl import geometry


def test_boxes_inside_canvas_and_scale():
    g = torch.Generator().manual_seed(0)
    b = geometry.sample_boxes(5000, (48, 64), (0.1, 0.3), (0.75, 4 / 3), g)
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= 64 + 1e-4).all() and (b[:, 3] <= 48 + 1e-4).all()
    frac = geometry.box_area(b) / (48 * 64)
    assert frac.min() >= 0.1 - 1e-3 and frac.max() <= 0.3 + 1e-3
    r = (b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1])
    assert r.min() >= 0.75 - 1e-3 and r.max() <= 4 / 3 + 1e-3


def test_same_seed_same_boxes():
    a = geometry.sample_boxes(10, (32, 32), (0.1, 0.5), (0.75, 1.33), torch.Generator().manual_seed(3))
    b = geometry.sample_boxes(10, (32, 32), (0.1, 0.5), (0.75, 1.33), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("max_iou", [0.0, 0.2])
def test_pair_sampler_respects_max_iou(max_iou):
    g = torch.Generator().manual_seed(0)
    a, b, fallbacks = geometry.sample_disjoint_pairs(4000, (64, 64), (0.05, 0.2), (0.75, 4 / 3), max_iou, 16, g)
    iou = geometry.box_iou(a, b)
    over = iou > max_iou + 1e-6
    # every pair over the limit is a counted fallback, and fallbacks are rare at this scale
    assert int(over.sum()) <= fallbacks
    assert fallbacks < 0.05 * 4000


def test_pair_sampler_counts_fallbacks_when_impossible():
    g = torch.Generator().manual_seed(0)
    a, b, fallbacks = geometry.sample_disjoint_pairs(100, (32, 32), (0.8, 1.0), (1.0, 1.0), 0.0, 4, g)
    assert fallbacks == 100  # two boxes of >= 80% of the canvas always overlap
    _, _, valid = geometry.sample_pairs(100, (32, 32), (0.8, 1.0), (1.0, 1.0), 0.0, 4, g)
    assert not valid.any()


def test_pair_sampler_is_exchangeable_and_keeps_the_gap():
    """a and b follow one law (mean ds ~ 0, same mean area and centre), and every valid
    pair is at least min_gap px apart; at the old default scale fallbacks are now rare."""
    g = torch.Generator().manual_seed(0)
    a, b, valid = geometry.sample_pairs(20000, (64, 64), (0.05, 0.4), (0.75, 4 / 3), 0.0, 64, g, min_gap=3.0)
    assert 1 - valid.float().mean() < 0.01
    a, b = a[valid], b[valid]
    t = geometry.sp_targets(a, b, (64, 64))
    assert (t.mean(0) / t.std(0)).abs().max() < 0.03  # dx, dy, ds centred
    area_a, area_b = geometry.box_area(a), geometry.box_area(b)
    assert abs(area_a.mean() / area_b.mean() - 1) < 0.02
    assert (geometry.box_separation(a, b) >= 3.0 - 1e-4).all()
    with pytest.raises(ValueError, match="sp.min_gap"):
        geometry.sample_pairs(4, (64, 64), (0.05, 0.4), (0.75, 4 / 3), 0.2, 8, g, min_gap=3.0)


def test_min_gap_of_3px_shares_no_pixel_after_resampling():
    """3 px apart, two views read no common canvas pixel and no two neighbouring ones
    (docs/sp.md "Gap"), even enlarged 2-5x."""
    from spatialssl.views import cut

    g = torch.Generator().manual_seed(0)
    a, b, valid = geometry.sample_pairs(3000, (64, 64), (0.04, 0.16), (0.75, 4 / 3), 0.0, 64, g, min_gap=3.0)
    tight = (geometry.box_separation(a, b) < 3.25) & valid
    a, b = a[tight][:64], b[tight][:64]
    foot = []
    for boxes in (a, b):
        x = torch.zeros(len(boxes), 1, 64, 64, requires_grad=True)
        cut(x, boxes, 96).sum().backward()  # enlarged 2-5x: the widest footprint
        foot.append(x.grad[:, 0] != 0)
    near_a = torch.nn.functional.max_pool2d(foot[0].float()[:, None], 3, 1, 1)[:, 0] > 0
    assert len(a) > 10 and not (near_a & foot[1]).any()


def test_sp_targets_exact_on_hand_made_boxes():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5), area 100
    b = torch.tensor([[20.0, 30.0, 40.0, 50.0]])  # centre (30, 40), area 400
    t = geometry.sp_targets(a, b, (100, 50), "canvas")
    assert torch.allclose(t, torch.tensor([[25 / 50, 35 / 100, math.log(2.0)]]))
    t_ref = geometry.sp_targets(a, b, (100, 50), "reference")
    # in units of the geometric-mean box side: sqrt(10 * 20)
    s = math.sqrt(10 * 20)
    assert torch.allclose(t_ref, torch.tensor([[25 / s, 35 / s, math.log(2.0)]]))


@pytest.mark.parametrize("offsets", ["canvas", "reference"])
def test_swapping_boxes_negates_targets(offsets):
    g = torch.Generator().manual_seed(0)
    a = geometry.sample_boxes(500, (48, 80), (0.02, 0.3), (0.5, 2.0), g)
    b = geometry.sample_boxes(500, (48, 80), (0.02, 0.3), (0.5, 2.0), g)
    torch.testing.assert_close(geometry.sp_targets(b, a, (48, 80), offsets), -geometry.sp_targets(a, b, (48, 80), offsets))


def test_flip_boxes_is_an_involution():
    b = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    f = geometry.flip_boxes(b, 20)
    assert torch.allclose(f, torch.tensor([[15.0, 2.0, 19.0, 9.0]]))
    assert torch.allclose(geometry.flip_boxes(f, 20), b)
