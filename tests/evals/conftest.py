"""Planted backbones and small synthetic canvas sets for the evaluation tests.

A *planted* backbone reads a quantity written into the pixels (a class id, a slot, a depth)
and exposes it in its features, so a protocol run on it has a known answer (near 100%, or
exact); a random-init backbone on images that carry no signal gives the chance floor.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialssl import config
from spatialssl.backbones import create_backbone
from spatialssl.data.canvases import CanvasSet
from spatialssl.evals.features import EvalContext
from spatialssl.views import IMAGENET_MEAN, IMAGENET_STD

SIZE = 24  # canvas side = eval image size, so to_input does not resample
STEP = 20  # grey levels per code value written into a channel


def unnormalise(x: torch.Tensor, c: int) -> torch.Tensor:
    """Channel ``c`` of a normalised input back to 0..255."""
    return (x[:, c] * IMAGENET_STD[c] + IMAGENET_MEAN[c]) * 255.0


class Planted(nn.Module):
    """Backbone API over a code written in channel ``channel`` (value = code * STEP).

    Global features: one-hot of the image's mean code ([B, n_codes]). Patch features at
    stride ``stride``: one-hot of each pixel's code (channel 1), and channel 2 as a raw value
    (for depth), average-pooled: [B, n_codes + 1, H/stride, W/stride].
    """

    def __init__(self, n_codes: int, channel: int = 0, stride: int = 2) -> None:
        super().__init__()
        self.n_codes, self.channel, self.stride = n_codes, channel, stride
        self.embed_dim = n_codes

    def _code(self, v: torch.Tensor) -> torch.Tensor:
        return (v / STEP).round().long().clamp(0, self.n_codes - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(self._code(unnormalise(x, self.channel).mean((1, 2))), self.n_codes).float()

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        onehot = F.one_hot(self._code(unnormalise(x, 1)), self.n_codes).permute(0, 3, 1, 2).float()
        dense = torch.cat([onehot, unnormalise(x, 2)[:, None] / 255.0], 1)
        return self.forward(x), F.avg_pool2d(dense, self.stride)


def labelled_set(n: int, n_cls: int, seed: int, variants: int = 2) -> CanvasSet:
    """Noise images whose red channel holds the fine label (code = fine id); coarse = fine // variants."""
    g = torch.Generator().manual_seed(seed)
    fine = torch.randint(0, n_cls * variants, (n,), generator=g)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    images[:, 0] = (fine * STEP).to(torch.uint8)[:, None, None]
    return CanvasSet(images, labels=fine // variants, fine_labels=fine)


def dense_set(n: int, n_cls: int, seed: int, block: int = 8) -> CanvasSet:
    """Images whose green channel holds a blocky semantic mask and blue a smooth depth ramp.

    Depth = 1 + 9 * blue / 255 (exactly recoverable from the pixels); masks are constant on
    ``block`` x ``block`` cells, so they align with stride-2 patches.
    """
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, n_cls, (n, SIZE // block, SIZE // block), generator=g)
    sem = cells.repeat_interleave(block, 1).repeat_interleave(block, 2)
    ramp = torch.linspace(0, 1, SIZE)
    a, b = torch.rand(n, 1, 1, generator=g), torch.rand(n, 1, 1, generator=g)
    blue = ((a * ramp[None, :, None] + (1 - a) * ramp[None, None, :]) * (0.5 + 0.5 * b) * 255).round()
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    images[:, 1] = (sem * STEP).to(torch.uint8)
    images[:, 2] = blue.to(torch.uint8)
    depth = 1.0 + 9.0 * images[:, 2].float() / 255.0
    return CanvasSet(images, labels=torch.zeros(n, dtype=torch.long), depth=depth, semantic=sem,
                     class_names=[f"c{i}" for i in range(1, n_cls)])


def eval_cfg(**eval_overrides) -> dict:
    """A resolved config: a tiny resnet_mini at SIZE px and cheap probe settings."""
    ev = {"n_train": 0, "n_test": 0, "linear_epochs": 30, "linear_lr": [0.1, 0.01], "dense_epochs": 15,
          "dense_lr": 0.05, "dense_n_train": 0, "dense_n_test": 0, "jigsaw_epochs": 30, "jigsaw_hidden": 64,
          "jigsaw_n_train": 0, "jigsaw_n_test": 0, "random_floor": False, "n_examples": 2, **eval_overrides}
    # data.name=folder without a root: any split not handed to the context fails loudly
    overrides = ["data.name=folder", "backbone.name=resnet_mini", "backbone.width=8", "backbone.small_stem=true",
                 f"views.global_size={SIZE}", "views.local_size=12", "train.progress=false"]
    overrides += [f"eval.{k}={v}" for k, v in ev.items()]
    return config.resolve([], overrides)


def context(backbone: nn.Module, splits: dict[str, CanvasSet], seed: int = 0, **eval_overrides) -> EvalContext:
    return EvalContext(eval_cfg(**eval_overrides), backbone, "planted", seed=seed, progress=False, splits=splits)


def random_backbone(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_backbone(eval_cfg()["backbone"])


@pytest.fixture
def planted_tools():
    """The helpers above, for tests in this folder."""
    return {"Planted": Planted, "labelled_set": labelled_set, "dense_set": dense_set, "context": context,
            "random_backbone": random_backbone, "SIZE": SIZE, "STEP": STEP}
