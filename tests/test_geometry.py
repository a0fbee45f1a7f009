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


def test_sp_targets_exact_on_hand_made_boxes():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5), area 100
    b = torch.tensor([[20.0, 30.0, 40.0, 50.0]])  # centre (30, 40), area 400
    t = geometry.sp_targets(a, b, (100, 50), "canvas")
    assert torch.allclose(t, torch.tensor([[25 / 50, 35 / 100, math.log(2.0)]]))
    t_ref = geometry.sp_targets(a, b, (100, 50), "reference")
    assert torch.allclose(t_ref, torch.tensor([[2.5, 3.5, math.log(2.0)]]))
    # swapping a and b negates canvas targets
    assert torch.allclose(geometry.sp_targets(b, a, (100, 50)), -t)


def test_flip_boxes_is_an_involution():
    b = torch.tensor([[1.0, 2.0, 5.0, 9.0]])
    f = geometry.flip_boxes(b, 20)
    assert torch.allclose(f, torch.tensor([[15.0, 2.0, 19.0, 9.0]]))
    assert torch.allclose(geometry.flip_boxes(f, 20), b)
