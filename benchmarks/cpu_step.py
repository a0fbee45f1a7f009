"""CPU training-step speed of the demo's settings: precision, memory format, compile, threads.

Times ``train_step`` end to end (multi-crop from uint8 canvases, both networks, losses,
backward, AdamW, EMA) for three settings

  byol_sp   the demo: BYOL + SP, resnet_mini (width 16), 2x32 + 2x16 px views, batch 64
  dino_sp   configs/demo_dino.yaml + SP: 2x32 + 4x16 px views, batch 64
  vit_tiny  DINO + SP on ViT-Tiny/8 at 32 px (throughput.py's small setting), batch 32

and, for each, these modes (``--modes`` picks some):

  fp32            eager fp32, NCHW: the step before this benchmark (today's default)
  fp32_1t         the same on one thread (torch.set_num_threads(1))
  bf16            bf16 autocast on the CPU (oneDNN; AVX512-BF16 / AMX where the CPU has them)
  cl              channels_last (NHWC) weights and activations, fp32
  compile         torch.compile (inductor, CPU) of the backbones, fp32
  bf16_cl         bf16 + channels_last
  bf16_cl_compile bf16 + channels_last + compile
  bf16_cl_1t      bf16 + channels_last on one thread (the study's setting: two cells at once,
                  one core each; with two threads each step's OpenMP regions wait on the slower
                  core, and any other load on the machine stalls them)

The demo presets (configs/demo.yaml, and so every CPU compare/study cell) use ``FAST``:
bf16 + channels_last without compile (compile adds ~30-60 s of start-up per process for
a few percent on the demo CNN; benchmarks/RESULTS.md "CPU step").

Each cell prints img/s (one image = all its views), ms per step (median of ``--steps``
timed steps after 3 warm-up steps, compilation included in those), GFLOP per step
(torch.utils.flop_counter over one step: convolutions and matmuls, forward and backward)
and achieved GFLOP/s, beside the machine's measured matmul peak (a 4096^3 matmul on the
same threads, fp32 and bf16: the peak a dense kernel reaches here, not a datasheet figure)
and the ratio to the fp32 row.

``--learning``: the loss curves of 400 demo steps (BYOL + SP on PartsWorld, two seeds)
under fp32 eager and under ``FAST`` (the demo preset's step), written to
docs/figures/cpu_step_loss.png and a JSON, with the largest gap between the two modes'
seed means and the seed-to-seed spread (the check that the faster step learns the same).

Usage:
    python benchmarks/cpu_step.py [--settings byol_sp,dino_sp,vit_tiny] [--modes ...] [--steps 15]
    python benchmarks/cpu_step.py --parallel 2 [--settings byol_sp,dino_sp]   # two one-thread processes at once
    python benchmarks/cpu_step.py --learning [--learning-steps 400]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from spatialssl import config, runfolder  # noqa: E402
from spatialssl.engine.trainer import build, train_step  # noqa: E402

from spatialssl.study.worker import cpu_model  # noqa: E402  (the machine line)

SETTINGS = {
    "byol_sp": (["byol", "demo"], ["framework.name=byol", "sp.enabled=true"]),
    "dino_sp": (["dino", "demo_dino"], ["framework.name=dino", "sp.enabled=true"]),
    "vit_tiny": (["dino", "demo"], ["framework.name=dino", "sp.enabled=true", "backbone.name=vit_tiny",
                                    "backbone.patch_size=8", "backbone.img_size=32", "train.batch_size=32",
                                    "framework.out_dim=4096", "framework.hidden_dim=512",
                                    "framework.head_batch_norm=false"]),
}
# mode -> (precision, channels_last, compile, threads); threads 0 = the machine's cores
MODES = {
    "fp32": ("fp32", False, False, 0),
    "fp32_1t": ("fp32", False, False, 1),
    "bf16": ("bf16", False, False, 0),
    "cl": ("fp32", True, False, 0),
    "compile": ("fp32", False, True, 0),
    "bf16_cl": ("bf16", True, False, 0),
    "bf16_cl_compile": ("bf16", True, True, 0),
    "bf16_cl_1t": ("bf16", True, False, 1),
}
FAST = "bf16_cl"  # the demo preset's step
BASE = ["views.local_flip=per_image", "train.progress=false", "device=cpu"]


def mode_overrides(mode: str) -> list[str]:
    precision, cl, comp, _ = MODES[mode]
    return [f"train.precision={precision}", f"train.channels_last={str(cl).lower()}",
            f"train.compile={str(comp).lower()}"]


def matmul_peak(dtype: torch.dtype, n: int = 4096, reps: int = 5) -> float:
    """GFLOP/s of an n^3 matmul on the current threads (best of ``reps``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def step_flops(run, canvases: torch.Tensor) -> float:
    """FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(run, canvases, 1)
    return float(counter.get_total_flops())


def build_mode(setting: str, mode: str, steps: int):
    """A run (model, optimiser, views) of ``setting`` in ``mode``; its batch size and canvas."""
    presets, ov = SETTINGS[setting]
    cfg = config.resolve(presets, [*ov, *BASE, *mode_overrides(mode), f"train.steps={steps + 10}"], warn=False)
    c = cfg["data"]["canvas_size"]
    run = build(cfg, (c, c), torch.device("cpu"))
    run.framework.collect_logs = False  # as on the trainer's non-logging steps
    return run, cfg["train"]["batch_size"], c


def bench(setting: str, modes: list[str], steps: int) -> list[dict]:
    """Every mode of ``setting``, timed round-robin (one step of each mode in turn), so that a
    change of the machine's load during the run hits every mode alike."""
    torch._dynamo.reset()
    # each compiled mode adds graphs of Backbone.forward (student, teacher, two view sizes)
    torch._dynamo.config.recompile_limit = 64
    default_threads = torch.get_num_threads()
    runs = {m: build_mode(setting, m, steps) for m in modes}
    g = torch.Generator().manual_seed(0)
    b, c = next(iter(runs.values()))[1:]
    pool = torch.randint(0, 256, (4 * b, 3, c, c), dtype=torch.uint8, generator=g)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(steps + 3):  # 3 warm-up rounds (compilation happens there)
        for m in modes:
            torch.set_num_threads(MODES[m][3] or default_threads)
            idx = torch.randint(0, len(pool), (b,), generator=g)
            t = time.perf_counter()
            train_step(runs[m][0], pool[idx], i)
            times[m].append(time.perf_counter() - t)
    torch.set_num_threads(default_threads)
    out = []
    for m in modes:
        med = statistics.median(times[m][3:])
        flops = step_flops(runs[m][0], pool[:b])
        out.append({"setting": setting, "mode": m, "threads": MODES[m][3] or default_threads, "batch": b,
                    "img_s": b / med, "ms": med * 1e3, "gflop_step": flops / 1e9, "gflops": flops / med / 1e9,
                    "warmup_s": sum(times[m][:3])})
    return out


def speed(args) -> None:
    threads = torch.get_num_threads()
    peaks = [(matmul_peak(torch.float32), matmul_peak(torch.bfloat16))]
    rows = []
    for setting in args.settings.split(","):
        modes = [m for m in args.modes.split(",") if not (setting == "vit_tiny" and MODES[m][1])]  # NHWC: no ViT
        rows += bench(setting, modes, args.steps)
        print(f"{setting}: done", flush=True)
    peaks.append((matmul_peak(torch.float32), matmul_peak(torch.bfloat16)))
    peak32, peak16 = max(p[0] for p in peaks), max(p[1] for p in peaks)  # the less disturbed of two readings
    print(f"# CPU: {cpu_model()}, {threads} threads; matmul peak (4096^3, measured here before and after, the "
          f"better): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s; load average {load()}")
    print("| setting | mode | threads | img/s | ms/step | GFLOP/step | GFLOP/s | % of peak | x fp32 | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next((x["img_s"] for x in rows if x["setting"] == r["setting"] and x["mode"] == "fp32"), None)
        r["pct_peak"] = 100 * r["gflops"] / (peak16 if MODES[r["mode"]][0] == "bf16" else peak32)
        r["x_fp32"] = r["img_s"] / base if base else float("nan")
        print(f"| {r['setting']} | {r['mode']} | {r['threads']} | {r['img_s']:.0f} | {r['ms']:.0f} | "
              f"{r['gflop_step']:.2f} | {r['gflops']:.0f} | {r['pct_peak']:.1f} | {r['x_fp32']:.2f} | "
              f"{r['warmup_s']:.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "threads": threads, "peak_fp32": peak32,
                                               "peak_bf16": peak16, "load": load(), "rows": rows}, indent=1))


def parallel(args) -> None:
    """``--parallel N``: N processes of one setting on one thread each (``bf16_cl_1t``), at once,
    as the CPU study runs its cells; prints the sum of their img/s (the machine's throughput)."""
    import subprocess
    import tempfile

    for setting in args.settings.split(","):
        if setting == "vit_tiny":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            procs = [subprocess.Popen([sys.executable, __file__, "--settings", setting, "--modes", "bf16_cl_1t",
                                       "--steps", str(args.steps), "--json", f"{tmp}/{i}.json"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(args.parallel)]
            for p in procs:
                p.wait()
            rates = [json.loads(Path(f"{tmp}/{i}.json").read_text())["rows"][0]["img_s"] for i in range(args.parallel)]
        print(f"| {setting} | {args.parallel} processes x bf16_cl_1t | {' + '.join(f'{r:.0f}' for r in rates)} "
              f"= {sum(rates):.0f} img/s |", flush=True)


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def learning(args) -> None:
    """400 demo steps under fp32 eager and under the preset's fast step, two seeds each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spatialssl.engine.trainer import pretrain

    out_root = Path(args.runs)
    torch.set_num_threads(args.threads)
    curves: dict[str, dict[int, list[float]]] = {}
    for mode in ("fp32", FAST):
        for seed in (0, 1):
            presets, ov = SETTINGS["byol_sp"]
            cfg = config.resolve(presets, [*ov, *BASE[:2], *mode_overrides(mode), f"seed={seed}",
                                           f"train.steps={args.learning_steps}", "train.log_every=10",
                                           f"train.num_threads={args.threads}",
                                           f"out_dir={out_root / f'{mode}_s{seed}'}"], warn=False)
            t = time.perf_counter()
            run_dir = pretrain(cfg, resume=False)
            rows = runfolder.read_curve(run_dir)
            losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
            curves.setdefault(mode, {})[seed] = [v for _, v in losses]
            steps_axis = [s for s, _ in losses]
            print(f"{mode} seed {seed}: {time.perf_counter() - t:.0f} s, final loss {losses[-1][1]:.4f}", flush=True)
    mean = {m: [statistics.mean(v) for v in zip(*c.values())] for m, c in curves.items()}
    seed_gap = max(max(abs(a - b) for a, b in zip(*c.values())) for c in curves.values())
    mode_gap = max(abs(a - b) for a, b in zip(mean["fp32"], mean[FAST]))
    last = slice(-10, None)  # the last 100 steps
    seed_gap_end = max(statistics.mean(abs(a - b) for a, b in list(zip(*c.values()))[last]) for c in curves.values())
    mode_gap_end = statistics.mean(abs(a - b) for a, b in list(zip(mean["fp32"], mean[FAST]))[last])
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, color in (("fp32", "tab:blue"), (FAST, "tab:orange")):
        for seed, v in curves[mode].items():
            ax.plot(steps_axis, v, color=color, alpha=0.8, ls="-" if seed == 0 else "--",
                    label=f"{mode} seed {seed}")
    ax.set_xlabel("step")
    ax.set_ylabel("total loss (BYOL + SP), logged every 10 steps")
    ax.set_title(f"demo step: fp32 eager vs {FAST} (2-core CPU)")
    ax.legend()
    fig.tight_layout()
    png = REPO / "docs" / "figures" / "cpu_step_loss.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    summary = {"steps": args.learning_steps, "curves": curves, "steps_axis": steps_axis,
               "max_gap_between_modes": mode_gap, "max_gap_between_seeds": seed_gap,
               "mean_gap_between_modes_last100": mode_gap_end, "mean_gap_between_seeds_last100": seed_gap_end}
    (REPO / "benchmarks" / "cpu_step_learning.json").write_text(json.dumps(summary, indent=1))
    print(f"largest gap between the modes' seed means {mode_gap:.4f}; between seeds of one mode {seed_gap:.4f}")
    print(f"last 100 steps, mean gap: modes {mode_gap_end:.4f}, seeds {seed_gap_end:.4f}; plot {png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--json", default="")
    p.add_argument("--parallel", type=int, default=0, help="N one-thread processes at once (the study's setting)")
    p.add_argument("--learning", action="store_true")
    p.add_argument("--learning-steps", type=int, default=400)
    p.add_argument("--runs", default="runs/cpu_step")
    p.add_argument("--threads", type=int, default=1, help="--learning: torch threads (1: as the study runs)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.learning:
        learning(args)
    elif args.parallel > 1:
        parallel(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
