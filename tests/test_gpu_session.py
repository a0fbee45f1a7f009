"""benchmarks/gpu_session.sh, dry run on the CPU (issue 18, item 2): the plan's steps run
in order at tiny sizes within the time limit, and what they left is packed under $OUT in
the files that come back from a device call (<= 8, no deeper than 2 folders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_gpu_session_dry_run_end_to_end(tmp_path):
    """Plant: the EXIT trap that packs removed -> study.tar.gz missing, fails."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    # an unfinished run left in the study's scratch folder (by an earlier call): packed slim
    unfinished = runs / "study" / "x-cnn-s9"
    unfinished.mkdir(parents=True)
    torch.save({"step": 3, "config": {"train": {"steps": 8}}, "backbone": {"w": torch.ones(2)},
                "optimizer": {"m": torch.zeros(2)}}, unfinished / "checkpoint.pt")
    (unfinished / "metrics.jsonl").write_text('{"step": 3}\n')
    peer = tmp_path / "peer.py"
    peer.write_text("print(('model bf16', '   250.0 img/s', '1 ms/step'), flush=True)\n"
                    "print('model bf16 |    250.0 img/s | 1 ms/step')\n")
    env = {**os.environ, "OUT": str(out), "RUNS": str(runs), "PY": sys.executable, "PEER": str(peer),
           "LIMIT": "420", "TP_LIMIT": "240", "PYTHONPATH": ""}
    t = time.time()
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_session.sh"), "--dry-run"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    wall = time.time() - t
    log = (out / "session.log").read_text()
    assert res.returncode == 0, log[-3000:]
    assert wall < 420 + 30, wall
    names = sorted(p.name for p in out.iterdir())
    assert {"session.log", "throughput.json", "throughput.txt", "cut_speed.txt", "study.tar.gz"} <= set(names)
    assert len(names) <= 8
    assert all(p.is_file() for p in out.iterdir())
    # the plan, in order: throughput (ours, then the peer), the study's fit decision, packing
    steps = [line.split("] ", 1)[1].split(",")[0] for line in log.splitlines() if line.startswith("gpu_session: [")]
    assert steps[0].startswith("plan") and steps[1] == "1. throughput" and steps[-1].startswith("done")
    assert "packing" in steps and any(s.startswith("2. study") for s in steps)
    doc = json.loads((out / "throughput.json").read_text())
    assert doc["setting"] == "small CPU" and len(doc["rows"]) >= 1
    if doc["complete"]:  # the whole tiny run fitted: both arms, then the peer (last)
        assert len(doc["rows"]) == 4 and doc["peer"]["rates"] == {"bf16": 250.0}
    with tarfile.open(out / "study.tar.gz") as tar:
        members = tar.getnames()
        slim = torch.load(tar.extractfile("runs/study_partial/x-cnn-s9/checkpoint.pt"), weights_only=False)
    assert set(slim) == {"config", "backbone", "step"} and "runs/study_partial/x-cnn-s9/metrics.jsonl" in members
    assert "results/study" in members and all(m.startswith(("results/study", "runs/study_partial")) for m in members)
    # the gpu budget's cells need minutes each: none fits what a dry run leaves, none starts
    assert "study: started" not in log
    assert "| the step's cuts from uint8 canvases |" in (out / "cut_speed.txt").read_text()
