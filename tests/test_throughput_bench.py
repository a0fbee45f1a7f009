"""benchmarks/throughput.py keeps what it measured and names what it compares (issues 18, 29):
each (arm, mode) figure is written the moment it exists; the eager figure, then the peer
(streamed to its log), then the compiled arms; only a compile error reruns an arm eagerly
(and every later arm runs eagerly), an out-of-memory error or a profiler failure is
recorded as what it is; each row names its mode and the ratio compares like with like; the
run stops itself at its deadline, counted from the process's start."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compile_error() -> Exception:
    """A real torch.compile failure (a backend that raises), as torch wraps it."""
    def broken(gm, example_inputs):  # noqa: ARG001
        raise RuntimeError("backend compiler failed")

    try:
        torch.compile(lambda x: x + 1, backend=broken)(torch.ones(2))
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("torch.compile did not fail")


def fake_bench(calls: list, fail: Callable | None = None, sleep: float = 0):
    """A stand-in for ``bench``: figures in the mode it was asked for, ``fail(sp, compile_)``
    returning an exception to raise (before its first figure) or the profile error."""
    def bench(fw, sp, small, compile_, steps, batch, device, profile=0, warmup=5, emit=None, backend="",
              precision="auto"):
        calls.append((fw, sp, compile_))
        e = fail(sp, compile_) if fail else None
        if isinstance(e, BaseException):
            raise e
        mode = {"precision": "bf16", "compile": compile_, "backend": backend or "inductor"}
        for m in ("model", "e2e"):
            emit(m, {"img_s": 100.0 if not sp else 98.0, "ms": 10.0, "views": "2x32+6x16", "peak_gib": None, **mode})
            time.sleep(sleep)
        return {"profile_error": e} if isinstance(e, str) else {"profile": "table"} if profile else {}
    return bench


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
    assert (r["framework"], r["sp"], r["measure"], r["mode"]) == ("dino", False, "model", "eager fp32 model")
    assert r["img_s"] > 0


def test_failure_kind_tells_compile_errors_from_oom_and_the_rest(throughput):
    """Plant: failure_kind returning "compile" for any error of a compiled arm -> fails."""
    err = compile_error()
    assert throughput.failure_kind(err, compiled=True) == "compile"
    assert throughput.failure_kind(err, compiled=False) == "error"  # an eager arm has no compile to blame
    assert throughput.failure_kind(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   compiled=True) == "oom"
    try:  # an OOM raised while handling another error is still an OOM
        try:
            raise RuntimeError("inductor benchmarking")
        except RuntimeError:
            raise torch.OutOfMemoryError("CUDA out of memory")
    except torch.OutOfMemoryError as e:
        assert throughput.failure_kind(e, compiled=True) == "oom"
    assert throughput.failure_kind(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), compiled=True) == "error"


def test_order_compile_fallback_and_the_streamed_peer(throughput, tmp_path, monkeypatch, capsys):
    """Stand-ins for the arms, a real compile error in the first compiled arm, and a peer
    that prints one figure then hangs: the eager figure, then the peer (its figure kept and
    in its log), then the compiled arms, the failed one rerun eagerly and the next run
    eagerly at once. Plants: the peer after the compiled arms -> order fails; no eager
    rerun -> fails; the later arm compiling again -> fails; the peer without a timeout ->
    hangs past 30 s; the table keyed by SP alone -> the eager rows overwrite, fails."""
    calls, events = [], []
    monkeypatch.setattr(throughput, "bench", fake_bench(calls, lambda sp, c: compile_error() if c else None))
    real_peer = throughput.peer_rates
    monkeypatch.setattr(throughput, "peer_rates", lambda *a, **k: (events.append(len(calls)), real_peer(*a, **k))[1])
    peer = tmp_path / "peer.py"
    peer.write_text("import time\nprint(('model bf16', '   250.0 img/s', '1 ms/step'), flush=True)\ntime.sleep(30)\n")
    out, log = tmp_path / "tp.json", tmp_path / "peer.txt"
    t = time.time()
    code = throughput.main(["--small", "--compile", "--precision", "bf16", "--peer", str(peer), "--peer-timeout", "3",
                            "--peer-log", str(log), "--json", str(out)])
    assert code == 0 and time.time() - t < 25
    doc = json.loads(out.read_text())
    assert calls == [("dino", False, False), ("dino", True, False),  # the eager figure
                     ("dino", False, True), ("dino", False, False),  # compiled: compile error, rerun eagerly
                     ("dino", True, False)]  # the next arm eagerly at once
    assert events == [2], "the peer runs after the eager figure, before the compiled arms"
    main = [(r["sp"], r["mode"]) for r in doc["rows"] if r["phase"] == "main"]
    assert main == [(False, "eager bf16 model"), (False, "eager bf16 e2e"), (True, "eager bf16 model"),
                    (True, "eager bf16 e2e")]
    assert any("torch.compile failed" in n and "backend compiler failed" in n and "rerun eagerly" in n
               for n in doc["notes"])
    assert any("dino + SP (main): run eagerly, torch.compile having failed for dino (main)" in n for n in doc["notes"])
    assert doc["peer"]["rates"] == {"bf16": 250.0} and doc["peer"]["error"] == "timed out after 3 s"
    assert "'model bf16'" in log.read_text()  # streamed: there although the peer was killed
    assert doc["complete"] is True and doc["stopped"] is None
    lines = capsys.readouterr().out.splitlines()
    rows = [ln for ln in lines if ln.startswith("| dino |")]
    assert len(rows) == 4  # quick and main apart, one line per mode
    for ln in rows:  # ratios only against the peer's figure of the same mode
        if "eager bf16 model" in ln:
            assert ln.endswith("| 0.40 | 0.39 |"), ln
        else:
            assert ln.endswith("| no like-for-like figure | no like-for-like figure |"), ln
    assert all(re.search(r"\| \+2\.0% \|", ln) for ln in rows)  # SP overhead within one mode


def test_oom_and_profiler_failures_are_recorded_as_such(throughput, tmp_path, monkeypatch, capsys):
    """An OOM in a compiled arm is noted as out of memory, not rerun, and later arms still
    compile; a profiler failure keeps the arm's figures. Plants: every failure taken for a
    compile error -> an eager rerun appears, fails; the profiler error raised -> the SP
    arm's rows vanish, fails."""
    calls = []

    def fail(sp, compile_):
        if compile_ and not sp:
            return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return "RuntimeError: CUPTI_ERROR_NOT_INITIALIZED" if compile_ else None

    monkeypatch.setattr(throughput, "bench", fake_bench(calls, fail))
    out = tmp_path / "tp.json"
    assert throughput.main(["--small", "--compile", "--profile", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert calls[2:] == [("dino", False, True), ("dino", True, True)]
    assert any(n.startswith("dino (main): out of memory (OutOfMemoryError before the first figure") for n in doc["notes"])
    assert any("dino + SP (main): the profiler failed (RuntimeError: CUPTI" in n for n in doc["notes"])
    assert not any("torch.compile" in n for n in doc["notes"])
    assert [(r["sp"], r["mode"]) for r in doc["rows"] if r["phase"] == "main"] == [
        (True, "compiled bf16 model"), (True, "compiled bf16 e2e")]
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| dino | main |")]
    assert table and all("| - | 98 | - |" in ln for ln in table)  # no SP-off figure: no overhead


def test_the_time_limit_counts_from_the_process_start(throughput, tmp_path, monkeypatch):
    """A process that started 100 s ago with --time-limit 104 has ~4 s left: it stops itself
    (3 s before) in the middle of its first arm, keeps the figure it has, prints the table,
    exits 3. Plant: the limit counted from main()'s start (after the imports) -> the run goes
    on for all arms (> 4 s), fails."""
    calls = []
    monkeypatch.setattr(throughput, "bench", fake_bench(calls, sleep=2))
    monkeypatch.setattr(throughput, "process_start", lambda: time.time() - 100)
    out = tmp_path / "tp.json"
    t = time.time()
    code = throughput.main(["--small", "--time-limit", "104", "--json", str(out)])
    assert code == 3 and time.time() - t < 3
    doc = json.loads(out.read_text())
    assert doc["complete"] is False and doc["stopped"].startswith("the deadline") and len(doc["rows"]) == 1
    # the same with an absolute deadline from the caller, and none left for the peer
    assert throughput.main(["--small", "--deadline", str(time.time() + 3.5), "--json", str(out)]) == 3
    # the real one, in a fresh process: its start lies before its imports, by the seconds they took
    env = {**os.environ, "PYTHONPATH": str(REPO / "benchmarks")}
    t = time.time()
    age = float(subprocess.run([sys.executable, "-c", "import time, throughput; print(time.time() - throughput.process_start())"],
                               env=env, capture_output=True, text=True, check=True).stdout)
    assert 0 < age <= time.time() - t + 1.5, age  # btime is whole seconds


def test_a_profiler_failure_keeps_the_arms_figures(throughput, monkeypatch):
    """The real ``bench`` (tiny CPU arm) with a profiler that fails: both figures stand, the
    failure is returned as the profiler's. Plant: the profiler's exception propagated ->
    the arm fails (and run_arm would call it a compile error or a failure of the arm)."""
    def broken(*args, **kwargs):
        raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED")

    monkeypatch.setattr(throughput, "profile_steps", broken)
    torch.set_num_threads(1)
    figures = []
    out = throughput.bench("dino", False, True, False, 1, 2, torch.device("cpu"), profile=1, warmup=0,
                           emit=lambda mode, fig: figures.append((mode, fig["precision"], fig["compile"])))
    assert figures == [("model", "fp32", False), ("e2e", "fp32", False)]
    assert out["profile_error"] == "RuntimeError: CUPTI_ERROR_NOT_INITIALIZED" and "profile" not in out


def test_the_table_never_pairs_or_compares_across_modes(throughput, capsys):
    """SP off compiled, SP on fallen back to eager, and a peer with a compiled figure only:
    one line per mode, no SP overhead across modes, the ratio only where the peer has the
    same mode. Plant: lines keyed by measure alone (as before) -> the overhead mixes compile
    speed-up into SP's, fails."""
    res = throughput.Results("", {"versions": {"torch": "2.11.0"}})
    for sp, compiled, img_s in ((False, True, 200.0), (True, False, 100.0)):
        for measure in ("model", "e2e"):
            res.row(framework="dino", sp=sp, measure=measure, phase="main", steps=20, compile=compiled,
                    backend="inductor" if compiled else "none", precision="bf16", img_s=img_s, ms=1.0,
                    views="2x224+6x96", peak_gib=10.0)
    res.doc["peer"] = {"rates": {"compile": 160.0}, "error": None}
    capsys.readouterr()
    throughput.table(res, "NVIDIA H100", small=False)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| dino |")]
    assert lines == [
        "| dino | main | compiled bf16 model | 2x224+6x96 | - | 200 | - | - | 1.25 | - | 10.0 | - |",
        "| dino | main | compiled bf16 e2e | 2x224+6x96 | - | 200 | - | - | no like-for-like figure | - | 10.0 | - |",
        "| dino | main | eager bf16 model | - | 2x224+6x96 | - | 100 | - | - | no like-for-like figure | - | 10.0 |",
        "| dino | main | eager bf16 e2e | - | 2x224+6x96 | - | 100 | - | - | no like-for-like figure | - | 10.0 |"]
