"""benchmarks/throughput.py keeps what it measured (issue 18, item 1): each (arm, mode)
figure is written the moment it exists, a compile failure reruns the arm without compile,
and the peer runs last under its own timeout, its failure recorded, not fatal."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_killed_midway_the_figures_so_far_are_readable(tmp_path):
    """A tiny CPU run killed (SIGKILL) once its first figure is out: the JSON holds that
    figure (and any later ones), readable, marked incomplete. Plant: write the JSON only
    at the end (as before) -> no file when killed."""
    out = tmp_path / "tp.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--small", "--steps", "1",
                             "--warmup", "1", "--batch", "4", "--threads", "1", "--framework", "dino,simclr",
                             "--json", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if out.exists():
                rows = json.loads(out.read_text())["rows"]  # readable whenever it is read
                if rows:
                    break
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert rows, "no figure within 240 s"
    doc = json.loads(out.read_text())
    assert doc["complete"] is False and len(doc["rows"]) >= 1 and len(doc["rows"]) < 8
    r = doc["rows"][0]
    assert (r["framework"], r["sp"], r["measure"]) == ("dino", False, "model") and r["img_s"] > 0


def test_compile_failure_reruns_without_compile_and_peer_failure_is_not_fatal(throughput, tmp_path, monkeypatch):
    """With stand-ins for the arms and a peer that prints one figure then hangs: a quick
    no-compile figure first, a compile failure noted and the arm rerun without compile, the
    peer stopped at its timeout with its printed figure kept. Plants: no fallback (re-raise)
    -> fails; the peer without a timeout -> the test hangs past its 30 s peer sleep."""
    calls = []

    def bench(fw, sp, small, compile_, steps, batch, device, profile=0, warmup=5, emit=None):
        calls.append((fw, sp, compile_))
        if compile_ and sp:
            raise RuntimeError("backend compiler failed")
        for mode in ("model", "e2e"):
            emit(mode, {"img_s": 100.0 if not sp else 98.0, "ms": 10.0, "views": "2x32+6x16", "peak_gib": None})
        return {}

    monkeypatch.setattr(throughput, "bench", bench)
    peer = tmp_path / "peer.py"
    peer.write_text("import time\nprint(('model bf16', '   250.0 img/s', '1 ms/step'), flush=True)\ntime.sleep(30)\n")
    out = tmp_path / "tp.json"
    t = time.time()
    throughput.main(["--small", "--compile", "--peer", str(peer), "--peer-timeout", "3", "--json", str(out)])
    assert time.time() - t < 25
    doc = json.loads(out.read_text())
    assert calls == [("dino", False, False), ("dino", True, False),  # the quick figure
                     ("dino", False, True), ("dino", True, True), ("dino", True, False)]
    main = [(r["sp"], r["measure"], r["compile"]) for r in doc["rows"] if r["phase"] == "main"]
    assert main == [(False, "model", True), (False, "e2e", True), (True, "model", False), (True, "e2e", False)]
    assert any("torch.compile failed" in n and "backend compiler failed" in n for n in doc["notes"])
    assert doc["peer"] == {"rates": {"bf16": 250.0}, "error": "timed out after 3 s"}
    assert doc["complete"] is True
