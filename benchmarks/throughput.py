"""Training-step throughput of a framework with and without SP, through our real trainer.

Two measurements per setting, each as images/s (one image = all its views):
  model  - ``train_step`` on ready-made views (backbone, heads, losses, backward, AdamW, EMA)
  e2e    - ``train_step`` from uint8 canvases: device-side multi-crop + augmentation + model
and the SP overhead in percent (the same step with SP on vs off).

GPU setting (default on CUDA): ViT-S/16, 2x224 + 6x96 views, batch 128, bf16 autocast,
torch.compile, fused AdamW, the preset's canvases (448 px) and local scale. CPU setting (``--small`` or no GPU): a tiny
ViT at 32/16 px, batch 32.

Order, so that a run cut short still returns figures: (1) a quick figure, DINO with and
without SP, no compile (bf16 on a GPU, ``--quick-steps`` timed steps: about a minute), when
the main arms compile; (2) our arms as configured: an arm whose ``torch.compile`` fails is
rerun without compile and the failure noted; (3) with ``--peer PATH``
(``../shared/bench/peer_dino_step.py``, copied where the GPU run can read it), the reference
DINO steps (lightly's loss and head, bf16, and bf16 + torch.compile of the backbones) in a
subprocess on the same card, stopped after ``--peer-timeout`` s (a failure or timeout is
noted, with any figure it printed, and is not fatal); the table gains a column: our img/s
over the peer's best. Every (arm, mode) figure is printed (``result: ...``) and written to
``--json`` (rewritten atomically) the moment it exists; the table comes last.

Usage:
    python benchmarks/throughput.py [--framework dino] [--small] [--steps 20] [--no-compile]
                                    [--compile] [--peer PATH] [--peer-timeout 240] [--profile N]
                                    [--json PATH] [--warmup 5] [--quick-steps 10] [--threads N]

Both arms pin ``views.local_flip=per_image``, so the SP overhead is SP's alone (not a
different flip path). ``e2e`` gathers each step's batch from a pool of 4 x batch canvases
on the device, as the trainer does. ``--profile N`` adds a torch.profiler table of N
end-to-end steps per setting (the issue's "where it falls short, profile").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spatialssl import config  # noqa: E402
from spatialssl.engine.trainer import build, train_step  # noqa: E402


def settings(framework: str, small: bool, compile_: bool, batch: int | None) -> list[str]:
    presets = [framework] if (config.CONFIG_DIR / f"{framework}.yaml").exists() else []
    # one local-flip policy in both arms (SP needs per-image flips): the overhead is SP's alone
    ov = [f"framework.name={framework}", "train.progress=false", "views.local_flip=per_image"]
    if small:
        ov += ["backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=32", "views.global_size=32",
               "views.local_size=16", f"train.batch_size={batch or 32}", "framework.out_dim=4096",
               "framework.hidden_dim=512", "framework.patch_out_dim=4096", "views.local_scale=[0.05,0.25]",
               f"train.compile={str(compile_).lower()}"]
    else:
        ov += ["backbone.name=vit_small", "backbone.patch_size=16", "backbone.img_size=224", "views.global_size=224",
               "views.local_size=96", f"train.batch_size={batch or 128}", f"train.compile={str(compile_).lower()}"]
    return presets, ov


def bench(framework: str, sp: bool, small: bool, compile_: bool, steps: int, batch: int | None,
          device: torch.device, profile: int = 0, warmup: int = 5,
          emit: Callable[[str, dict], None] | None = None) -> dict:
    """Model-only and end-to-end img/s of one arm; ``emit(mode, figures)`` is called as soon
    as each mode's figures exist (so a run cut short keeps what it measured)."""
    presets, ov = settings(framework, small, compile_, batch)
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

    out = {"views": f"{cfg['views']['n_global']}x{cfg['views']['global_size']}+{run.multicrop.n_local}x"
                    f"{cfg['views']['local_size']}"}
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
                        "peak_gib": out.get("peak_gib")})
    if profile:
        out["profile"] = profile_steps(run, pool, b, profile, device, g)
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


PEER_LINE = (re.compile(r"model (\w+) \|\s+([\d.]+) img/s"),  # its final table
             re.compile(r"\('model (\w+)', '\s*([\d.]+) img/s'"))  # its progress lines (a run cut short)


def peer_rates(path: str, batch: int, steps: int, small: bool, timeout: float) -> dict:
    """img/s of the reference DINO steps (``model bf16``, ``model compile``, ...), measured by
    ``peer_dino_step.py`` in a subprocess (fp32 styles and augmentation benches skipped),
    killed after ``timeout`` s. Returns {"rates": {style: img/s}, "error": str or None}: a
    failure or a timeout is recorded with the rates printed before it, never raised."""
    cmd = [sys.executable, path, "--batch", str(batch), "--steps", str(steps), "--skip", "peer,grouped,cpuaug,gpuaug"]
    if small:
        cmd.append("--small")
    error = None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        stdout, stderr = res.stdout, res.stderr
        if res.returncode:
            error = f"exit code {res.returncode}: {stderr.strip().splitlines()[-1] if stderr.strip() else ''}"
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        error = f"timed out after {timeout:.0f} s"
    except OSError as e:
        stdout, stderr, error = "", "", f"could not start: {e}"
    print(stdout[-2000:], stderr[-2000:] if error else "", flush=True)
    rates = {}
    for line in stdout.splitlines():
        for pattern in PEER_LINE:
            m = pattern.search(line)
            if m:
                rates[m.group(1)] = float(m.group(2))
    return {"rates": rates, "error": error}


class Results:
    """The figures of a run, each (arm, mode) printed and written to ``path`` the moment it
    exists: the JSON file is rewritten atomically (a temporary file renamed over it), so a
    run killed at any moment leaves the results measured so far, readable."""

    def __init__(self, path: str, meta: dict) -> None:
        self.path = Path(path) if path else None
        self.doc = {**meta, "rows": [], "peer": None, "notes": [], "profiles": {}, "complete": False}
        self.write()

    def row(self, **row) -> None:
        self.doc["rows"].append(row)
        peak = f", peak {row['peak_gib']:.1f} GiB" if row.get("peak_gib") is not None else ""
        print(f"result: {row['framework']}{' + SP' if row['sp'] else ''} {row['measure']} "
              f"({row['phase']}, compile {row['compile']}): {row['img_s']:,.1f} img/s, {row['ms']:.1f} ms/step{peak}",
              flush=True)
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
            device: torch.device, profile: int = 0) -> bool:
    """One arm (framework +/- SP), its rows recorded as they come. A compile failure reruns
    the arm without compile (noted); any other failure is noted and the run goes on.
    Returns whether the arm measured both modes."""
    def emit(mode: str, fig: dict, compiled: bool) -> None:
        res.row(framework=fw, sp=sp, measure=mode, phase=phase, compile=compiled, steps=steps, **fig)

    what, out = f"{fw}{' + SP' if sp else ''} ({phase})", None
    try:
        out = bench(fw, sp, small, compile_, steps, a.batch, device, profile, a.warmup,
                    lambda m, f: emit(m, f, compile_))
    except Exception as e:  # noqa: BLE001 - recorded, the run goes on
        if compile_:
            res.note(f"{what}: torch.compile failed ({type(e).__name__}: {str(e).strip()[:500]}); "
                     f"rerun without compile")
        else:
            res.note(f"{what} failed: {type(e).__name__}: {str(e).strip()[:500]}")
    if device.type == "cuda":  # (outside the except block: its traceback would keep the failed arm's tensors)
        torch.cuda.empty_cache()
    if out is None:
        if not compile_:
            return False
        torch._dynamo.reset()
        return run_arm(res, fw, sp, phase, False, steps, a, small, device, profile)
    if "profile" in out:
        res.doc["profiles"][f"{fw}{' + SP' if sp else ''}"] = out["profile"]
        res.write()
    return True


def table(res: Results, name: str, small: bool) -> None:
    """The summary table from the rows recorded (the main phase's, else the quick figure's)."""
    doc = res.doc
    peer = (doc["peer"] or {}).get("rates", {})
    ref_style = "compile" if "compile" in peer else "bf16"
    print(f"\nthroughput on {name}, torch {torch.__version__}, {'small CPU setting' if small else 'ViT-S/16 bf16'}")
    if doc["peer"] is not None:
        err = doc["peer"]["error"]
        print("peer (peer_dino_step.py, model only, same card): "
              + (", ".join(f"{k} {v:,.0f} img/s" for k, v in peer.items()) or "no figure")
              + (f"; ratio column: ours / peer {ref_style}" if peer else "") + (f"; peer failed: {err}" if err else ""))
    for note in doc["notes"]:
        print(f"note: {note}")
    cuda = any(r.get("peak_gib") is not None for r in doc["rows"])
    print("| framework | measure | phase | compile | views (off) | views (+SP) | img/s | img/s + SP | SP overhead |"
          + (" ours / peer | ours + SP / peer |" if peer else "") + (" peak GiB | peak GiB + SP |" if cuda else ""))
    print("|---|---|---|---|---|---|---:|---:|---:|" + ("---:|---:|" if peer else "") + ("---:|---:|" if cuda else ""))
    for fw in dict.fromkeys(r["framework"] for r in doc["rows"]):
        for phase in ("main", "quick"):
            for mode in ("model", "e2e"):
                pair = {r["sp"]: r for r in doc["rows"]
                        if r["framework"] == fw and r["phase"] == phase and r["measure"] == mode}
                if not pair:
                    continue
                r0, r1 = pair.get(False), pair.get(True)
                fig = lambda r, k, f: f.format(r[k]) if r is not None and r.get(k) is not None else "-"  # noqa: E731
                ovh = f"{100 * (r0['img_s'] / r1['img_s'] - 1):+.1f}%" if r0 and r1 else "-"
                comp = "/".join(sorted({str(r["compile"]) for r in pair.values()}))
                line = (f"| {fw} | {mode} | {phase} | {comp} | {fig(r0, 'views', '{}')} | {fig(r1, 'views', '{}')} | "
                        f"{fig(r0, 'img_s', '{:,.0f}')} | {fig(r1, 'img_s', '{:,.0f}')} | {ovh} |")
                if peer:
                    line += "".join(f" {r['img_s'] / peer[ref_style]:.2f} |" if r else " - |" for r in (r0, r1))
                if cuda:
                    line += f" {fig(r0, 'peak_gib', '{:.1f}')} | {fig(r1, 'peak_gib', '{:.1f}')} |"
                print(line)
    for k, t in doc["profiles"].items():
        print(f"\nprofile, {k} (torch.profiler, by total device time):\n{t}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", default="dino")
    p.add_argument("--small", action="store_true", help="CPU-sized setting")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement (compilation)")
    p.add_argument("--quick-steps", type=int, default=10,
                   help="timed steps of the first, no-compile figure (0: none)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile in the small setting too")
    p.add_argument("--peer", default="", help="path of peer_dino_step.py: measure it after our arms, report the ratio")
    p.add_argument("--peer-timeout", type=float, default=240, help="seconds before the peer run is stopped")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile N end-to-end steps of each setting (torch.profiler table, by device time)")
    p.add_argument("--json", default="", help="write the figures (and profiles) to this JSON file, after each one")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--time-limit", type=float, default=0,
                   help="seconds this run may take (the peer's timeout is cut to what is left; 0: no limit)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
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
    res = Results(a.json, {"card": name, "torch": torch.__version__,
                           "setting": "small CPU" if small else "ViT-S/16 bf16", "compile": compile_,
                           "steps": a.steps, "batch": batch})
    frameworks = a.framework.split(",")
    # 1. a quick figure first, no compile (bf16 on a GPU): some figure exists within ~a minute
    if a.quick_steps and compile_:
        for sp in (False, True):
            run_arm(res, frameworks[0], sp, "quick", False, a.quick_steps, a, small, device)
    # 2. our arms, as configured (a compile failure reruns the arm without compile)
    for fw in frameworks:
        for sp in (False, True):
            run_arm(res, fw, sp, "main", compile_, a.steps, a, small, device, a.profile)
    # 3. the peer last, in a subprocess with its own timeout: a failure is recorded, not fatal
    if a.peer:
        timeout = a.peer_timeout
        left = a.time_limit - (time.perf_counter() - t0) - 5 if a.time_limit else math.inf
        timeout = min(timeout, left)
        if left < 20:
            res.doc["peer"] = {"rates": {}, "error": f"not run: {max(left, 0):.0f} s left of --time-limit"}
        else:
            res.doc["peer"] = peer_rates(a.peer, batch, a.steps, small, timeout)
        res.write()
    res.doc["complete"] = True
    res.write()
    table(res, name, small)


if __name__ == "__main__":
    main()
