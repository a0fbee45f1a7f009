"""SIGTERM (a scheduler's preemption) and SIGINT to a real ``spatialssl pretrain`` before its
first regular checkpoint: it finishes the step, writes a checkpoint and status.json
("interrupted"), logs it, exits 143 / 130; the same command again resumes there and ends
bit-exact with a run never interrupted. (Before, nothing was saved: the rerun began at 0.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import spatialssl
from spatialssl import runfolder

SRC = str(Path(spatialssl.__file__).resolve().parents[1])


def _cmd(out: Path, cache: Path) -> list[str]:
    sets = ["framework.name=simclr", "train.steps=60", "train.batch_size=16", "data.n_train=64", "data.n_eval=32",
            "train.checkpoint_every=1000", "train.log_every=1", "train.warmup_steps=5", "train.progress=false",
            "device=cpu", f"data.cache_dir={cache}", f"out_dir={out}"]
    return [sys.executable, "-m", "spatialssl.cli", "pretrain", "-c", "demo", *[a for s in sets for a in ("--set", s)]]


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_saves_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, sig, code):
    cache = tmp_path / "cache"
    ref = tmp_path / "ref"
    assert subprocess.run(_cmd(ref, cache), env=_env(), capture_output=True, timeout=300).returncode == 0

    out = tmp_path / "run"
    proc = subprocess.Popen(_cmd(out, cache), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while runfolder.last_step(out) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    status = json.loads((out / runfolder.STATUS).read_text())
    step = status["step"]
    assert 5 <= step < 60 and status["interrupted"] == sig.name and not status["complete"]
    assert runfolder.read_checkpoint(out)["step"] == step  # before its first regular checkpoint (every 1,000)
    assert f"interrupted: {sig.name} at step {step} of 60" in (out / runfolder.LOG).read_text()
    assert "run the same command again" in err

    again = subprocess.run(_cmd(out, cache), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resumed from {out / runfolder.CHECKPOINT} at step {step}" in (out / runfolder.LOG).read_text()
    from safetensors.torch import load_file  # (the file's metadata order varies; the tensors must not)

    got, want = load_file(out / runfolder.BACKBONE), load_file(ref / runfolder.BACKBONE)
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)
