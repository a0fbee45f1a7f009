"""The framework contract, over every registered framework and two backbones.

Tiny settings: a ViT-Tiny with patch 8 at 32 px, cut to 2 blocks (conftest.py), and
``resnet_mini`` (width 8, small stem); batch 4, 2 global views of 32 px and 2 local views
of 16 px, small heads.
"""

from __future__ import annotations

import importlib
import random

import pytest
import torch

from spatialssl import config
from spatialssl.backbones import Backbone
from spatialssl.frameworks import REGISTRY, create_framework
from spatialssl.frameworks import base as fw_base
from spatialssl.sp import SpatialPrediction
from spatialssl.views import MultiCrop


def create_backbone(cfg: dict) -> Backbone:
    """The factory frameworks use for teachers, which conftest.py cuts to tiny ViTs."""
    return fw_base.create_backbone(cfg)


BACKBONES = {
    "vit": ["backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=32"],
    "cnn": ["backbone.name=resnet_mini", "backbone.width=8", "backbone.small_stem=true"],
}
SMALL = ["framework.out_dim=64", "framework.patch_out_dim=48", "framework.hidden_dim=32",
         "framework.bottleneck_dim=16", "framework.proj_dim=16", "views.global_size=32",
         "views.local_size=16", "views.n_local=2", "train.steps=10"]
EXPECTED = {"dino", "ibot", "mocov3", "simclr", "byol"}
PRESETS = ["ibot", "mocov3", "simclr", "byol"]
CASES = [(f, b) for f in sorted(REGISTRY) for b in BACKBONES]


def tiny_cfg(name: str, backbone: str, *extra: str) -> dict:
    return config.resolve([], [*SMALL, *BACKBONES[backbone], f"framework.name={name}", *extra])


def tiny_views(cfg: dict, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    canvases = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8, generator=g)
    return MultiCrop(cfg["views"], n_local=2)(canvases, g)


def build(name: str, backbone: str, *extra: str):
    cfg = tiny_cfg(name, backbone, *extra)
    torch.manual_seed(0)
    return cfg, create_framework(cfg, create_backbone(cfg["backbone"]), cfg["train"]["steps"])


def skip_unsupported(name: str, backbone: str) -> None:
    if name == "ibot" and backbone == "cnn":
        pytest.skip("iBOT needs a ViT (masked patch tokens); tested to raise in test_ibot_needs_vit")


def momentum_backbones(fw) -> list[Backbone]:
    return [m for m in fw.modules() if isinstance(m, Backbone) and m is not fw.backbone]


def test_registry_lists_every_framework():
    assert EXPECTED <= set(REGISTRY)
    cfg = tiny_cfg("dino", "cnn")
    cfg["framework"]["name"] = "nope"
    with pytest.raises(ValueError, match="known: .*byol.*dino.*ibot.*mocov3.*simclr"):
        create_framework(cfg, create_backbone(cfg["backbone"]), 10)


@pytest.mark.parametrize("name,backbone", CASES)
def test_contract(name, backbone):
    """forward -> finite scalar loss and well-shaped outputs; gradients reach the student
    backbone and never the momentum encoders; after_step moves momentum encoders toward
    the student; SP accepts the local embeddings a framework hands over."""
    skip_unsupported(name, backbone)
    cfg, fw = build(name, backbone)
    assert fw.name == name and isinstance(fw.eval_backbone(), Backbone)
    v = tiny_views(cfg)
    b, d = v.globals.shape[1], fw.backbone.embed_dim

    out = fw(v, 0)
    loss = out["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    assert out["emb"].shape == (b, d) and not out["emb"].requires_grad
    for k, val in out.items():
        if k not in ("emb", "local_emb"):
            assert val.ndim == 0 and torch.isfinite(val), k
    if fw.uses_local_views:
        assert out["local_emb"].shape == (v.locals.shape[0], b, d) and out["local_emb"].requires_grad
        sp = SpatialPrediction.from_config(cfg["sp"], cfg["views"], d, v.canvas_hw)
        loss = loss + sp(out["local_emb"], v.local_boxes, v.sp_pairs)["loss"]
    else:
        assert "local_emb" not in out  # the trainer encodes SP's extra views itself

    loss.backward()
    fw.after_backward(0)
    grads = [p.grad for p in fw.backbone.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the backbone"
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    teachers = momentum_backbones(fw)
    for t in teachers:
        assert all(not p.requires_grad and p.grad is None for p in t.parameters())

    before = [[p.detach().clone() for p in t.parameters()] for t in teachers]
    torch.optim.SGD([p for p in fw.parameters() if p.requires_grad], lr=0.1).step()
    fw.after_step(0)
    student = [p.detach() for p in fw.backbone.parameters()]
    for t, old in zip(teachers, before):
        new = list(t.parameters())
        assert any(not torch.equal(o, n) for o, n in zip(old, new)), "after_step did not move the momentum encoder"
        gap_old = sum(((o - s) ** 2).sum() for o, s in zip(old, student))
        gap_new = sum(((n - s) ** 2).sum() for n, s in zip(new, student))
        assert gap_new < gap_old
    if name in ("dino", "ibot", "mocov3", "byol"):
        assert teachers, f"{name} should keep a momentum encoder"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_state_dict_round_trip(name):
    """A framework rebuilt from its state dict gives the same loss (checkpoints hold
    everything: heads, momentum encoders, centres, mask token)."""
    backbone = "vit" if name == "ibot" else "cnn"
    cfg, fw = build(name, backbone)
    v = tiny_views(cfg)
    fw(v, 0)["loss"].backward()  # moves BN statistics and loss centres
    fw.after_step(0)
    torch.manual_seed(1)
    _, fw2 = build(name, backbone)
    fw2.load_state_dict(fw.state_dict())
    losses = []
    for m in (fw, fw2):
        random.seed(0)
        torch.manual_seed(0)
        losses.append(m(v, 1)["loss"].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)


def test_ignores_local_views_when_it_does_not_use_them():
    """Two-view frameworks get SP's extra local views in the batch and must ignore them."""
    for name in ("mocov3", "simclr", "byol"):
        cfg, fw = build(name, "cnn")
        fw.eval()  # BN in eval mode: outputs depend on the inputs alone
        v = tiny_views(cfg)
        a = fw(v, 0)["loss"]
        v.locals = torch.randn_like(v.locals)
        assert fw(v, 0)["loss"] == a


def test_ibot_needs_vit():
    with pytest.raises(ValueError, match="iBOT needs a ViT"):
        build("ibot", "cnn")


def test_momentum_schedules():
    for name, backbone in (("mocov3", "cnn"), ("byol", "cnn"), ("ibot", "vit")):
        cfg, fw = build(name, backbone, "framework.momentum=0.99", "framework.momentum_end=1.0")
        m = fw.momentum
        assert len(m) == cfg["train"]["steps"]
        assert m[0] == pytest.approx(0.99) and m[-1] == pytest.approx(1.0) and (m.diff() >= 0).all()


def test_mocov3_freezes_vit_patch_embedding():
    """MoCo v3's random patch projection on ViTs; the rest of the backbone trains."""
    _, fw = build("mocov3", "vit")
    assert not any(p.requires_grad for p in fw.backbone.model.patch_embed.parameters())
    assert all(p.requires_grad for p in fw.backbone.model.blocks.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_presets(preset):
    """Each preset names its framework; the _sp variant differs only by turning SP on."""
    cfg = config.resolve([preset])
    sp_cfg = config.resolve([f"{preset}_sp"])
    assert cfg["framework"]["name"] == sp_cfg["framework"]["name"] == preset
    assert not cfg["sp"]["enabled"] and sp_cfg["sp"]["enabled"]
    assert cfg["framework"] == sp_cfg["framework"] and cfg["train"] == sp_cfg["train"]
    uses_locals = REGISTRY[preset].uses_local_views
    assert (cfg["views"]["n_local"] > 0) == uses_locals


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_bf16_autocast(name):
    """The trainer runs frameworks under bf16 autocast on GPUs; CPU autocast runs the same
    code paths (masked ViT pass, losses, heads) here."""
    cfg, fw = build(name, "vit")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fw(tiny_views(cfg), 0)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert any(p.grad is not None for p in fw.backbone.parameters())


# the loss each framework computes: its criterion, or a function of its module
FP32_LOSSES = {"dino": "dino_loss", "simclr": "nt_xent", "byol": "criterion", "mocov3": "contrastive_loss"}


@pytest.mark.parametrize("name", sorted(FP32_LOSSES))
def test_losses_documented_fp32_run_in_fp32_under_autocast(name, monkeypatch):
    """Under bf16 autocast the losses that say fp32 compute in fp32: no operation inside
    them yields a bf16 tensor (``.float()`` on their inputs alone left lightly's einsum
    and matmul in bf16). Plant: the loss outside ``base.fp32`` -> bf16 ops are seen."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Dtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if torch.is_tensor(t):
                    self.seen.add((str(func), t.dtype))
            return out

    cfg, fw = build(name, "vit")
    spy = Dtypes()

    def watched(fn):
        def call(*args, **kwargs):
            with spy:
                return fn(*args, **kwargs)
        return call

    if FP32_LOSSES[name] == "criterion":
        monkeypatch.setattr(fw.criterion, "forward", watched(fw.criterion.forward))
    else:
        module = importlib.import_module(f"spatialssl.frameworks.{name}")
        monkeypatch.setattr(module, FP32_LOSSES[name], watched(getattr(module, FP32_LOSSES[name])))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fw(tiny_views(cfg), 0)
    assert spy.seen, "the loss was not watched"
    assert not [f for f, d in spy.seen if d == torch.bfloat16], sorted(spy.seen, key=str)
    assert out["loss"].dtype == torch.float32


class _Reads(dict):
    """A config section that records the keys read from it."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_declared_config_keys_are_the_keys_read(name):
    """``config_keys`` (what the CLI warns about when a --set key is not among them) is
    exactly what building, a step and the trainer's collapse logs read of ``framework.*``."""
    from spatialssl.engine.trainer import _collapse_logs

    cfg = tiny_cfg(name, "vit")
    cfg["framework"] = _Reads(cfg["framework"])
    torch.manual_seed(0)
    fw = create_framework(cfg, create_backbone(cfg["backbone"]), cfg["train"]["steps"])
    out = fw(tiny_views(cfg), 0)
    out["loss"].backward()
    fw.after_backward(0)
    fw.after_step(0)
    values = {k: float(v) for k, v in out.items() if k not in ("emb", "local_emb", "loss")}
    if "teacher_entropy" in values:
        values.setdefault("teacher_mean_entropy", values["teacher_entropy"])
    from types import SimpleNamespace

    _collapse_logs(SimpleNamespace(cfg=cfg, framework=fw), {}, values)
    assert cfg["framework"].read - {"name"} == set(REGISTRY[name].config_keys)
