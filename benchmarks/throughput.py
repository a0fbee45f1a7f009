"""Training-step throughput of a framework with and without SP, through our real trainer,
beside the reference DINO step (the peer) in the same mode.

Two measurements per setting, each as images/s (one image = all its views):
  model  - ``train_step`` on ready-made views (backbone, heads, losses, backward, AdamW, EMA)
  e2e    - ``train_step`` from uint8 canvases: device-side multi-crop + augmentation + model
and the SP overhead in percent (the same step with SP on vs off, in the same mode).

Every figure names its *mode*: eager or compiled (with the backend when not inductor), bf16
or fp32, model or e2e, e.g. ``compiled bf16 model``. Ratios and overheads compare figures of
one mode only.

GPU setting (default on CUDA): ViT-S/16, 2x224 + 6x96 views, batch 128, bf16 autocast,
torch.compile, fused AdamW, the preset's canvases (448 px) and local scale. CPU setting
(``--small`` or no GPU): a tiny ViT at 32/16 px, batch 32, fp32 unless ``--precision bf16``.

Order, so that a like-for-like ratio exists whatever is cut (issue 29):
  1. the eager figure: DINO with and without SP, no compile (``--quick-steps`` timed steps,
     about a minute on a GPU) when the main arms compile; else the main arms themselves;
  2. with ``--peer PATH`` (``../shared/bench/peer_dino_step.py``, copied where the GPU run can
     read it): the reference DINO step in a subprocess on the same card, ``bf16`` (eager bf16
     model) then ``compile`` (compiled bf16 model; CUDA only), its output streamed to
     ``--peer-log`` as it runs and each figure recorded the moment it is printed; stopped at
     ``--peer-timeout`` s or the deadline, a failure noted, not fatal;
  3. the compiled arms (``--compile``, the default on a GPU). Only a compile error (dynamo,
     inductor, triton) reruns an arm eagerly, and every later arm then runs eagerly too; an
     out-of-memory error or a profiler failure is recorded as what it is.
Every figure is printed (``result: ...``) and written to ``--json`` (rewritten atomically)
the moment it exists; the table comes last, with ours / peer where the peer has a figure of
the same mode ("no like-for-like figure" where not).

Time: ``--deadline T`` (epoch seconds, from the caller) or ``--time-limit S`` (counted from
the process's start, imports included) stops the run where it is a few seconds before it,
as does SIGTERM: the figures so far are kept, the table printed, the JSON says why
(``stopped``) and ``complete`` stays false; exit code 3 (deadline) or 143 (SIGTERM).

Usage:
    python benchmarks/throughput.py [--framework dino] [--small] [--steps 20] [--no-compile]
                                    [--compile] [--compile-backend inductor] [--precision auto]
                                    [--peer PATH] [--peer-timeout 240] [--peer-log PATH]
                                    [--profile N] [--json PATH] [--warmup 5] [--quick-steps 10]
                                    [--threads N] [--deadline T | --time-limit S]

Both arms pin ``views.local_flip=per_image``, so the SP overhead is SP's alone (not a
different flip path). ``e2e`` gathers each step's batch from a pool of 4 x batch canvases
on the device, as the trainer does. ``--profile N`` adds a torch.profiler table of N
end-to-end steps per main arm (the issue's "where it falls short, profile").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spatialssl import config  # noqa: E402
from spatialssl.engine.trainer import build, train_step  # noqa: E402

STOP_MARGIN_S = 3.0  # stop this long before the deadline: the table, the JSON and the exit
PEER_MIN_S = 20.0  # the peer is not started with less left (its imports and model alone take that)
# the peer's styles and the mode of ours each compares with (lightly's DINO step; its "compile"
# compiles the backbones with torch.compile's default backend, inductor)
PEER_MODES = {"bf16": "eager bf16 model", "compile": "compiled bf16 model", "grouped": "eager fp32 model"}
NO_PEER = "no like-for-like figure"


class Stopped(BaseException):
    """Raised in the main thread at the deadline or on SIGTERM. A BaseException, so that the
    arms' ``except Exception`` does not take it for a failure of the arm."""

    def __init__(self, why: str, code: int) -> None:
        super().__init__(why)
        self.why, self.code = why, code


def process_start() -> float:
    """Epoch seconds at which this process started (Linux /proc; else now): ``--time-limit``
    counts from there, so the seconds spent importing torch and timm (5-15 s on a cold GPU
    machine) are inside the limit, not on top of it."""
    now = time.time()
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        start = btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return now
    return start if now - 3600 < start <= now + 1 else now  # btime is whole seconds; distrust nonsense


def versions() -> dict[str, str]:
    """What a figure was made with (the GPU image's torch and timm are not our pins)."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "timm", "lightly"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    out["cuda"] = torch.version.cuda or "none"
    out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return out


def mode_name(compiled: bool, backend: str, precision: str, measure: str) -> str:
    """``eager bf16 model``, ``compiled bf16 e2e``, ``compiled (aot_eager) fp32 model``, ..."""
    how = "eager" if not compiled else "compiled" if backend == "inductor" else f"compiled ({backend})"
    return f"{how} {precision} {measure}"


def settings(framework: str, small: bool, compile_: bool, batch: int | None, backend: str = "",
             precision: str = "auto") -> tuple[list[str], list[str]]:
    presets = [framework] if (config.CONFIG_DIR / f"{framework}.yaml").exists() else []
    # one local-flip policy in both arms (SP needs per-image flips): the overhead is SP's alone
    ov = [f"framework.name={framework}", "train.progress=false", "views.local_flip=per_image",
          f"train.compile={str(compile_).lower()}", f"train.precision={precision}"]
    if backend:
        ov.append(f"train.compile_backend={backend}")
    if small:
        ov += ["backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=32", "views.global_size=32",
               "views.local_size=16", f"train.batch_size={batch or 32}", "framework.out_dim=4096",
               "framework.hidden_dim=512", "framework.patch_out_dim=4096", "views.local_scale=[0.05,0.25]"]
    else:
        ov += ["backbone.name=vit_small", "backbone.patch_size=16", "backbone.img_size=224", "views.global_size=224",
               "views.local_size=96", f"train.batch_size={batch or 128}"]
    return presets, ov


def bench(framework: str, sp: bool, small: bool, compile_: bool, steps: int, batch: int | None,
          device: torch.device, profile: int = 0, warmup: int = 5,
          emit: Callable[[str, dict], None] | None = None, backend: str = "", precision: str = "auto") -> dict:
    """Model-only and end-to-end img/s of one arm; ``emit(mode, figures)`` is called as soon
    as each mode's figures exist (so a run cut short keeps what it measured). A profiler
    failure is returned as ``profile_error``, the figures kept."""
    presets, ov = settings(framework, small, compile_, batch, backend, precision)
    cfg = config.resolve(presets, [*ov, f"sp.enabled={str(sp).lower()}", f"train.steps={steps + warmup + profile}"])
    canvas = 48 if small else cfg["data"]["canvas_size"]  # the preset's canvas (448 px for the ViT presets)
    run = build(cfg, (canvas, canvas), device)
    run.framework.collect_logs = False  # as on the trainer's non-logging steps
    b = cfg["train"]["batch_size"]
    g = torch.Generator(device).manual_seed(0)
    # a pool of uint8 canvases on the device, indexed per step as the trainer does (end to end:
    # gather -> multi-crop + augmentation -> model)
    pool = torch.randint(0, 256, (4 * b, 3, canvas, canvas), dtype=torch.uint8, device=device, generator=g)
    canvases = pool[:b]
    fixed_views = run.multicrop(canvases, g)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # the mode as the run was built (train.precision=auto: bf16 on CUDA, fp32 on a CPU)
    fixed = {"precision": "bf16" if run.bf16 else "fp32", "compile": bool(cfg["train"]["compile"]),
             "backend": cfg["train"]["compile_backend"] if cfg["train"]["compile"] else "none"}
    out = {"views": f"{cfg['views']['n_global']}x{cfg['views']['global_size']}+{run.multicrop.n_local}x"
                    f"{cfg['views']['local_size']}", **fixed}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for mode in ("model", "e2e"):
        times = []
        for i in range(steps + warmup):  # warm-up steps first (compilation happens here)
            sync()
            t = time.perf_counter()
            if mode == "model":
                train_step(run, None, i, views=fixed_views)
            else:
                idx = torch.randint(0, len(pool), (b,), device=device, generator=g)
                train_step(run, pool[idx], i)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out[mode] = b / med
        out[mode + "_ms"] = med * 1000
        if device.type == "cuda":  # peak so far: the e2e step holds the canvases and the views too
            out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        if emit is not None:
            emit(mode, {"img_s": out[mode], "ms": out[mode + "_ms"], "views": out["views"],
                        "peak_gib": out.get("peak_gib"), **fixed})
    if profile:
        try:
            out["profile"] = profile_steps(run, pool, b, profile, device, g)
        except Exception as e:  # noqa: BLE001 - the figures above stand; the failure is the profiler's
            out["profile_error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    return out


def profile_steps(run, pool: torch.Tensor, b: int, n: int, device: torch.device, g: torch.Generator) -> str:
    """torch.profiler over ``n`` end-to-end steps (after the timed ones, so compiled): the
    operators by total device time (CPU time on a CPU), as a text table."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(n):
            idx = torch.randint(0, len(pool), (b,), device=device, generator=g)
            train_step(run, pool[idx], i)  # a step index inside the schedules
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25)


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
# where torch.compile's own errors are defined (dynamo's tracing, AOT autograd, inductor's code
# generation, triton's compiler); matched by module so that no torch-version-specific class is named
_COMPILE_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "triton")


def failure_kind(e: BaseException, compiled: bool) -> str:
    """``oom``, ``compile`` (an error of torch.compile itself, only when the arm compiled) or
    ``error``, from the exception and the ones it was raised from (inductor wraps the
    errors of its compile workers)."""
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(x, _OOM) or "out of memory" in str(x).lower() for x in chain):
        return "oom"
    if compiled and any(type(x).__module__.startswith(_COMPILE_MODULES) for x in chain):
        return "compile"
    return "error"


PEER_LINE = (re.compile(r"model (\w+) \|\s+([\d.]+) img/s"),  # its final table
             re.compile(r"\('model (\w+)', '\s*([\d.]+) img/s'"))  # its progress lines (a run cut short)


def peer_rates(path: str, batch: int, steps: int, small: bool, timeout: float, log: str = "",
               on_rate: Callable[[str, float], None] | None = None) -> dict:
    """img/s of the reference DINO steps (``model bf16``, then ``model compile`` on CUDA),
    measured by ``peer_dino_step.py`` in a subprocess (fp32 styles and augmentation benches
    skipped), its output streamed to ``log`` as it runs (a temporary file when empty) and
    each figure passed to ``on_rate`` the moment it is printed; killed after ``timeout`` s.
    Returns {"rates": {style: img/s}, "error": str or None, "log": path}: a failure or a
    timeout is recorded with the rates printed before it, never raised (a ``Stopped`` from
    the deadline kills the peer and propagates)."""
    cmd = [sys.executable, path, "--batch", str(batch), "--steps", str(steps), "--skip", "peer,grouped,cpuaug,gpuaug"]
    if small:
        cmd.append("--small")
    keep = bool(log)
    log_path = Path(log) if log else Path(tempfile.mkstemp(prefix="peer_", suffix=".txt")[1])
    rates: dict[str, float] = {}
    error, seen = None, 0

    def scan() -> None:
        nonlocal seen
        text = log_path.read_text(errors="replace")
        done, seen = text[seen:text.rfind("\n") + 1], max(seen, text.rfind("\n") + 1)
        for line in done.splitlines():
            for pattern in PEER_LINE:
                m = pattern.search(line)
                if m and rates.get(m.group(1)) != float(m.group(2)):
                    rates[m.group(1)] = float(m.group(2))
                    if on_rate is not None:
                        on_rate(m.group(1), rates[m.group(1)])

    t0 = time.time()
    with open(log_path, "w") as f:
        try:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as e:
            return {"rates": {}, "error": f"could not start: {e}", "log": str(log_path) if keep else None}
        try:
            while proc.poll() is None and time.time() - t0 < timeout:
                scan()
                time.sleep(0.25)
            if proc.poll() is None:
                error = f"timed out after {timeout:.0f} s"
        finally:  # also when stopped at the deadline: the peer must not outlive this run
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    scan()
    if error is None and proc.returncode:
        lines = [ln for ln in log_path.read_text(errors="replace").strip().splitlines() if ln.strip()]
        error = f"exit code {proc.returncode}: {lines[-1] if lines else ''}"
    if error:
        print("peer output (last 2,000 characters):\n" + log_path.read_text(errors="replace")[-2000:], flush=True)
    if not keep:
        log_path.unlink(missing_ok=True)
    return {"rates": rates, "error": error, "log": str(log_path) if keep else None}


class Results:
    """The figures of a run, each (arm, mode) printed and written to ``path`` the moment it
    exists: the JSON file is rewritten atomically (a temporary file renamed over it), so a
    run killed at any moment leaves the results measured so far, readable."""

    def __init__(self, path: str, meta: dict) -> None:
        self.path = Path(path) if path else None
        self.doc = {**meta, "rows": [], "peer": None, "notes": [], "profiles": {}, "complete": False,
                    "stopped": None}
        self.write()

    def row(self, **row) -> None:
        row["mode"] = mode_name(row["compile"], row["backend"], row["precision"], row["measure"])
        self.doc["rows"].append(row)
        peak = f", peak {row['peak_gib']:.1f} GiB" if row.get("peak_gib") is not None else ""
        print(f"result: {row['framework']}{' + SP' if row['sp'] else ''} {row['mode']} ({row['phase']}): "
              f"{row['img_s']:,.1f} img/s, {row['ms']:.1f} ms/step{peak}", flush=True)
        self.write()

    def note(self, text: str) -> None:
        self.doc["notes"].append(text)
        print(f"note: {text}", flush=True)
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2))
        os.replace(tmp, self.path)


def run_arm(res: Results, fw: str, sp: bool, phase: str, compile_: bool, steps: int, a, small: bool,
            device: torch.device, profile: int = 0, state: dict | None = None) -> bool:
    """One arm (framework +/- SP), its rows recorded as they come. Only a compile error
    reruns the arm eagerly, and marks ``state["compile_failed"]`` so that every later arm
    runs eagerly (a second cold compile would fail alike and cost minutes); an
    out-of-memory error or any other failure is noted as what it is and the run goes on.
    Returns whether the arm measured both modes."""
    state = {} if state is None else state
    what = f"{fw}{' + SP' if sp else ''} ({phase})"
    if compile_ and state.get("compile_failed"):
        res.note(f"{what}: run eagerly, torch.compile having failed for {state['compile_failed']}")
        compile_ = False
    done: list[str] = []

    def emit(mode: str, fig: dict) -> None:
        done.append(mode)
        res.row(framework=fw, sp=sp, measure=mode, phase=phase, steps=steps, **fig)

    out, error = None, None
    try:
        out = bench(fw, sp, small, compile_, steps, a.batch, device, profile, a.warmup, emit,
                    a.compile_backend, a.precision)
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        kind = failure_kind(e, compile_)
        where = " in e2e" if done else " before the first figure"
        error = (kind, f"{type(e).__name__}{where}: {str(e).strip()[:500]}")
    if device.type == "cuda":  # (outside the except block: its traceback would keep the failed arm's tensors)
        torch.cuda.empty_cache()
    if error is not None:
        kind, text = error
        if kind == "compile":
            state["compile_failed"] = what
            res.note(f"{what}: torch.compile failed ({text}); rerun eagerly")
            torch._dynamo.reset()
            return run_arm(res, fw, sp, phase, False, steps, a, small, device, profile, state)
        res.note(f"{what}: {'out of memory' if kind == 'oom' else 'failed'} ({text})")
        return False
    if "profile_error" in out:
        res.note(f"{what}: the profiler failed ({out['profile_error']}); the arm's figures stand")
    if "profile" in out:
        res.doc["profiles"][f"{fw}{' + SP' if sp else ''} ({phase})"] = out["profile"]
        res.write()
    return True


def table(res: Results, name: str, small: bool) -> None:
    """The summary table: one line per framework, phase and mode, SP off and on side by side;
    the SP overhead within that mode, and ours / peer against the peer's figure of that mode."""
    doc = res.doc
    peer = {PEER_MODES[k]: (k, v) for k, v in ((doc["peer"] or {}).get("rates") or {}).items() if k in PEER_MODES}
    v = doc.get("versions", {})
    print(f"\nthroughput on {name}, {'small CPU setting' if small else 'ViT-S/16'}; "
          + ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "torchvision", "timm", "lightly", "cuda") if k in v))
    if doc["peer"] is not None:
        err = doc["peer"]["error"]
        print("peer (peer_dino_step.py, model only, same card): "
              + (", ".join(f"{k} ({PEER_MODES.get(k, 'unknown mode')}) {r:,.0f} img/s"
                           for k, r in doc["peer"]["rates"].items()) or "no figure")
              + (f"; peer failed: {err}" if err else ""))
    for note in doc["notes"]:
        print(f"note: {note}")
    if doc.get("stopped"):
        print(f"stopped: {doc['stopped']} (the figures above are those measured before)")
    cuda = any(r.get("peak_gib") is not None for r in doc["rows"])
    print("| framework | phase | mode | views (off) | views (+SP) | img/s | img/s + SP | SP overhead |"
          + (" ours / peer | ours + SP / peer |" if doc["peer"] is not None else "")
          + (" peak GiB | peak GiB + SP |" if cuda else ""))
    print("|---|---|---|---|---|---:|---:|---:|" + ("---:|---:|" if doc["peer"] is not None else "")
          + ("---:|---:|" if cuda else ""))
    fig = lambda r, k, f: f.format(r[k]) if r is not None and r.get(k) is not None else "-"  # noqa: E731
    keys = dict.fromkeys((r["framework"], r["phase"], r["mode"]) for r in doc["rows"])  # in the order measured
    for fw, phase, mode in keys:
        pair = {r["sp"]: r for r in doc["rows"] if (r["framework"], r["phase"], r["mode"]) == (fw, phase, mode)}
        r0, r1 = pair.get(False), pair.get(True)
        ovh = f"{100 * (r0['img_s'] / r1['img_s'] - 1):+.1f}%" if r0 and r1 else "-"
        line = (f"| {fw} | {phase} | {mode} | {fig(r0, 'views', '{}')} | {fig(r1, 'views', '{}')} | "
                f"{fig(r0, 'img_s', '{:,.0f}')} | {fig(r1, 'img_s', '{:,.0f}')} | {ovh} |")
        if doc["peer"] is not None:
            ref = peer.get(mode)
            line += "".join(" - |" if r is None else f" {r['img_s'] / ref[1]:.2f} |" if ref else f" {NO_PEER} |"
                            for r in (r0, r1))
        if cuda:
            line += f" {fig(r0, 'peak_gib', '{:.1f}')} | {fig(r1, 'peak_gib', '{:.1f}')} |"
        print(line)
    # issue 29's goal: ours + SP end to end over the peer's bf16 + compile step. Not like for
    # like (ours also cuts and augments the views; the peer's model step does not), so not in
    # the ratio column, and said so
    ref = peer.get("compiled bf16 model")
    goal = [r for r in doc["rows"] if r["sp"] and r["framework"] == "dino" and r["mode"] == "compiled bf16 e2e"]
    if ref and goal:
        print(f"goal (issue 29: >= 1.7): dino + SP compiled bf16 e2e / peer compile (model only) = "
              f"{goal[-1]['img_s'] / ref[1]:.2f} (ours includes the multi-crop and augmentation, the peer's does not)")
    for k, t in doc["profiles"].items():
        print(f"\nprofile, {k} (torch.profiler, by total device time):\n{t}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", default="dino")
    p.add_argument("--small", action="store_true", help="CPU-sized setting")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement (compilation)")
    p.add_argument("--quick-steps", type=int, default=10,
                   help="timed steps of the first, eager figure when the main arms compile (0: none)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile in the small setting too")
    p.add_argument("--compile-backend", default="", choices=["", "inductor", "aot_eager", "eager"],
                   help="torch.compile's backend (default: the config's, inductor; aot_eager: the compile path "
                        "on a CPU without generating code)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="train.precision of our arms (auto: bf16 on CUDA, fp32 on a CPU; the peer is bf16)")
    p.add_argument("--peer", default="", help="path of peer_dino_step.py: measure it after our eager figure")
    p.add_argument("--peer-timeout", type=float, default=240, help="seconds before the peer run is stopped")
    p.add_argument("--peer-log", default="", help="stream the peer's output to this file as it runs")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile N end-to-end steps of each main arm (torch.profiler table, by device time)")
    p.add_argument("--json", default="", help="write the figures (and profiles) to this JSON file, after each one")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--deadline", type=float, default=0,
                   help="epoch seconds by which this run has stopped (the caller's clock; 0: none)")
    p.add_argument("--time-limit", type=float, default=0,
                   help="seconds this run may take, counted from the process's start (0: no limit)")
    a = p.parse_args(argv)
    deadline = min(a.deadline or math.inf, process_start() + a.time_limit if a.time_limit else math.inf)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = a.small or device.type == "cpu"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    compile_ = a.compile or (not small and not a.no_compile)
    batch = a.batch or (32 if small else 128)
    res = Results(a.json, {"card": name, "versions": versions(), "torch": torch.__version__,
                           "setting": "small CPU" if small else "ViT-S/16", "compile": compile_,
                           "compile_backend": a.compile_backend or "inductor", "precision": a.precision,
                           "steps": a.steps, "batch": batch,
                           "deadline": deadline if math.isfinite(deadline) else None})
    frameworks = a.framework.split(",")
    state: dict = {}

    def stop(signum, frame):  # noqa: ARG001 - raised where the main thread is (a step, a compile, the peer wait)
        if signum == signal.SIGTERM:
            raise Stopped("SIGTERM", 143)
        raise Stopped(f"the deadline ({STOP_MARGIN_S:.0f} s before --deadline/--time-limit)", 3)

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGALRM)}
    if math.isfinite(deadline):
        signal.setitimer(signal.ITIMER_REAL, max(deadline - STOP_MARGIN_S - time.time(), 0.001))
    code = 0
    try:
        # 1. the eager figure first (bf16 on a GPU): some figure, and one the peer's bf16 matches
        eager = [(fw, sp) for fw in (frameworks[:1] if compile_ else frameworks) for sp in (False, True)]
        for fw, sp in eager:
            if compile_ and a.quick_steps:
                run_arm(res, fw, sp, "quick", False, a.quick_steps, a, small, device, state=state)
            elif not compile_:
                run_arm(res, fw, sp, "main", False, a.steps, a, small, device, a.profile, state)
        # 2. the peer, bf16 then compile, its figures recorded as printed: a like-for-like
        #    ratio exists before our compiled arms start (a failure is recorded, not fatal)
        if a.peer:
            left = deadline - STOP_MARGIN_S - time.time()
            if left < PEER_MIN_S:
                res.doc["peer"] = {"rates": {}, "error": f"not run: {max(left, 0):.0f} s left before the deadline",
                                   "log": None}
            else:
                # until peer_rates returns: what a run stopped meanwhile leaves (its figures so far)
                res.doc["peer"] = {"rates": {}, "error": "did not finish: this run was stopped",
                                   "log": a.peer_log or None}

                def on_rate(style: str, rate: float) -> None:
                    res.doc["peer"]["rates"][style] = rate
                    print(f"result: peer {style} ({PEER_MODES.get(style, 'unknown mode')}): {rate:,.1f} img/s",
                          flush=True)
                    res.write()

                res.doc["peer"] = peer_rates(a.peer, batch, a.steps, small, min(a.peer_timeout, left),
                                             a.peer_log, on_rate)
            res.write()
        # 3. our compiled arms (after a compile error, eager)
        if compile_:
            for fw in frameworks:
                for sp in (False, True):
                    run_arm(res, fw, sp, "main", True, a.steps, a, small, device, a.profile, state)
        res.doc["complete"] = True
    except Stopped as s:
        res.doc["stopped"], res.doc["complete"] = s.why, False
        code = s.code
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in old.items():
            signal.signal(s, h)
    res.write()
    table(res, name, small)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    code = main()
    if code:  # stopped: exit now, without waiting on compile workers or CUDA teardown
        sys.stderr.flush()
        os._exit(code)
