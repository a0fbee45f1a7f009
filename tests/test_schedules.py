"""Schedules follow the budget: schedule lengths written as fractions of the run scale with
``train.steps`` (config.py, "Schedule lengths follow the budget"), every preset keeps its
step counts at its own steps, and the built run (lr, last-layer freeze, teacher
temperature, checkpoint cadence) reads the resolved lengths."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from spatialssl import config, schedules
from spatialssl.cli import main
from spatialssl.engine import checkpoint
from spatialssl.engine.trainer import build, pretrain
from spatialssl.frameworks import create_framework
from spatialssl.backbones import create_backbone

KEYS = ("train.warmup_steps", "framework.freeze_last_layer_steps", "train.checkpoint_every",
        "framework.warmup_teacher_temp_frac")

# (warm-up, last-layer freeze, checkpoint cadence, teacher-temperature warm-up) in steps at each
# preset's own train.steps, as they were when every length was written in steps (before fractions)
BEFORE = {
    "imagenet100_vits16_dino": (4950, 495, 2475, 14850), "imagenet100_vits16_dino_sp": (4950, 495, 2475, 14850),
    "demo": (40, 0, 100, 90), "demo_dino": (40, 0, 100, 90),
    "ibot": (100, 0, 500, 37), "ibot_sp": (100, 0, 500, 37),  # int(0.0375 x 1000)
    **{name: (100, 0, 500, 300) for name in ("dino", "dino_sp", "simclr", "simclr_sp", "byol", "byol_sp",
                                             "mocov3", "mocov3_sp")},
}


def lengths(presets: list[str], overrides: list[str] = ()) -> tuple[int, ...]:
    steps = config.schedule_steps(config.resolve(presets, list(overrides), warn=False))
    return tuple(steps[k] for k in KEYS)


def test_every_preset_keeps_its_schedules_at_its_own_steps():
    assert set(BEFORE) == {p.stem for p in config.CONFIG_DIR.glob("*.yaml")}  # a new preset gets a row
    for name, before in BEFORE.items():
        assert lengths([name]) == before, name


@pytest.mark.parametrize("steps, expected", [
    (1000, (100, 10, 50, 300)),  # the recipe over 1,000 steps: 10% warm-up, 1% freeze, a checkpoint every 5%
    (99_000, (9900, 990, 4950, 29700)),  # twice the epochs
    (5, (0, 0, 1, 1)),  # the case: warm-up 4,950 of 5 steps kept the lr in warm-up for the whole run
])
def test_set_train_steps_shortens_the_imagenet_recipe(steps, expected):
    """Planted: the preset's old whole-step lengths (4950, 495, 2475) fail this test."""
    for name in ("imagenet100_vits16_dino", "imagenet100_vits16_dino_sp"):
        assert lengths([name], [f"train.steps={steps}"]) == expected


def test_framework_presets_follow_the_budget_too():
    assert lengths(["dino_sp"], ["train.steps=200"]) == (20, 0, 500, 60)  # the cadence default is in steps
    assert lengths(["ibot"], ["train.steps=8000"])[3] == 300  # 30 of 800 epochs
    assert lengths(["demo"], ["train.steps=400"]) == (40, 0, 100, 120)  # the demo's lengths are whole steps


def test_whole_steps_stay_steps_and_fractions_round_down():
    assert lengths([], ["train.steps=300", "train.warmup_steps=7", "train.checkpoint_every=3"])[:3] == (7, 0, 3)
    assert lengths([], ["train.steps=300", "train.warmup_steps=0.2", "framework.freeze_last_layer_steps=0.0"]
                   )[:2] == (60, 0)
    assert config.fraction_steps(0.1, 49_500) == 4950 and config.fraction_steps(0.0375, 1000) == 37
    assert config.fraction_steps(0.29, 100) == 29  # 28.999999999999996 in floating point
    assert config.fraction_steps(0.01, 10, least=1) == 1  # checkpoint_every: at least every step


@pytest.mark.parametrize("override, message", [
    ("train.warmup_steps=1.5", r"'train.warmup_steps' is a fraction of train.steps: it must be in \(0, 1\), got 1.5"),
    ("train.warmup_steps=-0.1", r"'train.warmup_steps' is a fraction of train.steps: it must be in \(0, 1\)"),
    ("train.warmup_steps=1.0", r"'train.warmup_steps' .* got 1.0 \(whole steps are written without a decimal point: 1\)"),
    ("framework.freeze_last_layer_steps=2.5", r"'framework.freeze_last_layer_steps' is a fraction"),
    ("train.checkpoint_every=0.0", r"'train.checkpoint_every' is a fraction of train.steps: it must be in \(0, 1\)"),
    ("train.checkpoint_every=0", r"'train.checkpoint_every' must be >= 1 steps"),
    ("train.warmup_steps=-3", r"'train.warmup_steps' must be >= 0 steps"),
    ("train.warmup_steps=many", r"'train.warmup_steps' must be a number of steps or a fraction"),
    ("train.warmup_steps=true", r"'train.warmup_steps' must be a number of steps or a fraction"),
    ("framework.warmup_teacher_temp_frac=1.5", r"'framework.warmup_teacher_temp_frac' is a fraction .* \[0, 1\]"),
])
def test_invalid_lengths_name_the_key(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.resolve(["imagenet100_vits16_dino"], [override])


def test_resume_compares_schedules_in_steps():
    """A run saved with whole steps resumes under a config written in fractions when the
    steps are the same (and reports the change, in steps, when they are not)."""
    saved = config.resolve([], ["train.warmup_steps=100"])  # as config.yaml was written before fractions
    assert config.resume_changes(saved, config.resolve([])) == ({}, {})  # 0.1 of 1000 steps
    unsafe, safe = config.resume_changes(saved, config.resolve([], ["train.steps=2000"]))
    assert unsafe == {"train.steps": (1000, 2000), "train.warmup_steps": (100, 200)} and safe == {}


def test_built_run_reads_the_resolved_lengths():
    """The ImageNet preset at 200 steps (a tiny model in place of ViT-S/16): lr warm-up 20
    steps, last layer frozen 2 steps, teacher temperature warm-up 60 steps."""
    cfg = config.resolve(["imagenet100_vits16_dino"], [
        "train.steps=200", "backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=32",
        "framework.out_dim=64", "framework.hidden_dim=32", "framework.bottleneck_dim=16",
        "framework.warmup_teacher_temp=0.02"], warn=False)
    run = build(cfg, (64, 64), torch.device("cpu"))
    peak = cfg["train"]["lr"] * cfg["train"]["batch_size"] / 256
    assert int(run.lr.argmax()) == 20 and float(run.lr[20]) == pytest.approx(peak) and run.lr[19] < peak
    assert run.framework.head.freeze_last_layer == 2
    temp = run.framework.teacher_temp
    assert int((temp < cfg["framework"]["teacher_temp"] - 1e-12).sum()) == 59  # a 60-step ramp ends at its 60th
    fw = create_framework({**cfg, "framework": {**cfg["framework"], "name": "ibot"}},
                          create_backbone(cfg["backbone"]), 400)  # the steps a framework is given decide
    assert fw.head.freeze_last_layer == 4 and int((fw.teacher_temp < 0.04 - 1e-12).sum()) == 119


def test_engine_schedules_is_the_same_module():
    from spatialssl.engine import schedules as old_place  # kept for code that imports it from there

    assert old_place.cosine is schedules.cosine and old_place.linear_then_constant is schedules.linear_then_constant


def test_checkpoint_cadence_follows_the_run_and_train_log_shows_lengths(tmp_path, tiny_overrides,
                                                                       random_canvases, monkeypatch):
    """``train.checkpoint_every=0.5`` of 4 steps: checkpoints after steps 2 and 4 (planted:
    the loop reading the written 0.5 checkpointed after every step)."""
    saved = []
    real = checkpoint.save_atomic
    monkeypatch.setattr(checkpoint, "save_atomic", lambda state, path: (saved.append(state["step"]),
                                                                        real(state, path)))
    cfg = config.resolve([], [*tiny_overrides, "framework.name=simclr", "train.checkpoint_every=0.5",
                              "train.warmup_steps=0.5", f"out_dir={tmp_path / 'run'}"])
    out = pretrain(cfg, data=random_canvases)
    assert saved == [2, 4]
    log = (out / "train.log").read_text()
    assert re.search(r"schedules at train.steps=4: lr warm-up 2 steps \(train.warmup_steps 0.5 of the run\).*"
                     r"checkpoint every 2 steps \(train.checkpoint_every 0.5 of the run\)", log), log
    # SimCLR reads no DINO schedule: none is named in its log (planted: describe_schedule
    # without the framework's keys listed the teacher-temperature warm-up for every run)
    line = next(l for l in log.splitlines() if "schedules at" in l)
    assert "teacher-temperature" not in line and "last-layer freeze" not in line, line


def test_config_command_prints_the_resolved_lengths(capsys):
    assert main(["config", "-c", "imagenet100_vits16_dino", "--set", "train.steps=1000"]) == 0
    out = capsys.readouterr().out
    assert "lr warm-up 100 steps" in out and "last-layer freeze 10 steps" in out and "checkpoint every 50 steps" in out
    assert yaml.safe_load(out)["train"]["warmup_steps"] == 0.1  # still YAML: the lengths are a comment


def test_documented_8_gpu_recipe_is_the_one_gpu_recipe_rescaled():
    """docs/data.md "8 GPUs (one machine)": its command's --sets resolve to 100 epochs at
    batch 1024, lr 0.002, and the lengths the text states."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    section = doc[doc.index("### 8 GPUs (one machine)"):]
    command = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    sets = [s for s in re.findall(r"--set (\S+)", command) if not s.startswith(("data.root", "out_dir"))]
    preset = re.search(r"pretrain -c (\S+)", command).group(1)
    cfg = config.resolve([preset], sets, warn=False)
    t = cfg["train"]
    assert t["batch_size"] == 1024 and t["lr"] * t["batch_size"] / 256 == pytest.approx(0.002)
    assert t["steps"] * t["batch_size"] >= 100 * 126_689 > (t["steps"] - 1) * t["batch_size"]  # 100 epochs
    one_gpu = config.resolve([preset], warn=False)
    assert {k: v for k, v in config.flatten(cfg).items() if config.flatten(one_gpu)[k] != v} == {
        "train.batch_size": 1024, "train.steps": 12_372}  # nothing else changes
    lengths = config.schedule_steps(cfg)
    stated = "{:,} / {:,} / {:,} steps here".format(lengths["train.warmup_steps"],
                                                     lengths["framework.freeze_last_layer_steps"],
                                                     lengths["train.checkpoint_every"])
    assert stated in " ".join(section.split())
