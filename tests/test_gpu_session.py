"""benchmarks/gpu_session.sh, dry run on the CPU (issues 18 and 29): the plan's steps run in
order at tiny sizes (the quick eager figure, the peer, the compile path, the profiler, the
study's fit decision), a kill mid-run still leaves readable files, and $OUT always holds
what a device call returns: at most 8 plain files, each <= 15 MiB, no deeper than
$OUT/a/b/file, names of [A-Za-z0-9._-], and only this call's results."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
MAX_BYTES = 15 * 2 ** 20
NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def assert_returnable(out: Path) -> list[str]:
    """$OUT within what a device call returns (and a MiB under its 16 MiB per file)."""
    entries = sorted(p for p in out.rglob("*"))
    files = [p for p in entries if not p.is_dir()]
    assert len(files) <= 8, [str(p) for p in files]
    for p in entries:
        rel = p.relative_to(out)
        assert all(NAME.match(part) for part in rel.parts), rel
        assert p.is_dir() or p.is_file(), f"{rel}: not a plain file"
    for p in files:
        assert len(p.relative_to(out).parts) <= 3, f"{p}: deeper than $OUT/a/b/file"
        assert p.stat().st_size <= MAX_BYTES, (p, p.stat().st_size)
    return [str(p.relative_to(out)) for p in files]


def fake_peer(tmp_path: Path, hang: float = 0) -> Path:
    """The peer's output as peer_dino_step.py prints it (progress line, then its table)."""
    peer = tmp_path / "peer.py"
    peer.write_text("import time\nprint(('model bf16', '   250.0 img/s', '1 ms/step'), flush=True)\n"
                    f"time.sleep({hang})\nprint('model bf16 |    250.0 img/s | 1 ms/step')\n")
    return peer


def earlier_call(runs: Path, out: Path) -> None:
    """What an earlier call left: an unfinished run in the study's scratch folder (with a
    checkpoint, dated before this call) and a stale file in $OUT: neither may come back."""
    old = runs / "study" / "x-cnn-s9"
    old.mkdir(parents=True)
    torch.save({"step": 3, "config": {"train": {"steps": 8}}, "backbone": {"w": torch.ones(2)},
                "optimizer": {"m": torch.zeros(2)}}, old / "checkpoint.pt")
    (old / "metrics.jsonl").write_text('{"step": 3}\n')
    past = time.time() - 3600
    for p in (old / "checkpoint.pt", old / "metrics.jsonl"):
        os.utime(p, (past, past))
    out.mkdir(parents=True)
    (out / "throughput.json.tmp").write_text("{half a file")


def session_env(tmp_path: Path, **extra: str) -> dict:
    return {**os.environ, "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"), "PY": sys.executable,
            "PYTHONPATH": "", **extra}


def steps_of(log: str) -> list[str]:
    return [line.split("] ", 1)[1] for line in log.splitlines() if line.startswith("gpu_session: [")]


def test_gpu_session_dry_run_end_to_end(tmp_path):
    """The whole plan at tiny sizes. Plants: the EXIT trap that packs removed -> no "returns:"
    check in the log, fails; the study folder seeded with the committed results/study/ ->
    study.tar.gz appears (and would be ~20 MiB), fails; the peer after our compiled arms ->
    the order check fails; the quick phase or profiler dropped from the dry run -> fails."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    earlier_call(runs, out)
    env = session_env(tmp_path, PEER=str(fake_peer(tmp_path)))
    t = time.time()
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--limit", "420"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    wall = time.time() - t
    log = (out / "session.log").read_text()
    assert res.returncode == 0, log[-3000:]
    assert wall < 420, wall
    # what the figures were made with, first
    first = log.splitlines()[0]
    assert first.startswith("versions: python ") and all(
        f" {k} " in first for k in ("torch", "torchvision", "timm", "lightly", "CUDA", "GPU")), first
    # the plan, in order: throughput, cut_speed, the study's fit decision (said), packing, the check of $OUT
    steps = steps_of(log)
    assert steps[0].startswith("plan") and steps[1].startswith("1. throughput")
    assert [s.split(",")[0].split(":")[0] for s in steps[2:6]] == [
        "throughput exit 0 (3", "1b. cut_speed", "cut_speed exit 0", "2. study skipped"]
    # the gpu budget's cells need minutes each: the study is skipped, and says why
    assert re.search(r"2\. study skipped: the smallest cell needs \d+ s \(\d+ s expected", log), steps
    assert "study: started" not in log
    assert steps[-2:] == ["nothing of the study to pack (no cell ran in this call)", "done (limit 420 s, exit 0)"]
    assert "returns: 5 files, within the device's limits" in log
    # the figures: quick eager bf16, then the peer, then ours compiled (aot_eager) with profiles
    doc = json.loads((out / "throughput.json").read_text())
    assert doc["complete"] is True and doc["setting"] == "small CPU" and doc["stopped"] is None
    assert set(doc["versions"]) >= {"python", "torch", "torchvision", "timm", "lightly", "cuda", "gpu"}
    modes = [(r["phase"], r["sp"], r["mode"]) for r in doc["rows"]]
    assert modes == [("quick", False, "eager bf16 model"), ("quick", False, "eager bf16 e2e"),
                     ("quick", True, "eager bf16 model"), ("quick", True, "eager bf16 e2e"),
                     ("main", False, "compiled (aot_eager) bf16 model"), ("main", False, "compiled (aot_eager) bf16 e2e"),
                     ("main", True, "compiled (aot_eager) bf16 model"), ("main", True, "compiled (aot_eager) bf16 e2e")]
    assert doc["peer"]["rates"] == {"bf16": 250.0} and doc["peer"]["error"] is None
    assert set(doc["profiles"]) == {"dino (main)", "dino + SP (main)"} and not doc["notes"]
    text = (out / "throughput.txt").read_text()
    lines = text.splitlines()
    assert lines.index("result: peer bf16 (eager bf16 model): 250.0 img/s") < next(
        i for i, ln in enumerate(lines) if "compiled (aot_eager)" in ln)  # the peer before our compiled arms
    # the like-for-like ratio: our eager bf16 model step over the peer's bf16; nothing else has one
    row = next(ln for ln in lines if ln.startswith("| dino | quick | eager bf16 model |"))
    assert re.search(r"\| [\d.]+ \| [\d.]+ \|$", row), row
    assert all("no like-for-like figure" in ln for ln in lines if ln.startswith("| dino |") and ln != row)
    assert "model bf16 |    250.0 img/s" in (out / "peer.txt").read_text()  # the peer's own output
    assert "| the step's cuts from uint8 canvases |" in (out / "cut_speed.txt").read_text()
    # what comes back: this call's files only (no stale .tmp, no earlier run, no committed results)
    assert assert_returnable(out) == ["cut_speed.txt", "peer.txt", "session.log", "throughput.json", "throughput.txt"]


def test_killed_by_a_timeout_mid_run_the_packed_files_are_readable(tmp_path):
    """A call's timeout (SIGTERM to the group, as `timeout` sends it) once the first figure
    is out: the script stops the running step, packs, and every file under $OUT is readable
    and within the limits. Plants: no TERM trap -> no packing lines, fails; throughput.py
    without its SIGTERM handler -> no table in throughput.txt, no "stopped", fails."""
    out = tmp_path / "out"
    env = session_env(tmp_path, PEER=str(fake_peer(tmp_path, hang=60)))
    # the outer `timeout` stands for the device call's limit; it is signalled when the first figure is out
    proc = subprocess.Popen(["timeout", "-k", "40", "600", "bash", str(SCRIPT), "--dry-run", "--limit", "420"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                if json.loads((out / "throughput.json").read_text())["rows"]:
                    break
            except (OSError, ValueError):  # not written yet
                pass
            time.sleep(0.2)
        assert proc.poll() is None, "the dry run ended before its first figure"
        t = time.time()
        proc.send_signal(signal.SIGTERM)  # `timeout` passes it on to the script's process group
        proc.wait(timeout=60)
        assert time.time() - t < 35, "packing after SIGTERM took too long"
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (out / "session.log").read_text()
    steps = steps_of(log)
    assert "stopped by a signal" in steps and "packing" in steps and steps[-1] == "done (limit 420 s, exit 143)", steps
    assert re.search(r"returns: \d files, within the device's limits", log), log[-2000:]
    doc = json.loads((out / "throughput.json").read_text())  # readable, whatever moment the kill came
    assert doc["complete"] is False and doc["stopped"] == "SIGTERM" and len(doc["rows"]) >= 1
    assert "| framework | phase | mode |" in (out / "throughput.txt").read_text()  # the table of what was measured
    names = assert_returnable(out)
    assert {"session.log", "throughput.json", "throughput.txt"} <= set(names) and "study.tar.gz" not in names


def test_a_study_cell_that_fits_runs_and_only_this_calls_results_come_back(tmp_path):
    """With a budget whose cell fits (tiny) and no throughput step, the study runs a cell
    pair and packs it: this call's results as results/study/ and slim checkpoints of the run
    folders it wrote; the earlier call's run is left out. Plants: the "this call's run
    folders" filter removed -> x-cnn-s9 in the archive, fails; the fit check inverted ->
    the study is skipped, fails."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    earlier_call(runs, out)
    env = session_env(tmp_path, PEER=str(tmp_path / "no_peer.py"), TP_LIMIT="0", BUDGET="tiny", STUDY_MARGIN="10",
                      WORKERS="2", STUDY_ARGS="--frameworks simclr --backbones cnn --seeds 0 --tasks knn")
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--limit", "300"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=400)
    log = (out / "session.log").read_text()
    assert res.returncode == 0, log[-3000:]
    assert "study: started simclr-cnn-s0" in log and re.search(r"2\. study, --time-limit \d+ s", log), log[-3000:]
    assert assert_returnable(out) == ["cut_speed.txt", "session.log", "study.tar.gz"]
    with tarfile.open(out / "study.tar.gz") as tar:
        members = tar.getnames()
        cell = json.load(tar.extractfile("results/study/simclr-cnn-s0/cell.json"))
        slim = torch.load(tar.extractfile("runs/study_partial/simclr-cnn-s0/checkpoint.pt"), weights_only=False)
    assert cell and set(slim) == {"config", "backbone", "step"}
    assert "results/study/summary.md" in members
    assert all(m.startswith(("results/study", "runs/study_partial")) for m in members)
    assert not any("x-cnn-s9" in m for m in members), "an earlier call's run came back"
