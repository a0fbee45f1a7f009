"""``kill -9`` at random steps, during checkpoint writes and renames, and mid-way through a
log line: the resumed run ends bit-exact with one never interrupted (SimCLR, BYOL + SP,
DINO + SP), and two processes racing on one folder leave one consistent run.

The killed runs happen in one subprocess (``driver.py``, one child forked per scenario)
while this process trains the uninterrupted references; the resumes run here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
import torch

import spatialssl
from spatialssl import config, runfolder
from spatialssl.engine.monitor import read_jsonl
from spatialssl.engine.trainer import pretrain

DRIVER = Path(__file__).with_name("driver.py")
_rng = random.Random(11)  # the "random" kill steps, fixed so that a failure reproduces
SCENARIOS = [
    *({"name": f"{fw}-step", "framework": fw, "fault": "step", "at": _rng.randint(1, tiny.STEPS - 1)}
      for fw in tiny.FRAMEWORKS),
    *({"name": f"{fw}-write", "framework": fw, "fault": "write", "at": 2} for fw in tiny.FRAMEWORKS),
    {"name": "dino-rename", "framework": "dino", "fault": "rename", "at": 2},
    {"name": "simclr-log", "framework": "simclr", "fault": "log", "at": 3},
    {"name": "race", "framework": "simclr", "fault": "race"},
]
KILLED = [sc["name"] for sc in SCENARIOS if sc["fault"] != "race"]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """(folder, driver results, reference run dirs): the kills run in a subprocess while the
    uninterrupted references train here."""
    d = tmp_path_factory.mktemp("kills")
    data = tiny.canvases()
    torch.save(data, d / "data.pt")
    spec = {"data": str(d / "data.pt"), "scenarios": [dict(sc, out_dir=str(d / sc["name"])) for sc in SCENARIOS]}
    (d / "spec.json").write_text(json.dumps(spec))
    src = str(Path(spatialssl.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(d / "spec.json")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        refs = {fw: pretrain(config.resolve([], tiny.overrides(fw, d / f"ref-{fw}")), data=data)
                for fw in tiny.FRAMEWORKS}
        out, err = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return d, json.loads(out.strip().splitlines()[-1]), refs, data


def _assert_same_state(a: dict, b: dict, what: str) -> None:
    for key in ("framework", "sp"):
        if a[key] is None:
            assert b[key] is None
            continue
        for k, v in a[key].items():
            assert torch.equal(v, b[key][k]), f"{what}: {key}.{k} differs after kill and resume"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{what}: optimizer state {k} differs after kill and resume"


@pytest.mark.parametrize("name", KILLED)
def test_killed_run_resumes_bit_exact(killed, name):
    d, results, refs, data = killed
    sc = next(s for s in SCENARIOS if s["name"] == name)
    assert results[name][0]["signal"] == signal.SIGKILL, results[name]
    run = d / name
    assert not (run / "backbone.safetensors").exists()
    assert runfolder.read_status(run)["complete"] is False
    if sc["fault"] in ("write", "rename"):
        assert (run / "checkpoint.pt.tmp").exists()  # the write that was cut short
        assert runfolder.read_checkpoint(run)["step"] == 2  # the checkpoint before it is intact
    out = pretrain(config.resolve([], tiny.overrides(sc["framework"], run)), data=data)
    a, b = runfolder.read_checkpoint(refs[sc["framework"]]), runfolder.read_checkpoint(out)
    assert a["step"] == b["step"] == tiny.STEPS
    _assert_same_state(a, b, name)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, tiny.STEPS + 1))
    assert not list(out.glob("*.tmp"))
    assert runfolder.read_status(out)["complete"] is True
    assert "resumed from" in (out / "train.log").read_text()


def test_two_processes_racing_on_one_folder(killed):
    """One wins; the other fails at once naming the winner's pid; config.yaml and the
    checkpoint agree on the seed."""
    d, results, _, _ = killed
    assert all(r["code"] == 0 for r in results["race"]), results["race"]
    outcomes = sorted((d / f"race.{seed}.result").read_text() for seed in (0, 1))
    assert outcomes[1] == "ok", outcomes
    assert "is in use by another pretrain (pid " in outcomes[0], outcomes
    saved = config.load_yaml((d / "race" / "config.yaml").read_text())
    assert saved["seed"] == runfolder.read_checkpoint(d / "race")["config"]["seed"]
    assert runfolder.read_status(d / "race")["complete"] is True
