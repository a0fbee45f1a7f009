import json

import pytest
import torch

from spatialssl import config, runfolder
from spatialssl.engine.trainer import NonFiniteLoss, batch_indices, pretrain
from spatialssl.frameworks.dino import DINO


def _cfg(tmp_path, name, overrides, *extra):
    return config.resolve([], [*overrides, f"out_dir={tmp_path / name}", *extra])


def test_interrupted_run_resumes_exactly(tmp_path, tiny_overrides, random_canvases):
    """An interrupted CPU run resumed from its checkpoint ends with the same weights."""
    full = pretrain(_cfg(tmp_path, "full", tiny_overrides, "sp.enabled=true"), data=random_canvases)
    cfg = _cfg(tmp_path, "cut", tiny_overrides, "sp.enabled=true")
    pretrain(cfg, stop_after=2, data=random_canvases)  # "interrupted" after 2 of 4 steps
    assert runfolder.read_checkpoint(tmp_path / "cut")["step"] == 2
    pretrain(cfg, data=random_canvases)  # resumes at step 2
    a, b = runfolder.read_checkpoint(full), runfolder.read_checkpoint(tmp_path / "cut")
    assert a["step"] == b["step"] == 4
    for key in ("framework", "sp"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs after resume"
    # the resumed run's log has each step once
    steps = [json.loads(line)["step"] for line in open(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4]
    assert not list((tmp_path / "cut").glob("*.tmp"))  # atomic writes leave no temp file
    assert (tmp_path / "cut" / "backbone.safetensors").exists()
    assert (tmp_path / "cut" / "config.yaml").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_overrides, random_canvases,
                                                              monkeypatch):
    real_forward = DINO.forward

    def poisoned(self, views, step):
        out = real_forward(self, views, step)
        if step >= 2:  # steps 0, 1 fine (checkpoint at 2), then NaN
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(DINO, "forward", poisoned)
    cfg = _cfg(tmp_path, "nan", tiny_overrides)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at or before step 3"):
        pretrain(cfg, data=random_canvases)
    state = runfolder.read_checkpoint(tmp_path / "nan")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["framework"].values() if v.is_floating_point())
    assert "non-finite loss" in (tmp_path / "nan" / "train.log").read_text()


def test_sp_changes_nothing_when_off(tmp_path, tiny_overrides, random_canvases):
    """With SP off there is no SP module and the loss is the framework's alone."""
    out = pretrain(_cfg(tmp_path, "nosp", tiny_overrides), data=random_canvases)
    state = runfolder.read_checkpoint(out)
    assert state["sp"] is None
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert all("loss_sp" not in r and r["loss"] == pytest.approx(r["loss_fw"]) for r in rows)
    # DINO's collapse indicators are computed on logging steps (here: every step)
    assert all(0 < r["teacher_mean_entropy"] <= 5.546 for r in rows)  # log(256) = 5.545
    rows_sp = [json.loads(line) for line in open(pretrain(_cfg(tmp_path, "sp", tiny_overrides, "sp.enabled=true",
                                                                "sp.weight=0.5"), data=random_canvases)
                                                 / "metrics.jsonl")]
    assert all(r["loss"] == pytest.approx(r["loss_fw"] + 0.5 * r["loss_sp"], rel=1e-5) for r in rows_sp)


def test_batch_indices_are_epoch_permutations():
    idx = torch.cat([batch_indices(s, 8, 20, seed=0) for s in range(5)])  # 40 = 2 epochs
    assert sorted(idx[:20].tolist()) == list(range(20)) and sorted(idx[20:].tolist()) == list(range(20))
    assert torch.equal(batch_indices(3, 8, 20, 0), batch_indices(3, 8, 20, 0))


def test_uniform_collapse_warning_names_the_fix(caplog):
    """A teacher at maximum entropy is reported, with the setting that keeps DINO off it."""
    import logging
    import math
    from types import SimpleNamespace

    from spatialssl.backbones import create_backbone
    from spatialssl.engine.trainer import _collapse_logs
    from spatialssl.frameworks import create_framework

    cfg = config.resolve(["demo"], ["framework.name=dino"])
    run = SimpleNamespace(cfg=cfg, framework=create_framework(cfg, create_backbone(cfg["backbone"]), 10))
    k = cfg["framework"]["out_dim"]
    values = {"teacher_entropy": math.log(k) - 0.01, "teacher_mean_entropy": math.log(k)}
    with caplog.at_level(logging.WARNING, logger="spatialssl"):
        _collapse_logs(run, {}, values)
    assert "at its maximum" in caplog.text and "head_batch_norm=true" in caplog.text
    caplog.clear()
    values["teacher_entropy"] = 0.5 * math.log(k)
    with caplog.at_level(logging.WARNING, logger="spatialssl"):
        _collapse_logs(run, {}, values)
    assert "at its maximum" not in caplog.text


def test_a_run_shorter_than_its_warm_up_is_warned(tmp_path, tiny_overrides, random_canvases, caplog):
    """A run that ends inside its lr warm-up never trains at train.lr: said, with the fix
    (issue 28); a warm-up shorter than the run: no warning."""
    import logging

    with caplog.at_level(logging.WARNING, logger="spatialssl"):
        pretrain(_cfg(tmp_path, "short", tiny_overrides, "train.warmup_steps=10"), data=random_canvases)
    assert "is not shorter than the run" in caplog.text and "train.warmup_steps below train.steps" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spatialssl"):
        pretrain(_cfg(tmp_path, "ok", tiny_overrides, "train.warmup_steps=1"), data=random_canvases)
    assert "is not shorter than the run" not in caplog.text
