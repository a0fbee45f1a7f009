"""Any pretrained backbone, from an architecture name and a weights file, behind the
``Backbone`` feature API (``backbones.py``), so that every evaluation can probe it.

Architectures (``arch``):

- a timm name (``vit_small_patch16_224``, ``vit_small_patch14_reg4_dinov2``, ``resnet50``,
  ``convnext_tiny``, ...): built with ``pretrained=False, num_classes=0``; ViTs (timm's
  ``VisionTransformer``: DeiT, DINO, DINOv2 with layer scale and registers, ...) with
  ``dynamic_img_size=True`` and their position-embedding grid read from the file, so they are
  interpolated to whatever size the evaluation feeds; CNNs whose ``forward_features`` gives a
  [B, C, h, w] map (ResNet, ConvNeXt, RegNet, EfficientNet, ...);
- ``torchvision:NAME`` (``torchvision:resnet18``, ``torchvision:convnext_tiny``, ...): a
  torchvision CNN classifier, its feature map taken before the pooling (ResNet-style models:
  up to ``layer4``; models with a ``.features`` trunk: that trunk). torchvision ViTs are not
  supported (their input size is fixed): use the timm name.

``arch_kwargs`` go to the constructor (e.g. ``depth=6`` for a model trained with a
non-standard depth).

Weights (``read_state_dict``): ``.safetensors``, or ``.pth`` / ``.pt`` / ``.bin`` /
``.ckpt`` holding a bare state dict or one nested under a common key (``teacher``,
``state_dict``, ``model``, ``student``, ``model_ema``, ``target_encoder``, ``module``,
``backbone``, ``encoder``; the first present, in that order). Key clean-up
(``clean_state_dict``):

1. ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) are stripped from every key;
2. when the architecture has no such key itself and some keys begin with ``backbone.``,
   ``model.``, ``encoder.``, ``base_encoder.`` or ``trunk.``, the keys under that prefix are
   the backbone (stripped); the others (a DINO head, a predictor) are dropped and listed;
3. classifier heads the architecture does not have (``head.*``, ``fc.*``, ``classifier.*``,
   ``heads.*``, ``head_dist.*``, ``last_linear.*``, and timm's own classifier name) are dropped
   and listed;
4. Meta's DINOv2 layout (``mask_token``, ``register_tokens``) and Meta's ConvNeXt layout
   (``downsample_layers.*``) are converted to timm's.

Whatever is left must match the architecture exactly: a missing key, an unexpected key or a
shape mismatch is one ``WeightsError`` naming the file, the architecture and the first few
keys (never a traceback).

>>> bb, info = load_pretrained("resnet18", "resnet18.pth")
>>> g, p = bb.features(torch.zeros(1, 3, 224, 224))   # [1, 512], [1, 512, 7, 7]
>>> info["sha256"], info["dropped"]                    # ('9f1c...', ['fc.bias', 'fc.weight'])
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from .backbones import Backbone
from .errors import UserError

TORCHVISION = "torchvision:"
NESTED = ("teacher", "state_dict", "model", "student", "model_ema", "target_encoder", "module", "backbone",
          "encoder")
WRAPPERS = ("module.", "_orig_mod.")
TRUNKS = ("backbone.", "model.", "encoder.", "base_encoder.", "trunk.")
HEADS = ("head.", "fc.", "classifier.", "heads.", "head_dist.", "last_linear.")
SHOWN = 5  # keys named in an error


class WeightsError(UserError):
    """Weights that do not fit the architecture; the message names the file and the keys."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (64 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first(keys, n: int = SHOWN) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and \
        sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a weights file and where in the file they were (``""``: at the top,
    ``"teacher"``, ``"checkpoint/state_dict"``, ...). Non-tensor entries are left out.

    Raises:
        FileNotFoundError: no such file.
        WeightsError: unreadable, or no state dict found (naming the top-level keys).
    """
    from .errors import NotFound  # a UserError: one line, exit 2 (a FileNotFoundError too)

    path = Path(path)
    if not path.is_file():
        what = "a folder, not a weights file" if path.is_dir() else "no such file"
        raise NotFound(f"--weights {path}: {what} (a .pth / .pt / .safetensors state dict or checkpoint)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            # weights_only: a weights file from elsewhere must not run code when read
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, pickled objects: torch raises many types
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise WeightsError(f"weights file {path} is unreadable ({type(e).__name__}: {reason})") from None
    where: list[str] = []
    while not _is_state_dict(obj):
        nested = next((k for k in NESTED if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if nested is None:
            top = _first(obj.keys()) if isinstance(obj, dict) else type(obj).__name__
            at = f" under '{'/'.join(where)}'" if where else ""
            raise WeightsError(f"weights file {path}: no state dict found{at} (keys: {top}; looked for a dict of "
                               f"tensors, or one under {', '.join(NESTED)})")
        where.append(nested)
        obj = obj[nested]
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, "/".join(where)


def clean_state_dict(sd: dict[str, torch.Tensor], model_keys: set[str],
                     classifier: str = "") -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Steps 1-3 of the module docstring: (the backbone's state dict, the prefixes stripped,
    the keys dropped, in the file's naming after step 1)."""
    stripped: list[str] = []
    for w in WRAPPERS:
        if any(k.startswith(w) for k in sd):
            sd = {k[len(w):] if k.startswith(w) else k: v for k, v in sd.items()}
            stripped.append(w)
    dropped: list[str] = []
    for t in TRUNKS:
        if any(k.startswith(t) for k in sd) and not any(k.startswith(t) for k in model_keys):
            dropped += [k for k in sd if not k.startswith(t)]
            sd = {k[len(t):]: v for k, v in sd.items() if k.startswith(t)}
            stripped.append(t)
            break
    heads = HEADS + ((classifier + ".",) if classifier else ())
    extra = [k for k in sd if k not in model_keys and k.startswith(heads)]
    dropped += extra
    return {k: v for k, v in sd.items() if k not in extra}, stripped, sorted(dropped)


def _convert_meta(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Meta's DINOv2 and ConvNeXt layouts -> timm's (step 4)."""
    from timm.models.convnext import ConvNeXt, checkpoint_filter_fn as convnext_filter
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer) and ("mask_token" in sd or "register_tokens" in sd):
        sd = dict(sd)
        sd.pop("mask_token", None)
        if "register_tokens" in sd:  # timm's reg models: neither cls nor registers in the pos embed
            sd["reg_token"] = sd.pop("register_tokens")
            sd["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, :1]
            sd["pos_embed"] = sd["pos_embed"][:, 1:]
        return {k.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2."): v for k, v in sd.items()}
    if isinstance(model, ConvNeXt) and any(k.startswith("downsample_layers.") for k in sd):
        return convnext_filter(sd, model)
    return sd


def _timm_model(arch: str, kwargs: dict) -> tuple[nn.Module, str]:
    """A timm model for ``arch`` (a ViT with ``dynamic_img_size``) and its kind."""
    from timm.models.vision_transformer import VisionTransformer

    if not timm.is_model(arch):
        raise UserError(f"unknown architecture '{arch}' (a timm model name, e.g. vit_small_patch14_reg4_dinov2, "
                         f"resnet50, convnext_tiny; or torchvision:NAME)")
    try:  # ViTs take dynamic_img_size; most CNNs refuse it
        model = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
    except TypeError:
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    if not isinstance(model, VisionTransformer):
        with torch.no_grad():
            try:
                fmap = model.eval().forward_features(torch.zeros(1, 3, 64, 64))
            except Exception as e:
                fmap = e
        if not isinstance(fmap, torch.Tensor) or fmap.ndim != 4 or fmap.shape[1] != model.num_features:
            raise UserError(f"architecture '{arch}' is not supported: its forward_features does not give a "
                             f"[B, C, h, w] map (supported: timm ViTs with a class token, and CNNs)")
        return model, "cnn"
    if model.cls_token is None:
        raise UserError(f"architecture '{arch}': ViTs without a class token are not supported (the global feature is "
                         f"the class token)")
    return model, "vit"


def _fit_grid(model: nn.Module, sd: dict[str, torch.Tensor], arch: str, kwargs: dict) -> nn.Module:
    """A ViT rebuilt at the position-embedding grid of the (timm-layout) state dict ``sd``, so
    that its weights load as they are (``dynamic_img_size`` interpolates them to each input)."""
    pos = sd.get("pos_embed")
    if pos is None or getattr(model, "pos_embed", None) is None or "img_size" in kwargs or pos.ndim != 3:
        return model
    n_prefix = model.pos_embed.shape[1] - model.patch_embed.num_patches  # tokens of the pos embed not on the grid
    g = math.isqrt(max(pos.shape[1] - n_prefix, 0))
    if g * g != pos.shape[1] - n_prefix or g == model.patch_embed.grid_size[0]:
        return model  # not a square grid: the shape check names it
    return timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True,
                             img_size=g * model.patch_embed.patch_size[0], **kwargs)


class TorchvisionTrunk(nn.Module):
    """A torchvision CNN classifier without its classifier: ``forward_features(x) -> [B, C, h, w]``."""

    def __init__(self, net: nn.Module, arch: str) -> None:
        super().__init__()
        if hasattr(net, "layer4") and hasattr(net, "fc"):  # ResNet, ResNeXt, Wide ResNet
            net.fc = nn.Identity()
            self.trunk: nn.Module = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                                  net.layer1, net.layer2, net.layer3, net.layer4)
        elif isinstance(getattr(net, "features", None), nn.Module):  # ConvNeXt, EfficientNet, MobileNet, VGG, ...
            self.trunk = net.features
        else:
            raise UserError(f"architecture '{arch}': only torchvision CNNs with a ResNet layout (layer1..layer4) or a "
                             f"'.features' trunk are supported; for a ViT use the timm name")
        self.keep = net  # parameters keep torchvision's names (conv1.weight, features.0.0.weight, ...)
        with torch.no_grad():  # eval(): the dry run must not move BatchNorm statistics
            net.eval()
            self.num_features = int(self.trunk(torch.zeros(1, 3, 64, 64)).shape[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


def _torchvision_model(arch: str, kwargs: dict) -> nn.Module:
    import torchvision

    name = arch[len(TORCHVISION):]
    if name not in torchvision.models.list_models(torchvision.models):
        raise UserError(f"unknown architecture '{arch}' (torchvision classification models: e.g. resnet18, "
                         f"resnet50, convnext_tiny, efficientnet_b0)")
    net = torchvision.models.get_model(name, weights=None, **kwargs)
    for attr in ("classifier",):  # the trunk is .features; the classifier's keys must count as a head
        if hasattr(net, attr) and isinstance(getattr(net, attr), nn.Module) and hasattr(net, "features"):
            setattr(net, attr, nn.Identity())
    return TorchvisionTrunk(net, arch)


def _load_exact(module: nn.Module, sd: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load ``sd`` into ``module`` or raise one ``WeightsError`` naming the first bad keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) (file vs architecture): {'; '.join(shapes[:SHOWN])}")
    if problems:
        raise WeightsError(f"weights file {path} does not fit architecture '{arch}': {'; '.join(problems)} "
                           f"(is --arch the model these weights were trained as? depth, width, patch size and "
                           f"registers must match; pass constructor arguments with --arch-arg)")
    module.load_state_dict(sd, strict=False)  # num_batches_tracked may be absent


def load_pretrained(arch: str, path: str | Path, arch_kwargs: dict | None = None) -> tuple[Backbone, dict]:
    """A frozen-ready ``Backbone`` for ``arch`` with the weights of ``path`` (module docstring).

    Returns:
        (backbone, info): info = {"arch", "arch_kwargs", "file", "sha256", "nested" (where in
        the file the state dict was), "stripped" (prefixes), "dropped" (keys left out: heads and
        non-backbone parts), "n_tensors" (loaded)}.
    Raises:
        ValueError: unknown architecture; ``WeightsError``: the weights do not fit.
    """
    path = Path(path)
    kwargs = dict(arch_kwargs or {})
    raw, nested = read_state_dict(path)
    if arch.startswith(TORCHVISION):
        model: nn.Module = _torchvision_model(arch, kwargs)
        target, kind, classifier = model.keep, "cnn", ""
    else:
        model, kind = _timm_model(arch, kwargs)
        target, classifier = model, model.pretrained_cfg.get("classifier", "") or ""
    own = set(target.state_dict())
    sd, stripped, dropped = clean_state_dict(raw, own, classifier)
    sd = _convert_meta(sd, target)
    if kind == "vit":
        model = target = _fit_grid(model, sd, arch, kwargs)
    _load_exact(target, sd, path, arch)
    backbone = Backbone(model, kind, int(model.num_features), arch)
    info = {"arch": arch, "arch_kwargs": kwargs, "file": str(path), "sha256": file_sha256(path), "nested": nested,
            "stripped": stripped, "dropped": dropped, "n_tensors": len(sd)}
    return backbone, info


def random_like(arch: str, info: dict, seed: int) -> Backbone:
    """A random-init backbone built exactly as ``load_pretrained`` built ``arch`` (same grid,
    same constructor arguments): the random-init floor of a probe."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch.startswith(TORCHVISION):
            model: nn.Module = _torchvision_model(arch, dict(info["arch_kwargs"]))
            return Backbone(model, "cnn", int(model.num_features), arch)
        kwargs = dict(info["arch_kwargs"])
        if info.get("img_size"):
            kwargs["img_size"] = info["img_size"]
        model, kind = _timm_model(arch, kwargs)
        return Backbone(model, kind, int(model.num_features), arch)
