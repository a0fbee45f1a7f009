"""Data-parallel pretraining: two CPU processes (gloo) started the way users start them,
``python -m torch.distributed.run --standalone --nproc_per_node=2`` (torchrun)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from spatialssl.engine import checkpoint

SCRIPT = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
    from spatialssl import config
    from spatialssl.data.canvases import CanvasSet
    from spatialssl.engine import distributed
    from spatialssl.engine.trainer import build, local_batch_indices, pretrain, train_step

    out, overrides = sys.argv[1], sys.argv[2:]
    rank, world, _ = distributed.init("cpu")
    g = torch.Generator().manual_seed(0)
    data = CanvasSet(torch.randint(0, 256, (32, 3, 48, 48), dtype=torch.uint8, generator=g),
                     labels=torch.randint(0, 4, (32,), generator=g))
    cfg = config.resolve([], overrides + [f"out_dir={out}/run"])
    # 1. a few steps by hand: every rank its own images and views, gradients averaged
    run = build(cfg, data.size, torch.device("cpu"))
    run.rank, run.world = rank, world
    for step in range(3):
        idx = local_batch_indices(step, cfg["train"]["batch_size"], len(data), cfg["seed"], rank, world)
        train_step(run, data.images[idx], step)
    torch.save({"state": run.framework.state_dict(), "idx": idx}, f"{out}/rank{rank}.pt")
    # 2. pretrain end to end: rank 0 alone writes the run directory
    pretrain(cfg, data=data)
''')


def test_two_processes_stay_in_step_and_rank0_writes(tmp_path, tiny_overrides):
    (tmp_path / "worker.py").write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                         os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(tmp_path), *tiny_overrides, "framework.name=dino", "sp.enabled=true"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert set(r0["idx"].tolist()).isdisjoint(r1["idx"].tolist())  # different images per rank
    for k, v in r0["state"].items():  # yet the same weights, teacher and DINO centre included
        assert torch.equal(v, r1["state"][k]), k
    run = tmp_path / "run"
    assert checkpoint.load(run / "checkpoint.pt")["step"] == 4
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # logged once, by rank 0
    assert (run / "backbone.safetensors").exists()
