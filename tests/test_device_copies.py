"""No per-step host-device round trips in iBOT's masked-token selection (issue 9, point 8).

Indexing device tensors with a device boolean mask (``t[mask]``) makes the host wait for
the device to count the True entries. iBOT now selects masked tokens by indices computed
on the host from the host-made masks; its patch loss equals lightly's ``IBOTPatchLoss``.
"""

from __future__ import annotations

import timm
import torch
from lightly.loss import IBOTPatchLoss

from spatialssl import config
from spatialssl.backbones import Backbone
from spatialssl.frameworks import base as fw_base
from spatialssl.frameworks import create_framework
from spatialssl.frameworks.ibot import masked_positions, patch_loss
from spatialssl.views import MultiCrop


def _tiny_vit(cfg: dict) -> Backbone:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1,
                              patch_size=cfg["patch_size"], img_size=cfg["img_size"], dynamic_img_size=True)
    return Backbone(model, "vit", model.num_features, "vit_tiny_patch16_224")


def test_patch_loss_with_host_indices_equals_lightly():
    torch.manual_seed(0)
    mask = torch.zeros(3, 2, 3, dtype=torch.bool)
    mask[0, 0, :2] = True
    mask[2] = True
    t_all, s_all = torch.randn(3 * 6, 5), torch.randn(3 * 6, 5)
    ref_crit, crit = IBOTPatchLoss(output_dim=5, teacher_temp=0.07), IBOTPatchLoss(output_dim=5, teacher_temp=0.07)
    flat = mask.flatten()
    ref = ref_crit(t_all[flat], s_all[flat], mask, teacher_temp=0.05)
    idx, w = masked_positions(mask, torch.device("cpu"))
    ours = patch_loss(crit, t_all[idx], s_all[idx], w, 3, 0.05)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(crit.center.value, ref_crit.center.value)


def test_ibot_forward_indexes_no_tensor_with_a_boolean_mask(monkeypatch):
    monkeypatch.setattr(fw_base, "create_backbone", _tiny_vit)
    cfg = config.resolve(["ibot"], ["backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=32",
                                    "views.global_size=32", "views.local_size=16", "framework.out_dim=64",
                                    "framework.hidden_dim=32", "framework.bottleneck_dim=16", "data.canvas_size=48",
                                    "framework.mask_prob=1.0"])
    torch.manual_seed(0)
    fw = create_framework(cfg, _tiny_vit(cfg["backbone"]), 10)
    g = torch.Generator().manual_seed(0)
    views = MultiCrop(cfg["views"], n_local=2)(torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8, generator=g), g)
    bool_indexed = []
    real = torch.Tensor.__getitem__

    def getitem(self, key):
        keys = key if isinstance(key, tuple) else (key,)
        if self.ndim >= 3 and any(torch.is_tensor(k) and k.dtype == torch.bool for k in keys):
            bool_indexed.append(tuple(self.shape))  # token features [N, T, D] selected by a mask
        return real(self, key)

    monkeypatch.setattr(torch.Tensor, "__getitem__", getitem)
    out = fw(views, 0)
    assert torch.isfinite(out["loss"]) and out["patch_loss"] > 0
    assert bool_indexed == []


# --- the training step and its batches (issue 18, item 3) ---

import pytest  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from torch.utils.weak import WeakIdKeyDictionary  # noqa: E402

from spatialssl.data.canvases import CanvasSet  # noqa: E402
from spatialssl.engine import trainer  # noqa: E402


SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero", "aten.equal")


class DeviceDataReads(TorchDispatchMode):
    """A sync-detecting stand-in for a GPU on the CPU: tensors that would live on the device
    (the canvases, parameters, buffers, anything drawn from a generator, and everything
    computed from those) are tracked; an operation that brings such a tensor's value to the
    host (``.item()``, ``float()``, ``bool()``, ``nonzero``, boolean-mask indexing) is
    recorded. Host-made values (schedules, iBOT's masks, the optimiser's step counts) are not."""

    def __init__(self, *device_tensors: torch.Tensor):
        super().__init__()
        self.device = WeakIdKeyDictionary({t: True for t in device_tensors})
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = [t for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t)]
        on_device = any(t in self.device for t in ins) or kwargs.get("generator") is not None
        if on_device and str(func).startswith(SYNCING):
            self.reads.append(str(func))
        out = func(*args, **kwargs)
        if on_device:
            for t in tree_flatten(out)[0]:
                if torch.is_tensor(t):
                    self.device[t] = True
        return out


@pytest.mark.parametrize("fw", ["dino", "ibot", "simclr", "byol", "mocov3"])
def test_train_step_reads_no_device_value_on_the_host(fw, tiny_overrides):
    """No ``.item()``, ``float(tensor)`` or data-dependent shape on device data in a step
    (each is a host-device synchronisation on a GPU). Plant: ``float(total)`` in train_step
    -> fails for every framework."""
    cfg = config.resolve([], [*tiny_overrides, f"framework.name={fw}", "sp.enabled=true", "train.clip_grad=1.0"])
    run = trainer.build(cfg, (48, 48), torch.device("cpu"))
    x = torch.randint(0, 256, (8, 3, 48, 48), dtype=torch.uint8)
    trainer.train_step(run, x, 0)  # the optimiser's state exists from here on
    state = [t for s in run.optimizer.state.values() for k, t in s.items() if k != "step"]
    spy = DeviceDataReads(x, *[p for m in run.modules() for p in [*m.parameters(), *m.buffers()]], *state)
    with spy:
        trainer.train_step(run, x, 1)
    assert spy.reads == []


class CopyCount(TorchDispatchMode):
    """Copies between devices (host -> "device": the meta device stands in for a GPU)."""

    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if str(func).startswith("aten._to_copy") or str(func).startswith("aten.copy_"):
            src = args[1] if str(func).startswith("aten.copy_") else args[0]
            dst = args[0] if str(func).startswith("aten.copy_") else out
            self.copies += src.device != dst.device
        return out


def test_in_memory_batches_make_no_host_device_copy_per_step(tiny_overrides):
    """A set kept on the device is indexed there: a host-to-device copy per epoch (its
    permutation), none per step (it was a blocking copy of the step's indices, a
    synchronisation every step). The meta device stands in for the GPU. Plant: the old
    ``canvases[index(step).to(canvases.device)]`` -> 13 copies instead of 4."""
    cfg = config.resolve([], [*tiny_overrides, "train.steps=12"])
    data = CanvasSet(torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8), labels=torch.zeros(32, dtype=torch.long))
    trainer._device_permutation.cache_clear()
    count = CopyCount()
    with count:
        batches = list(trainer.step_batches(data, cfg, torch.device("meta"), 0, 12))
    assert len(batches) == 12 and batches[0].shape == (8, 3, 8, 8) and batches[0].device.type == "meta"
    assert count.copies == 1 + 3  # the images once, then one permutation per epoch of 4 steps


@pytest.mark.parametrize("world", [1, 2])
def test_device_batch_indices_equal_the_host_ones(world):
    """Drawn on the device, the indices are the host's (``local_batch_indices``), across
    epoch boundaries and for each process's rows."""
    for step in range(9):
        for rank in range(world):
            host = trainer.local_batch_indices(step, 12, 30, 5, rank, world)
            dev = trainer.device_batch_indices(step, 12, 30, 5, torch.device("cpu"), rank, world)
            assert torch.equal(host, dev), (step, rank)


def test_shard_batches_come_pinned_and_are_uploaded_asynchronously(monkeypatch, tiny_overrides):
    """Training on CUDA, the shard loader pins its batches (DataLoader ``pin_memory``) and
    the trainer uploads them with ``non_blocking=True``; stand-ins for the loader and the
    device (no GPU needed); with ``data.decode=gpu`` the loader is asked for JPEG bytes
    (unpinned) decoded onto the training device. Plant: ``pin_memory=False`` -> fails."""
    from spatialssl.data.shards import ShardSet

    seen = {}

    class Batch:
        def to(self, device, non_blocking=False):
            seen["non_blocking"] = non_blocking
            return self

    def stream(data, index, start, end, workers, prefetch, pin_memory=False, decode_device=None):
        seen["pin_memory"], seen["decode_device"] = pin_memory, decode_device
        return iter([Batch()] * (end - start))

    monkeypatch.setattr(trainer, "stream_batches", stream)
    data = ShardSet.__new__(ShardSet)
    monkeypatch.setattr(ShardSet, "__len__", lambda self: 64)
    cfg = config.resolve([], tiny_overrides)
    cuda = torch.device("cuda")
    next(trainer.step_batches(data, cfg, cuda, 0, 2))
    assert seen == {"pin_memory": True, "decode_device": None, "non_blocking": True}
    # data.decode=gpu: the workers pass JPEG bytes (nothing to pin), decoded onto the training device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    next(trainer.step_batches(data, config.resolve([], [*tiny_overrides, "data.decode=gpu"]), cuda, 0, 2))
    assert seen == {"pin_memory": False, "decode_device": cuda, "non_blocking": True}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fw", ["dino", "ibot"])
def test_cuda_step_has_no_synchronisation(fw, tiny_overrides):
    """On a GPU: TF32 on after ``build``, and the batch and a whole step (after a warm-up
    step) run under ``torch.cuda.set_sync_debug_mode("error")``."""
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = config.resolve([], [*tiny_overrides, f"framework.name={fw}", "sp.enabled=true", "train.steps=12"])
    dev = torch.device("cuda")
    run = trainer.build(cfg, (48, 48), dev)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    data = CanvasSet(torch.randint(0, 256, (32, 3, 48, 48), dtype=torch.uint8),
                     labels=torch.zeros(32, dtype=torch.long))
    batches = trainer.step_batches(data, cfg, dev, 0, 3)
    trainer.train_step(run, next(batches), 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in (1, 2):
            trainer.train_step(run, next(batches), step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
