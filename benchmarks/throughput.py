"""Training-step throughput of a framework with and without SP, through our real trainer.

Two measurements per setting, each as images/s (one image = all its views):
  model  - ``train_step`` on ready-made views (backbone, heads, losses, backward, AdamW, EMA)
  e2e    - ``train_step`` from uint8 canvases: device-side multi-crop + augmentation + model
and the SP overhead in percent (the same step with SP on vs off).

GPU setting (default on CUDA): ViT-S/16, 2x224 + 6x96 views, batch 128, bf16 autocast,
torch.compile, fused AdamW, the preset's canvases (448 px) and local scale. CPU setting (``--small`` or no GPU): a tiny
ViT at 32/16 px, batch 32.

With ``--peer PATH`` (``../shared/bench/peer_dino_step.py``, copied where the GPU run can
read it), the reference DINO steps (lightly's loss and head, bf16, and bf16 +
torch.compile of the backbones) are measured first in a subprocess on the same card, and
the table gains a column: our model-only img/s over the peer's best.

Usage:
    python benchmarks/throughput.py [--framework dino] [--small] [--steps 20] [--no-compile]
                                    [--compile] [--peer PATH] [--profile N] [--json PATH]

Both arms pin ``views.local_flip=per_image``, so the SP overhead is SP's alone (not a
different flip path). ``e2e`` gathers each step's batch from a pool of 4 x batch canvases
on the device, as the trainer does. ``--profile N`` adds a torch.profiler table of N
end-to-end steps per setting (the issue's "where it falls short, profile").
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

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
          device: torch.device, profile: int = 0) -> dict:
    presets, ov = settings(framework, small, compile_, batch)
    cfg = config.resolve(presets, [*ov, f"sp.enabled={str(sp).lower()}", f"train.steps={steps + 10 + profile}"])
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

    out = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for mode in ("model", "e2e"):
        times = []
        for i in range(steps + 5):  # 5 warm-up steps (compilation happens here)
            sync()
            t = time.perf_counter()
            if mode == "model":
                train_step(run, None, i, views=fixed_views)
            else:
                idx = torch.randint(0, len(pool), (b,), device=device, generator=g)
                train_step(run, pool[idx], i)
            sync()
            if i >= 5:
                times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out[mode] = b / med
        out[mode + "_ms"] = med * 1000
    if device.type == "cuda":  # peak over both modes: the e2e step holds the canvases and the views too
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    out["views"] = f"{cfg['views']['n_global']}x{cfg['views']['global_size']}+{run.multicrop.n_local}x{cfg['views']['local_size']}"
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


def peer_rates(path: str, batch: int, steps: int, small: bool) -> dict[str, float]:
    """img/s of the reference DINO steps (``model bf16``, ``model compile``, ...), measured by
    ``peer_dino_step.py`` in a subprocess (fp32 styles and augmentation benches skipped)."""
    cmd = [sys.executable, path, "--batch", str(batch), "--steps", str(steps), "--skip", "peer,grouped,cpuaug,gpuaug"]
    if small:
        cmd.append("--small")
    res = subprocess.run(cmd, capture_output=True, text=True)
    print(res.stdout[-2000:], res.stderr[-2000:] if res.returncode else "", flush=True)
    if res.returncode:
        raise SystemExit(f"peer benchmark {path} failed with exit code {res.returncode}")
    rates = {}
    for line in res.stdout.splitlines():
        m = re.match(r"model (\w+) \|\s+([\d.]+) img/s", line)
        if m:
            rates[m.group(1)] = float(m.group(2))
    return rates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", default="dino")
    p.add_argument("--small", action="store_true", help="CPU-sized setting")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile in the small setting too")
    p.add_argument("--peer", default="", help="path of peer_dino_step.py: measure it first, report the ratio")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile N end-to-end steps of each setting (torch.profiler table, by device time)")
    p.add_argument("--json", default="", help="write the figures (and profiles) to this JSON file")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = a.small or device.type == "cpu"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    compile_ = a.compile or (not small and not a.no_compile)
    peer = peer_rates(a.peer, a.batch or 128, a.steps, small) if a.peer else {}
    ref_style = "compile" if "compile" in peer else "bf16"
    rows, profiles = [], {}
    for fw in a.framework.split(","):
        res = {sp: bench(fw, sp, small, compile_, a.steps, a.batch, device, a.profile) for sp in (False, True)}
        for sp in (False, True):
            if "profile" in res[sp]:
                profiles[f"{fw}{' + SP' if sp else ''}"] = res[sp].pop("profile")
        for mode in ("model", "e2e"):
            base, with_sp = res[False][mode], res[True][mode]
            rows.append((fw, mode, res[False]["views"], res[True]["views"], base, with_sp, 100 * (base / with_sp - 1),
                         res[False].get("peak_gib"), res[True].get("peak_gib")))
    print(f"\nthroughput on {name}, torch {torch.__version__}, {'small CPU setting' if small else 'ViT-S/16 bf16'}"
          f"{' + torch.compile' if compile_ else ''}")
    if peer:
        print("peer (peer_dino_step.py, model only, same card): "
              + ", ".join(f"{k} {v:,.0f} img/s" for k, v in peer.items()) + f"; ratio column: ours / peer {ref_style}")
    cuda = device.type == "cuda"
    print(f"| framework | measure | views (off) | views (+SP) | img/s | img/s + SP | SP overhead |"
          + (" ours / peer | ours + SP / peer |" if peer else "") + (" peak GiB | peak GiB + SP |" if cuda else ""))
    print("|---|---|---|---|---:|---:|---:|" + ("---:|---:|" if peer else "") + ("---:|---:|" if cuda else ""))
    for fw, mode, v0, v1, base, with_sp, ovh, m0, m1 in rows:
        ratio = f" {base / peer[ref_style]:.2f} | {with_sp / peer[ref_style]:.2f} |" if peer else ""
        mem = f" {m0:.1f} | {m1:.1f} |" if cuda and m0 is not None else ""
        print(f"| {fw} | {mode} | {v0} | {v1} | {base:,.0f} | {with_sp:,.0f} | {ovh:+.1f}% |{ratio}{mem}")
    for k, table in profiles.items():
        print(f"\nprofile, {k}, {a.profile} end-to-end steps (torch.profiler, by total device time):\n{table}")
    if a.json:
        import json

        Path(a.json).write_text(json.dumps({
            "card": name, "torch": torch.__version__, "setting": "small CPU" if small else "ViT-S/16 bf16",
            "compile": compile_, "steps": a.steps, "batch": a.batch or (32 if small else 128), "peer": peer,
            "rows": [dict(zip(("framework", "measure", "views", "views_sp", "img_s", "img_s_sp", "sp_overhead_pct"), r))
                     for r in rows], "profiles": profiles}, indent=2))


if __name__ == "__main__":
    main()
