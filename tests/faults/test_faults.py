"""Faults injected in one process: damaged checkpoints, a full disk, a NaN batch, bad files
of every kind, a changed config on resume, ``--no-resume``, a held lock. Each error is
one line on stderr with exit status 2 (the CLI) or one exception naming the key or file.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tiny
import torch
from PIL import Image

from spatialssl import config, runfolder
from spatialssl.cli import main
from spatialssl.engine import checkpoint
from spatialssl.engine.checkpoint import CheckpointError, RunLocked
from spatialssl.engine.monitor import read_jsonl
from spatialssl.engine.trainer import NonFiniteLoss, pretrain
from spatialssl.evals.features import checkpoint_hash, context_from_checkpoint


def _cfg(framework, out, *extra):
    return config.resolve([], tiny.overrides(framework, out, *extra))


def _same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(v, b["framework"][k]) for k, v in a["framework"].items())


@pytest.fixture(scope="module")
def data():
    return tiny.canvases()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """An uninterrupted DINO + SP run (6 steps)."""
    return pretrain(_cfg("dino", tmp_path_factory.mktemp("ref") / "run"), data=data)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """A folder data set: 16 random 32 px PNGs in two classes."""
    root = tmp_path_factory.mktemp("imgs") / "ds"
    rng = np.random.default_rng(0)
    for i in range(16):
        (root / "train" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "train" / "ab"[i % 2] / f"{i}.png")
    return root


def _cli(framework, out, root, *extra):
    from spatialssl.frameworks import unused_keys

    ov = tiny.overrides(framework, out, "data.name=folder", f"data.root={root}", "data.canvas_size=32", *extra)
    ignored = set(unused_keys(framework, [o.split("=")[0] for o in ov]))  # the CLI warns about those
    return ["pretrain", *(a for o in ov if o.split("=")[0] not in ignored for a in ("--set", o))]


def _one_line(capsys, *needles) -> str:
    """The error is one line, the last on stderr (log lines, e.g. the ERROR with the last
    values, may come before it), and no traceback."""
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]
    assert [ln for ln in lines if "error:" in ln] == [err] and not any("Traceback" in ln for ln in lines), lines
    assert err.startswith("spatialssl: error: ") and "error: spatialssl:" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("damage", ["truncate", "zero"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, data, reference, damage):
    cfg = _cfg("dino", tmp_path / "run")
    pretrain(cfg, stop_after=4, data=data)  # checkpoints at steps 2 (previous) and 4
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert runfolder.read_checkpoint(tmp_path / "run" / runfolder.PREVIOUS)["step"] == 2
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 3] if damage == "truncate" else bytes(len(raw)))
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    out = pretrain(cfg, data=data)
    log = (out / "train.log").read_text()
    assert f"checkpoint {ckpt} is unreadable" in log and "resuming from checkpoint.prev.pt (step 2) instead" in log
    assert list(out.glob("checkpoint.pt.corrupt-*"))  # kept aside, never rotated into the previous slot
    assert _same_weights(runfolder.read_checkpoint(reference), runfolder.read_checkpoint(out))  # bit-exact from step 2
    assert (out / "config.yaml").read_text() == config_before


def test_no_readable_checkpoint_is_one_line(tmp_path, image_root, capsys):
    out = tmp_path / "run"
    assert main(_cli("simclr", out, image_root, "train.steps=4")) == 0
    for name in (runfolder.CHECKPOINT, runfolder.PREVIOUS):
        (out / name).write_bytes(b"\0" * 100)
    capsys.readouterr()
    assert main(_cli("simclr", out, image_root, "train.steps=4")) == 2
    _one_line(capsys, "no readable checkpoint", "checkpoint.pt is unreadable", "checkpoint.prev.pt is unreadable")


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, data, reference, monkeypatch):
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # the checkpoint of step 4: the disk is full
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    cfg = _cfg("dino", tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*checkpoint.pt: No space left on device"):
        pretrain(cfg, data=data)
    run = tmp_path / "run"
    assert runfolder.read_checkpoint(run)["step"] == 2 and not list(run.glob("*.tmp"))
    assert runfolder.read_status(run)["complete"] is False
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert _same_weights(runfolder.read_checkpoint(reference), runfolder.read_checkpoint(pretrain(cfg, data=data)))


def test_eval_reads_the_checkpoint_when_the_exported_weights_are_damaged(tmp_path, reference, data, caplog):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    first = context_from_checkpoint(run, progress=False)  # a finished run: its backbone.safetensors
    assert first.ckpt_hash == checkpoint_hash(run / runfolder.BACKBONE)
    good = first.backbone.state_dict()
    direct = context_from_checkpoint(run / "backbone.safetensors", progress=False)  # eval --checkpoint .../x.safetensors
    assert all(torch.equal(v, direct.backbone.state_dict()[k]) for k, v in good.items())
    (run / runfolder.BACKBONE).write_bytes((run / runfolder.BACKBONE).read_bytes()[:1000])
    caplog.clear()
    with caplog.at_level("WARNING", logger="spatialssl"):
        ctx = context_from_checkpoint(run, progress=False)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and "\n" not in said[0], said  # one warning line
    assert "backbone.safetensors is unreadable" in said[0] and "evaluating checkpoint.pt instead" in said[0]
    assert all(torch.equal(v, ctx.backbone.state_dict()[k]) for k, v in good.items())  # the same final weights
    assert (ctx.step, ctx.complete) == (tiny.STEPS, True)
    # an unfinished run says so
    part = pretrain(_cfg("simclr", tmp_path / "part"), stop_after=2, data=data)
    ctx = context_from_checkpoint(part, progress=False)
    assert (ctx.step, ctx.complete) == (2, False)


# --------------------------------------------------------------------------- training faults


def test_nan_batch_stops_with_one_line_and_the_last_good_checkpoint(tmp_path, image_root, capsys, monkeypatch):
    from spatialssl import views

    real_call, calls = views.MultiCrop.__call__, []

    def poisoned(self, canvases, g=None, part=None):
        out = real_call(self, canvases, g, part)
        calls.append(1)
        if len(calls) == 3:  # the batch of step 3
            out.globals[0, 0, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(views.MultiCrop, "__call__", poisoned)
    out = tmp_path / "run"
    assert main(_cli("dino", out, image_root)) == 2
    _one_line(capsys, "non-finite loss at or before step 3")
    assert "ERROR non-finite loss" in (out / "train.log").read_text()
    state = runfolder.read_checkpoint(out)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["framework"].values() if v.is_floating_point())
    assert runfolder.read_status(out)["error"].startswith("non-finite loss")


def test_bad_files_of_every_kind_are_skipped_counted_and_logged(tmp_path, image_root, capsys):
    root = tmp_path / "ds"
    shutil.copytree(image_root, root)
    a = root / "train" / "a"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(a / "trunc.jpg")
    (a / "trunc.jpg").write_bytes((a / "trunc.jpg").read_bytes()[:300])
    (a / "text.jpg").write_text("not an image")
    (a / "empty.png").write_bytes(b"")
    Image.new("1", (12000, 9000)).save(a / "bomb.png")  # 108 megapixels in a few KB
    Image.fromarray(np.full((32, 32), 0.7, np.float32), mode="F").save(a / "float.tif")  # read, not black
    (a / "loop").symlink_to("..")  # a symlink loop: walked once
    bad = ["trunc.jpg", "text.jpg", "empty.png", "bomb.png"]
    out = tmp_path / "run"
    t0 = time.perf_counter()
    assert main(_cli("simclr", out, root, "train.steps=2")) == 0
    assert "WARNING spatialssl: skipped symlink loop" in capsys.readouterr().err  # the CLI logs warnings
    assert time.perf_counter() - t0 < 60  # the 108-megapixel image is never decoded
    log = (out / "train.log").read_text()
    assert "skipped 4 unreadable file(s)" in log and "(17 images kept; all listed in" in log
    for name in bad:
        assert str(a / name) in log, name
    assert "more than data.max_pixels=64000000" in log
    # every skipped file, with its reason, in a file of the run folder the warning names (issue 28)
    listed = dict(line.split("\t", 1) for line in (out / "skipped_files.txt").read_text().splitlines())
    assert sorted(listed) == sorted(str(a / name) for name in bad) and str(out / "skipped_files.txt") in log


# --------------------------------------------------------------------------- run folders


def test_resume_refuses_a_changed_config_unless_forced(tmp_path, data):
    cfg = _cfg("dino", tmp_path / "run")
    pretrain(cfg, stop_after=2, data=data)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    changed = _cfg("dino", tmp_path / "run", "train.batch_size=16", "train.lr=1e-3")
    with pytest.raises(config.ConfigError, match=r"would change its config: train.batch_size 8 -> 16, train.lr "):
        pretrain(changed, data=data)
    with pytest.raises(config.ConfigError, match=r"framework.name 'dino' -> 'simclr'"):
        pretrain(_cfg("simclr", tmp_path / "run"), data=data)
    assert (tmp_path / "run" / "config.yaml").read_text() == saved  # nothing written before the decision
    # keys that change only logging may change
    pretrain(_cfg("dino", tmp_path / "run", "train.log_every=2"), stop_after=2, data=data)
    # --force: continue, and say so in config.yaml and train.log
    out = pretrain(_cfg("dino", tmp_path / "run", "train.batch_size=16", "train.lr=1e-3"), data=data, force=True)
    record = config.load_yaml((out / "config.yaml").read_text())
    assert record["train"]["batch_size"] == 16
    assert record[config.RESUME_HISTORY] == [{"step": 4, "changes": {"train.batch_size": [8, 16],
                                                                     "train.lr": [0.0005, 0.001]}}]
    assert "resumed with changed config (--force) at step 4: train.batch_size 8 -> 16" in (out / "train.log").read_text()
    # a forced change of the model itself cannot be loaded: one error naming the checkpoint
    with pytest.raises(config.ConfigError, match=r"checkpoint .*checkpoint.pt does not fit this config"):
        pretrain(_cfg("dino", tmp_path / "run", "backbone.width=16", "train.steps=8"), data=data, force=True)


def test_no_resume_moves_the_old_run_aside(tmp_path, image_root, capsys):
    out = tmp_path / "run"
    assert main(_cli("simclr", out, image_root, "train.steps=2")) == 0
    old_ckpt = (out / "checkpoint.pt").read_bytes()
    assert main([*_cli("simclr", out, image_root, "train.steps=2", "seed=1"), "--no-resume"]) == 0
    aside = list(tmp_path.glob("run.old-*"))
    assert len(aside) == 1 and (aside[0] / "checkpoint.pt").read_bytes() == old_ckpt  # moved, not deleted
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]  # the new run's rows only
    assert len(list((out / "tb").iterdir())) == 1
    assert runfolder.read_checkpoint(out)["config"]["seed"] == 1
    assert "moved to" in (out / "train.log").read_text()


def test_a_held_run_folder_fails_at_once_naming_the_holder(tmp_path, image_root, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); "
         "time.sleep(120)", str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        assert main(_cli("simclr", out, image_root)) == 2
        assert time.perf_counter() - t0 < 30
        _one_line(capsys, f"run folder {out} is in use by another pretrain (pid {holder.pid})")
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(RunLocked):  # and within one process, a lock held is a lock held
        lock = checkpoint.RunLock(out).acquire()
        try:
            checkpoint.RunLock(out).acquire()
        finally:
            lock.release()


def test_sp_with_one_local_view_is_an_error(tmp_path, data):
    with pytest.raises(config.ConfigError, match=r"'views.n_local' is 1 with sp.enabled .*SP needs pairs"):
        pretrain(_cfg("dino", tmp_path / "run", "views.n_local=1"), data=data)


def test_metrics_rows_and_status_record_progress(tmp_path, data):
    out = pretrain(_cfg("simclr", tmp_path / "run"), stop_after=3, data=data)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    status = json.loads((out / "status.json").read_text())
    assert (status["step"], status["steps"], status["complete"]) == (3, tiny.STEPS, False)
    state = runfolder.read_checkpoint(out)
    assert (state["step"], state["complete"]) == (3, False)
