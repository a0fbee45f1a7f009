"""Data-parallel pretraining over processes started by ``torchrun``.

    torchrun --nproc_per_node=N -m spatialssl.cli pretrain -c dino_sp --set ...

One process per GPU (NCCL), or CPU processes (gloo). ``train.batch_size`` stays the
*global* batch: each process takes its slice of every batch (same data order as one
process), cuts its own views from it, and the gradients are averaged over processes
before clipping and the optimiser step, so the run follows the schedules of a one-process
run with the whole batch. Losses that need the whole batch gather it themselves (SimCLR's
NT-Xent, MoCo v3's keys; DINO's and iBOT's centres are averaged by lightly). BatchNorm
statistics stay per process (no SyncBatchNorm yet). Only rank 0 writes the run
directory: config, logs, checkpoints, exported weights.

Tested on CPU with two gloo processes (``tests/engine/test_distributed.py``); not yet
measured on several GPUs.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: str) -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group when ``torchrun`` set
    ``WORLD_SIZE`` > 1, else (0, 1, 0) and nothing is started."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def any_rank(flag: torch.Tensor, world: int) -> torch.Tensor:
    """``flag`` (a bool tensor) true on any process: every rank stops together on a
    non-finite loss instead of one waiting in a collective for a rank that stopped."""
    if world <= 1:
        return flag
    x = flag.float()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x > 0


def all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average the gradients over processes, in one flat all-reduce.

    Why not ``DistributedDataParallel``: our step runs teacher, student and SP in one
    forward and calls hooks between backward and the optimiser step (last-layer freezing,
    clipping); one explicit all-reduce keeps ``train_step`` one readable function. DDP's
    bucketed all-reduce overlapped with backward would be faster on many GPUs.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if world <= 1 or not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)
