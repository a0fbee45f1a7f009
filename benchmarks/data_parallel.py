"""Data-parallel step time: DistributedDataParallel against one flat all-reduce after backward.

Starts itself under torchrun with two CPU processes (gloo) and times ``train_step`` from
uint8 canvases (views, model, backward, gradient averaging, clipping, AdamW, EMA) with
``train.data_parallel=ddp`` (bucketed all-reduce overlapped with backward) and
``train.data_parallel=allreduce`` (one flat all-reduce after backward), alternating the
two modes per round so that drift in a shared machine's load falls on both; plus the flat
all-reduce of the gradients alone (what overlap can at best hide) and, in this process
before the launch, one process on its half of the batch (no communication at all).

What this measures is CPU gloo on one host: the two processes share this machine's cores
and talk through loopback, so it says whether DDP costs anything against the flat
all-reduce, not what it gains on GPUs over NVLink/InfiniBand (NCCL), where backward is
~100x faster and the all-reduce a larger share of the step. Not measured on GPUs here.

Usage:
    python benchmarks/data_parallel.py [--backbone vit_tiny,vit_small] [--steps 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from spatialssl import config  # noqa: E402
from spatialssl.engine import distributed  # noqa: E402
from spatialssl.engine.trainer import build, train_step  # noqa: E402

BATCH = 16  # global


def overrides(backbone: str, mode: str) -> list[str]:
    return [f"backbone.name={backbone}", "backbone.patch_size=8", "backbone.img_size=32", "views.global_size=32",
            "views.local_size=16", "views.local_scale=[0.05,0.25]", "framework.out_dim=4096",
            "framework.hidden_dim=512", f"train.batch_size={BATCH}", "train.progress=false",
            f"train.data_parallel={mode}", "out_dir=unused", "train.steps=1000", "train.warmup_steps=10"]


def time_steps(cfg: dict, canvases: torch.Tensor, steps: int, rank: int, world: int) -> list[float]:
    run = build(cfg, tuple(canvases.shape[-2:]), torch.device("cpu"), rank, world)
    out = []
    for step in range(steps + 2):  # 2 warm-up steps
        distributed.barrier(world)
        t0 = time.perf_counter()
        train_step(run, canvases, step)
        out.append(time.perf_counter() - t0)
    return out[2:]


def worker(args) -> None:
    torch.set_num_threads(1)
    rank, world, _ = distributed.init("cpu")
    g = torch.Generator().manual_seed(rank)
    canvases = torch.randint(0, 256, (BATCH // world, 3, 48, 48), dtype=torch.uint8, generator=g)
    rows = []
    for backbone in args.backbone.split(","):
        times = {"ddp": [], "allreduce": []}
        for _ in range(args.rounds):
            for mode in times:
                cfg = config.resolve(["dino_sp"], overrides(backbone, mode))
                times[mode] += time_steps(cfg, canvases, args.steps, rank, world)
        run = build(config.resolve(["dino_sp"], overrides(backbone, "allreduce")), (48, 48), torch.device("cpu"))
        grads = [torch.randn_like(p) for m in run.modules() for p in m.parameters() if p.requires_grad]
        flat = torch._utils._flatten_dense_tensors(grads)
        comm = []
        for _ in range(args.steps):
            distributed.barrier(world)
            t0 = time.perf_counter()
            torch.distributed.all_reduce(flat)
            comm.append(time.perf_counter() - t0)
        rows.append({"backbone": backbone, "params_M": flat.numel() / 1e6,
                     **{m: statistics.median(v) for m, v in times.items()},
                     **{f"{m}_spread": (min(v), max(v)) for m, v in times.items()},
                     "allreduce_alone": statistics.median(comm)})
    if rank == 0:
        Path(args.json).write_text(json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="vit_tiny,vit_small")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default="")
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(1)
    one = {}
    for backbone in args.backbone.split(","):  # one process, its half of the batch: no communication
        cfg = config.resolve(["dino_sp"], overrides(backbone, "allreduce"))
        cfg["train"]["batch_size"] = BATCH // 2
        c = torch.randint(0, 256, (BATCH // 2, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        one[backbone] = statistics.median(time_steps(cfg, c, args.steps, 0, 1))
    out = Path(args.json or "/tmp/data_parallel.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
                    "--worker", f"--backbone={args.backbone}", f"--steps={args.steps}", f"--rounds={args.rounds}",
                    f"--json={out}"], env=env, check=True)
    rows = json.loads(out.read_text())
    print(f"\n2 CPU processes (gloo, 1 thread each), DINO + SP, global batch {BATCH} (2 x 32 px + 4 x 16 px views), "
          f"median of {args.rounds} x {args.steps} steps per mode")
    print("| backbone | params (M) | 1 process, B/2, no comm (s) | ddp (s/step) | allreduce (s/step) | "
          "ddp / allreduce | flat all-reduce alone (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['params_M']:.1f} | {one[r['backbone']]:.3f} | {r['ddp']:.3f} "
              f"({r['ddp_spread'][0]:.3f}-{r['ddp_spread'][1]:.3f}) | {r['allreduce']:.3f} "
              f"({r['allreduce_spread'][0]:.3f}-{r['allreduce_spread'][1]:.3f}) | {r['ddp'] / r['allreduce']:.2f} "
              f"| {r['allreduce_alone']:.3f} |")


if __name__ == "__main__":
    main()
