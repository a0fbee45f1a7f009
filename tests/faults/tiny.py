"""Tiny runs for the fault-injection tests: a 4-stage ResNet 8 channels wide on 16 px views
of 16 random 32 px canvases, 6 steps, a checkpoint every 2 (well under a second a step on
one thread). Shared by the tests and by ``driver.py`` (the subprocess that gets killed)."""

from __future__ import annotations

import torch

FRAMEWORKS = {"simclr": False, "byol": True, "dino": True}  # name -> SP on (the three)
STEPS = 6
TINY = [
    "backbone.name=resnet_mini", "backbone.small_stem=true", "backbone.width=8", "backbone.stem_width=8",
    "views.global_size=16", "views.local_size=8", "views.n_local=2", "views.local_scale=[0.1,0.3]",
    "framework.out_dim=64", "framework.hidden_dim=32", "framework.bottleneck_dim=16", "framework.proj_dim=16",
    "sp.hidden_dim=16", "sp.weight=0.5",
    f"train.steps={STEPS}", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1",
    "train.checkpoint_every=2", "train.collapse_every=2", "train.progress=false", "train.num_threads=1",
    "device=cpu",
]


def overrides(framework: str, out_dir, *extra: str) -> list[str]:
    return [*TINY, f"framework.name={framework}", f"sp.enabled={str(FRAMEWORKS.get(framework, False)).lower()}",
            f"out_dir={out_dir}", *extra]


def canvases(n: int = 16, size: int = 32):
    from spatialssl.data.canvases import CanvasSet

    g = torch.Generator().manual_seed(0)
    return CanvasSet(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                     labels=torch.randint(0, 4, (n,), generator=g))
