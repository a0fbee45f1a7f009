"""Backbones from timm, behind one feature API.

``create_backbone(cfg)`` builds a ViT (``vit_tiny/small/base``, any patch size,
``dynamic_img_size=True`` so global and local views share one model) or a ResNet
(``resnet18/50``, optional small-image stem; ``resnet_mini``, a narrow 4-stage
BasicBlock ResNet for CPU demos). Every backbone answers:

- ``forward(x) -> [B, D]``: the pooled embedding (ViT CLS token, ResNet average pool);
- ``features(x) -> (global [B, D], patch [B, D, h, w])``: pooled and spatial features
  (ViT patch tokens are reshaped to their grid, so both families look alike).

``export_timm_state_dict`` writes the weights as a timm-loadable safetensors file.
"""

from __future__ import annotations

import timm
import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, ResNet
from .config import ConfigError

VIT_NAMES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
             "vit_base": "vit_base_patch16_224"}
RESNET_NAMES = {"resnet18": "resnet18", "resnet50": "resnet50"}


class Backbone(nn.Module):
    """A timm model with one feature API (see module docstring).

    Attributes:
        model: the timm model (``num_classes=0``).
        kind: ``"vit"`` or ``"cnn"``.
        embed_dim: D.
        timm_name: the timm architecture name, for export.
    """

    def __init__(self, model: nn.Module, kind: str, embed_dim: int, timm_name: str) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.embed_dim = embed_dim
        self.timm_name = timm_name

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, 3, H, W] -> (global [B, D], patch [B, D, h, w])."""
        if self.kind == "vit":
            tokens = self.model.forward_features(x)  # [B, prefix + h*w, D], after the final norm
            n_prefix = self.model.num_prefix_tokens
            p = self.model.patch_embed.patch_size
            h, w = x.shape[-2] // p[0], x.shape[-1] // p[1]
            patch = tokens[:, n_prefix:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
            return tokens[:, 0], patch
        fmap = self.model.forward_features(x)  # [B, D, h, w]
        return fmap.mean(dim=(2, 3)), fmap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] -> pooled embedding [B, D]."""
        if self.kind == "vit":
            return self.model.forward_features(x)[:, 0]
        return self.model.forward_features(x).mean(dim=(2, 3))


def _small_stem(model: ResNet, stem_width: int) -> None:
    """3x3 stride-1 stem and no max-pool, for inputs of <= 64 px (CIFAR-style)."""
    model.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def create_backbone(cfg: dict) -> Backbone:
    """Build the backbone named by the ``backbone`` config section (see config.DEFAULTS).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    name = cfg["name"]
    if name in VIT_NAMES:
        model = timm.create_model(VIT_NAMES[name], pretrained=False, num_classes=0, patch_size=cfg["patch_size"],
                                  img_size=cfg["img_size"], dynamic_img_size=True,
                                  drop_path_rate=cfg["drop_path"])
        return Backbone(model, "vit", model.num_features, VIT_NAMES[name])
    if name in RESNET_NAMES:
        model = timm.create_model(RESNET_NAMES[name], pretrained=False, num_classes=0,
                                  drop_path_rate=cfg["drop_path"])
        if cfg["small_stem"]:
            _small_stem(model, model.conv1.out_channels)
        return Backbone(model, "cnn", model.num_features, RESNET_NAMES[name])
    if name == "resnet_mini":
        w = cfg["width"]
        stem = cfg.get("stem_width", 0)  # 0: timm's 64-channel stem (configs saved before the key existed)
        kw = dict(stem_type="deep", stem_width=stem // 2) if stem else {}
        model = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), num_classes=0, channels=(w, 2 * w, 4 * w, 8 * w),
                       drop_path_rate=cfg["drop_path"], **kw)
        if cfg["small_stem"]:
            _small_stem(model, model.bn1.num_features)
        return Backbone(model, "cnn", model.num_features, "resnet_mini")
    known = ", ".join([*VIT_NAMES, *RESNET_NAMES, "resnet_mini"])
    raise ConfigError(f"unknown backbone '{name}' (known: {known})")


def export_timm_state_dict(backbone: Backbone, path: str) -> None:
    """Save the backbone's weights as safetensors, loadable with
    ``timm.create_model(name, num_classes=0, ...).load_state_dict(load_file(path))``
    (same constructor arguments as in training, e.g. patch_size; small-stem ResNets
    need the same stem replacement)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    save_file(state, path, metadata={"timm_name": backbone.timm_name, "embed_dim": str(backbone.embed_dim)})
