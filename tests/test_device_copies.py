"""No per-step host-device round trips in iBOT's masked-token selection (issue 9, point 8).

Indexing device tensors with a device boolean mask (``t[mask]``) makes the host wait for
the device to count the True entries. iBOT now selects masked tokens by indices computed
on the host from the host-made masks; its patch loss equals lightly's ``IBOTPatchLoss``.
"""

from __future__ import annotations

import timm
import torch
from lightly.loss import IBOTPatchLoss

from spatialssl import config
from spatialssl.backbones import Backbone
from spatialssl.frameworks import base as fw_base
from spatialssl.frameworks import create_framework
from spatialssl.frameworks.ibot import masked_positions, patch_loss
from spatialssl.views import MultiCrop


def _tiny_vit(cfg: dict) -> Backbone:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1,
                              patch_size=cfg["patch_size"], img_size=cfg["img_size"], dynamic_img_size=True)
    return Backbone(model, "vit", model.num_features, "vit_tiny_patch16_224")


def test_patch_loss_with_host_indices_equals_lightly():
    torch.manual_seed(0)
    mask = torch.zeros(3, 2, 3, dtype=torch.bool)
    mask[0, 0, :2] = True
    mask[2] = True
    t_all, s_all = torch.randn(3 * 6, 5), torch.randn(3 * 6, 5)
    ref_crit, crit = IBOTPatchLoss(output_dim=5, teacher_temp=0.07), IBOTPatchLoss(output_dim=5, teacher_temp=0.07)
    flat = mask.flatten()
    ref = ref_crit(t_all[flat], s_all[flat], mask, teacher_temp=0.05)
    idx, w = masked_positions(mask, torch.device("cpu"))
    ours = patch_loss(crit, t_all[idx], s_all[idx], w, 3, 0.05)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(crit.center.value, ref_crit.center.value)


def test_ibot_forward_indexes_no_tensor_with_a_boolean_mask(monkeypatch):
    monkeypatch.setattr(fw_base, "create_backbone", _tiny_vit)
    cfg = config.resolve(["ibot"], ["backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=32",
                                    "views.global_size=32", "views.local_size=16", "framework.out_dim=64",
                                    "framework.hidden_dim=32", "framework.bottleneck_dim=16", "data.canvas_size=48",
                                    "framework.mask_prob=1.0"])
    torch.manual_seed(0)
    fw = create_framework(cfg, _tiny_vit(cfg["backbone"]), 10)
    g = torch.Generator().manual_seed(0)
    views = MultiCrop(cfg["views"], n_local=2)(torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8, generator=g), g)
    bool_indexed = []
    real = torch.Tensor.__getitem__

    def getitem(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        if self.ndim >= 3 and any(torch.is_tensor(k) and k.dtype == torch.bool for k in keys):
            bool_indexed.append(tuple(self.shape))  # token features [N, T, D] selected by a mask
        return real(self, key)

    monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)
    out = fw(views, 0)
    assert torch.isfinite(out["loss"]) and out["patch_loss"] > 0
    assert bool_indexed == []
