"""Tiny ViTs for the framework tests: ``vit_tiny`` cut to 2 blocks (12 blocks cost seconds
per test on 2 CPU cores), for students, teachers/momentum encoders and the trainer alike
(one torch thread: the root conftest's ``one_thread``)."""

from __future__ import annotations

import pytest
import timm

from spatialssl import backbones
from spatialssl.backbones import Backbone
from spatialssl.engine import trainer
from spatialssl.frameworks import base as fw_base


def create_backbone(cfg: dict) -> Backbone:
    """``backbones.create_backbone``, with ``vit_tiny`` cut to 2 blocks."""
    if cfg["name"] != "vit_tiny":
        return backbones.create_backbone(cfg)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2,
                              patch_size=cfg["patch_size"], img_size=cfg["img_size"], dynamic_img_size=True)
    return Backbone(model, "vit", model.num_features, "vit_tiny_patch16_224")


@pytest.fixture(autouse=True)
def tiny_vits(monkeypatch):
    monkeypatch.setattr(fw_base, "create_backbone", create_backbone)
    monkeypatch.setattr(trainer, "create_backbone", create_backbone)

