"""Each framework pretrains through the one trainer on PartsWorld, with and without SP.

Per framework (its preset where there is one, made tiny): a run without SP (interrupted
half-way and resumed) and one with SP. Checked: every logged loss is finite and the
framework loss falls; SP is one more term, ``loss = loss_fw + sp.weight * loss_sp``,
exactly absent when SP is off (no SP module, ``loss == loss_fw``); checkpoints, the
exported backbone and the resolved config are written; a resumed run ends with the same
weights as one never interrupted.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from spatialssl import config, runfolder
from spatialssl.data import load_split
from spatialssl.engine.trainer import pretrain

FRAMEWORKS = ["dino", "ibot", "mocov3", "simclr", "byol"]
STEPS = 8
# the 16 images are one batch, so every step sees the same images and the loss can fall in
# a few steps; photometric augmentation is off for the same reason (SimCLR's colour jitter
# alone keeps a tiny model's loss above chance for far longer than a test may run)
TINY = [
    "backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=32", "backbone.drop_path=0.0",
    "views.global_size=32", "views.local_size=16", "views.n_local=4", "views.local_scale=[0.05,0.25]",
    "views.color_jitter=0.0", "views.grayscale=0.0", "views.blur=[0.0,0.0]", "views.local_blur=0.0",
    "views.solarize=0.0",
    "framework.out_dim=256", "framework.patch_out_dim=256", "framework.hidden_dim=64",
    "framework.bottleneck_dim=32", "framework.proj_dim=32",
    f"train.steps={STEPS}", "train.batch_size=16", "train.lr=0.0005", "train.lr_scale_with_batch=false",
    "train.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=4", "train.collapse_every=4",
    "train.progress=false", "data.n_train=16", "data.canvas_size=32", "sp.weight=0.5",
]


@pytest.fixture(scope="module")
def partsworld():
    """16 PartsWorld training images of 32 px (rendered once, cached)."""
    return load_split(config.resolve([], TINY)["data"], "train", progress=False)


def make_cfg(tmp_path, name: str, sp: bool, run: str, *extra: str) -> dict:
    preset = f"{name}_sp" if sp else name
    presets = [preset] if (config.CONFIG_DIR / f"{preset}.yaml").exists() else []
    return config.resolve(presets, [*TINY, f"framework.name={name}", f"sp.enabled={str(sp).lower()}",
                                    f"out_dir={tmp_path / run}", *extra])


def rows(out) -> list[dict]:
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def assert_falls(name: str, losses: list[float]) -> None:
    half = len(losses) // 2
    assert all(math.isfinite(v) for v in losses), f"{name}: non-finite loss {losses}"
    assert sum(losses[half:]) < sum(losses[:half]), f"{name}: framework loss did not fall: {losses}"


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_pretrain_with_and_without_sp(name, tmp_path, partsworld):
    # --- without SP, interrupted half-way and resumed: no SP term at all ---
    off_cfg = make_cfg(tmp_path, name, False, "off")
    pretrain(off_cfg, stop_after=STEPS // 2, data=partsworld)
    assert runfolder.read_checkpoint(tmp_path / "off")["step"] == STEPS // 2
    off = pretrain(off_cfg, data=partsworld)
    r_off = rows(off)
    assert [r["step"] for r in r_off] == list(range(1, STEPS + 1))
    assert all("loss_sp" not in r and r["loss"] == r["loss_fw"] for r in r_off)
    assert runfolder.read_checkpoint(off)["sp"] is None
    assert_falls(name, [r["loss_fw"] for r in r_off])

    # --- with SP: SP is one more term, weighted by sp.weight ---
    on = pretrain(make_cfg(tmp_path, name, True, "on"), data=partsworld)
    r_on = rows(on)
    assert [r["step"] for r in r_on] == list(range(1, STEPS + 1))
    for r in r_on:
        assert all(math.isfinite(r[k]) for k in ("loss", "loss_fw", "loss_sp"))
        assert r["loss"] == pytest.approx(r["loss_fw"] + 0.5 * r["loss_sp"], rel=1e-5)
    assert_falls(name, [r["loss_fw"] for r in r_on])
    assert (on / "backbone.safetensors").exists() and (on / "config.yaml").exists()
    assert runfolder.read_checkpoint(on)["sp"] is not None


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_resume_is_exact(name, tmp_path, partsworld):
    """A run interrupted after step 1 and resumed ends with the weights of one never
    interrupted (momentum encoders, loss centres, iBOT's masks, SP head included)."""
    full = pretrain(make_cfg(tmp_path, name, True, "full", "train.steps=2"), data=partsworld)
    cut_cfg = make_cfg(tmp_path, name, True, "cut", "train.steps=2")
    pretrain(cut_cfg, stop_after=1, data=partsworld)
    cut = pretrain(cut_cfg, data=partsworld)
    a, b = runfolder.read_checkpoint(full), runfolder.read_checkpoint(cut)
    assert a["step"] == b["step"] == 2
    for key in ("framework", "sp"):
        for k, v in a[key].items():
            assert torch.equal(v, b[key][k]), f"{name}: {key}.{k} differs after resume"
