"""The shared frozen-feature extractor and its cache; the context every protocol gets.

A checkpoint's backbone is rebuilt from the config saved in it and frozen. Features of
a split (global [N, D], and patch [N, D, h, w] when a dense task asks) are computed once
per (checkpoint hash, split, image size, count) and cached on disk under
``<run>/features/``, so running all tasks does not recompute them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..backbones import Backbone, create_backbone
from ..data import load_split
from ..data.canvases import CanvasSet
from ..views import to_input


def _read_checkpoint(path: Path) -> dict:
    """One training checkpoint file; a damaged one is a one-line ``ValueError`` naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, zeroed, not a checkpoint: torch raises many types
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"checkpoint {path} is unreadable ({type(e).__name__}: {reason})") from None
    if not isinstance(state, dict) or "backbone" not in state or "config" not in state:
        raise ValueError(f"checkpoint {path} is unreadable (not a spatialssl training checkpoint)")
    state["_path"] = path
    return state


def _read_safetensors(path: Path) -> dict:
    """``backbone.safetensors`` (the exported weights of a finished run) with the run's
    ``config.yaml`` beside it, in the shape of a training checkpoint."""
    from safetensors.torch import load_file

    from .. import config as config_mod

    cfg_path = path.parent / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} needs the run's config.yaml beside it (expected {cfg_path})")
    cfg = config_mod.load_yaml(cfg_path.read_text(), f"config file {cfg_path}")
    try:
        weights = load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:200]})") from None
    status = _status(path.parent)
    steps = cfg["train"]["steps"]
    return {"config": cfg, "backbone": {f"model.{k}": v for k, v in weights.items()}, "_path": path,
            "step": status.get("step", steps), "complete": status.get("complete", True)}


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint: a file (``checkpoint.pt``, or ``backbone.safetensors`` with
    the run's ``config.yaml`` beside it) or a run directory.

    In a run directory an unreadable ``checkpoint.pt`` (truncated, zeroed) is reported in
    one line on stderr and the exported ``backbone.safetensors`` (a finished run's final
    weights) or else ``checkpoint.prev.pt`` (the one before) is used instead. The file
    used is ``state["_path"]``; ``state["step"]`` and ``state["complete"]`` say how far
    the run had got.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        return _with_progress(_read_safetensors(path))
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        return _with_progress(_read_checkpoint(path))
    order = [path / "checkpoint.pt", path / "backbone.safetensors", path / "checkpoint.prev.pt"]
    present = [p for p in order if p.exists()]
    if not present:
        raise FileNotFoundError(f"no checkpoint at {path / 'checkpoint.pt'}")
    problems = []
    for p in present:
        try:
            state = _read_safetensors(p) if p.suffix == ".safetensors" else _read_checkpoint(p)
        except (ValueError, FileNotFoundError) as e:
            problems.append(str(e))
            continue
        if problems:
            print(f"spatialssl: {'; '.join(problems)}; evaluating {p.name} instead", file=sys.stderr)
        return _with_progress(state)
    raise ValueError(f"no readable checkpoint in {path}: {'; '.join(problems)}")


def _with_progress(state: dict) -> dict:
    """``step`` and ``complete`` for checkpoints written before they were recorded."""
    steps = state["config"]["train"]["steps"]
    state.setdefault("step", steps)
    state.setdefault("complete", state["step"] >= steps)
    return state


def checkpoint_hash(path: str | Path, n: int = 16) -> str:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


@torch.no_grad()
def extract(backbone: Backbone, images: torch.Tensor, img_size: int, batch_size: int = 256,
            device: torch.device | str = "cpu", patch: bool = False, desc: str = "features",
            progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frozen features of uint8 images [N, 3, H, W], resized to ``img_size``.

    Returns:
        global float32 [N, D] and, with ``patch=True``, patch float32 [N, D, h, w] (else None).
    """
    backbone.eval().to(device)
    glob, patches = [], []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        x = to_input(images[i:i + batch_size].to(device), img_size)
        g, p = backbone.features(x)
        glob.append(g.float().cpu())
        if patch:
            patches.append(p.float().cpu())
    return torch.cat(glob), (torch.cat(patches) if patch else None)


class EvalContext:
    """What a protocol needs: config, frozen backbone, data splits and cached features.

    Attributes:
        cfg: the resolved config (the checkpoint's, with eval overrides).
        backbone: the frozen backbone (eval mode, on ``device``).
        ckpt_hash: short hash of the checkpoint file ("random" for a random-init floor).
        seed: the evaluation seed.
    """

    def __init__(self, cfg: dict, backbone: Backbone, ckpt_hash: str, device: torch.device | str = "cpu",
                 cache_dir: Path | None = None, seed: int = 0, progress: bool = True,
                 splits: dict[str, CanvasSet] | None = None) -> None:
        self.cfg = cfg
        self.ecfg = cfg["eval"]
        self.backbone = backbone.eval().to(device)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.ckpt_hash = ckpt_hash
        self.device = torch.device(device)
        self.cache_dir = cache_dir
        self.seed = seed
        self.progress = progress
        self._splits: dict[str, CanvasSet] = dict(splits or {})
        self._feats: dict[tuple, tuple] = {}

    @property
    def img_size(self) -> int:
        return self.ecfg["img_size"] or self.cfg["views"]["global_size"]

    def split(self, name: str) -> CanvasSet:
        """A data split, limited to ``eval.n_train`` / ``eval.n_test`` images (first ones)."""
        if name not in self._splits:
            data = load_split(self.cfg["data"], name, progress=self.progress)
            limit = self.ecfg["n_train"] if name == self.ecfg["split_train"] else self.ecfg["n_test"]
            if limit and len(data) > limit:
                data = data.subset(slice(0, limit))
            self._splits[name] = data
        return self._splits[name]

    def features(self, name: str, patch: bool = False, images: torch.Tensor | None = None,
                 tag: str = "") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of split ``name`` (or of ``images``, cached under ``name`` + ``tag``)."""
        imgs = images if images is not None else self.split(name).images
        key = (name, tag, patch, self.img_size, len(imgs))
        if key in self._feats:
            return self._feats[key]
        path = None
        if self.cache_dir is not None and self.ckpt_hash != "random":
            stem = f"{self.ckpt_hash}_{name}{'_' + tag if tag else ''}_{self.img_size}px_{len(imgs)}{'_patch' if patch else ''}"
            path = self.cache_dir / f"{stem}.pt"
            if path.exists():
                try:
                    self._feats[key] = torch.load(path, weights_only=True)
                    return self._feats[key]
                except Exception:  # a damaged cache file is recomputed, never trusted
                    path.unlink()
        out = extract(self.backbone, imgs, self.img_size, self.ecfg["batch_size"], self.device, patch,
                      desc=f"features {name}{' ' + tag if tag else ''}", progress=self.progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(out, tmp)
            tmp.replace(path)
        self._feats[key] = out
        return out

    def with_backbone(self, backbone: Backbone, ckpt_hash: str) -> "EvalContext":
        """The same data and settings over another backbone (e.g. the random-init floor)."""
        return EvalContext(self.cfg, backbone, ckpt_hash, self.device, self.cache_dir, self.seed, self.progress,
                           self._splits)

    def random_backbone(self) -> Backbone:
        """A random-init backbone of the same architecture (seeded by the eval seed)."""
        torch.manual_seed(self.seed)
        return create_backbone(self.cfg["backbone"])


def context_from_checkpoint(path: str | Path, overrides: dict | None = None, device: str = "cpu",
                            seed: int = 0, progress: bool = True, cache_dir: Path | None = None) -> EvalContext:
    """Rebuild the (frozen) evaluation backbone from a checkpoint (which file: see
    ``load_checkpoint``); features are cached in ``cache_dir`` (default: ``<run>/features``).
    The context's ``step`` and ``complete`` say how far the run had got."""
    state = load_checkpoint(path)
    cfg = copy.deepcopy(state["config"])
    cfg.pop("resumed_with_changes", None)
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    if device != "cpu" and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"eval device '{device}': no CUDA device is available (use cpu)")
    backbone = create_backbone(cfg["backbone"])
    backbone.load_state_dict(state["backbone"])
    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    ctx = EvalContext(cfg, backbone, checkpoint_hash(state["_path"]), device, cache_dir or run_dir / "features", seed,
                      progress)
    ctx.step, ctx.complete = int(state["step"]), bool(state["complete"])  # how far the run had got
    return ctx


def write_metrics(out_dir: Path, task: str, values: dict, ctx: EvalContext, extra: dict | None = None) -> Path:
    """``<out_dir>/metrics/<task>.json`` with values, eval config, seed and checkpoint hash."""
    d = Path(out_dir) / "metrics"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{task}.json"
    record = {"task": task, "values": values, "eval_config": ctx.ecfg, "seed": ctx.seed,
              "checkpoint": ctx.ckpt_hash, "framework": ctx.cfg["framework"]["name"],
              "sp": ctx.cfg["sp"]["enabled"], **(extra or {})}
    path.write_text(json.dumps(record, indent=2))
    return path


Protocol = Callable[[EvalContext], dict]
