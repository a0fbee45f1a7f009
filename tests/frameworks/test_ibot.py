"""iBOT's pieces: the masked ViT pass, block masks, and the patch loss against a reference."""

from __future__ import annotations

import random

import pytest
import timm
import torch
import torch.nn.functional as F
from lightly.loss import IBOTPatchLoss

from spatialssl.backbones import Backbone
from spatialssl.frameworks.ibot import block_masks, vit_tokens


@pytest.fixture(scope="module")
def vit() -> Backbone:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2, patch_size=8,
                              img_size=32, dynamic_img_size=True)
    return Backbone(model, "vit", model.num_features, "vit_tiny_patch16_224").eval()


def test_vit_tokens_without_mask_equals_backbone_features(vit):
    x = torch.randn(3, 3, 32, 48)  # non-square: the grid is 4 x 6
    cls, patch = vit_tokens(vit, x)
    ref_cls, ref_patch = vit.features(x)  # [B, D], [B, D, h, w]
    assert patch.shape == (3, 24, vit.embed_dim)
    torch.testing.assert_close(cls, ref_cls)
    torch.testing.assert_close(patch, ref_patch.flatten(2).transpose(1, 2))


def test_vit_tokens_mask_replaces_patch_embeddings(vit):
    """Masked images change, unmasked ones do not, and the mask token gets a gradient;
    masking every patch makes the output independent of the image content."""
    x = torch.randn(2, 3, 32, 32)
    token = torch.nn.Parameter(torch.randn(vit.embed_dim))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    cls, patch = vit_tokens(vit, x, mask, token)
    ref_cls, ref_patch = vit_tokens(vit, x)
    torch.testing.assert_close(patch[1], ref_patch[1])
    assert not torch.allclose(patch[0], ref_patch[0])
    patch.sum().backward()
    assert token.grad is not None and token.grad.abs().sum() > 0

    full = torch.ones(2, 4, 4, dtype=torch.bool)
    a, _ = vit_tokens(vit, x, full, token)
    torch.testing.assert_close(a[0], a[1])


def test_block_masks_follow_the_options():
    n, grid = 32, (14, 14)
    m = block_masks(n, grid, mask_prob=0.5, ratio=(0.1, 0.5), device=torch.device("cpu"), seed=3)
    assert m.shape == (n, *grid) and m.dtype == torch.bool
    per_image = m.flatten(1).float().mean(1)
    assert (per_image > 0).sum() == n // 2  # mask_prob of the images
    assert per_image.max() <= 0.5 + 1e-6
    assert per_image[per_image > 0].min() >= 0.05  # blocks may fall a little short of the ratio


def test_block_masks_are_keyed_by_seed_and_leave_global_random_alone():
    random.seed(123)
    expected_next = random.random()
    random.seed(123)
    a = block_masks(8, (4, 4), 0.5, (0.1, 0.5), torch.device("cpu"), seed=7)
    assert random.random() == expected_next  # global state restored
    b = block_masks(8, (4, 4), 0.5, (0.1, 0.5), torch.device("cpu"), seed=7)
    c = block_masks(8, (4, 4), 0.5, (0.1, 0.5), torch.device("cpu"), seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_block_masks_never_empty_on_tiny_grids():
    for seed in range(20):
        assert block_masks(4, (2, 2), 0.5, (0.1, 0.3), torch.device("cpu"), seed=seed).any()


def test_patch_loss_matches_ibot_reference():
    """lightly's IBOTPatchLoss equals iBOT's own formula (bytedance/ibot, ``iBOTLoss``):
    per image, the mean over its masked tokens of the cross-entropy between the centred,
    sharpened teacher and the student; averaged over all images (unmasked ones count 0)."""
    torch.manual_seed(0)
    b, h, w, k, tt, ts = 3, 2, 3, 5, 0.07, 0.1
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    mask[0, 0, :2] = True
    mask[2] = True  # image 1 unmasked
    t_all, s_all = torch.randn(b, h * w, k), torch.randn(b, h * w, k)
    flat = mask.flatten(1)
    loss = IBOTPatchLoss(output_dim=k, teacher_temp=tt, student_temp=ts)(t_all[flat], s_all[flat], mask)

    ref = 0.0
    for i in range(b):  # centre starts at zero
        ce = -(F.softmax(t_all[i] / tt, -1) * F.log_softmax(s_all[i] / ts, -1)).sum(-1)  # [h*w]
        ref += (ce * flat[i]).sum() / flat[i].sum().clamp(min=1)
    torch.testing.assert_close(loss, ref / b)
