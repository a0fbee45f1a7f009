"""Data-parallel pretraining over processes started by ``torchrun`` (docs/distributed.md).

    torchrun --nproc_per_node=N -m spatialssl.cli pretrain -c dino_sp --set ...
    torchrun --nnodes=M --node_rank=R --nproc_per_node=N --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 --rdzv_id=JOB -m spatialssl.cli pretrain ...

One process per GPU (NCCL), or CPU processes (gloo). ``train.batch_size`` stays the
*global* batch: each process reads only its slice of every batch (the same data order as
one process) and cuts the views of its slice, with every random draw made for the whole
global batch and sliced (``views.BatchPart``), so a sample gets the same views on any
process. The step's forward (teacher, student, SP) runs inside one module wrapped in
``DistributedDataParallel`` (``train.data_parallel=ddp``, the default): the gradients are
averaged over processes in buckets while backward still runs, and are whole when backward
returns, so the hooks between backward and the optimiser step (last-layer freezing,
clipping) see the averaged gradients, as with one process. ``train.data_parallel=allreduce``
averages them instead in one flat all-reduce after backward (no overlap; kept for
measurement and for plug-in frameworks that leave parameters without gradients, which DDP
without ``find_unused_parameters`` refuses). Losses that need the whole batch gather it
themselves (SimCLR's NT-Xent, MoCo v3's keys; DINO's and iBOT's centres are averaged by
lightly). ``train.sync_bn=true`` turns the BatchNorm layers of backbones and heads into
``torch.nn.SyncBatchNorm`` (statistics over the global batch; GPUs only, torch's
SyncBatchNorm refuses CPU tensors); otherwise each process normalises with the statistics
of its slice, and DDP copies rank 0's running statistics to every process at each step.
Only rank 0 writes the run directory: config, logs, checkpoints, exported weights.

With a BatchNorm-free model, two processes end at the weights of one process with the same
global batch (to float rounding; ``tests/engine/test_distributed.py``, CPU gloo, both
``data_parallel`` modes), iBOT included (block masks drawn for the global batch and
sliced, ``frameworks/ibot.py``) and with SP's fallback pairs falling unevenly (SP's loss
is normalised by the global batch's valid pairs, ``trainer.StepForward``). Not
measured on several GPUs (none here); ``benchmarks/data_parallel.py`` times DDP against the
flat all-reduce with CPU processes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


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


def sync_batch_norm(modules: list[torch.nn.Module]) -> int:
    """Turn every BatchNorm layer inside ``modules`` (backbones, heads, teacher copies, SP)
    into a synchronised one, in place; returns how many were converted.

    timm's ``convert_sync_batchnorm`` rather than torch's alone: it also converts timm's
    fused ``BatchNormAct2d`` (keeping its activation), which torch's would replace by a
    bare SyncBatchNorm. Parameters and buffers are the same tensors, so the optimiser and
    checkpoints are unaffected (state-dict keys do not change).
    """
    from timm.layers import convert_sync_batchnorm

    bn = torch.nn.modules.batchnorm._BatchNorm
    n = 0
    for m in modules:
        n += sum(isinstance(c, bn) and not isinstance(c, torch.nn.SyncBatchNorm) for c in m.modules())
        for name, child in list(m.named_children()):
            setattr(m, name, convert_sync_batchnorm(child))
    return n


def wrap(model: torch.nn.Module, device: torch.device, world: int, mode: str) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when ``world > 1`` and ``mode == "ddp"``,
    else ``model`` itself.

    ``find_unused_parameters=False``: every trainable parameter of every registered
    framework and of SP gets a gradient at every step (checked for all of them, ViT and
    ResNet, with and without SP), and the search for unused ones would walk the autograd
    graph after every forward. Teacher and momentum copies have ``requires_grad=False`` and
    are not reduced.
    """
    if world <= 1 or mode != "ddp":
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average the gradients over processes, in one flat all-reduce after backward
    (``train.data_parallel=allreduce``; DDP overlaps the same averaging with backward)."""
    grads = [p.grad for p in params if p.grad is not None]
    if world <= 1 or not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)
