"""One configuration system for pretraining and evaluation.

Full defaults live here (``DEFAULTS``); presets in ``configs/*.yaml`` are small deltas over
them; ``--set key=value`` overrides come last. Every key of a delta or override must exist
in the defaults and keep its type; enumerated keys must take an allowed value. Derived
values are computed in one place (``derive``), and the resolved config is saved with every
run (``save``).

Schedule lengths follow the budget. ``train.warmup_steps``, ``framework.freeze_last_layer_steps``
and ``train.checkpoint_every`` (``SCHEDULE_KEYS``) take either a whole number of steps
(``100``) or a fraction of the run, a number in (0, 1) (``0.1``: the first 10% of
``train.steps``; ``E`` epochs of a run of ``N`` epochs is ``E / N``); the teacher-temperature
warm-up, ``framework.warmup_teacher_temp_frac``, is always a fraction. A fraction resolves to
``floor(fraction x train.steps)`` steps (``checkpoint_every`` at least 1) in one function,
``schedule_steps``, which the trainer and the frameworks read; the config keeps what was
written, so ``--set train.steps=N`` on a preset written in fractions runs the same recipe
shortened (or lengthened). The resolved steps are logged when training starts (train.log) and
printed by ``spatialssl config`` (``describe_schedule``).

>>> schedule_steps(resolve(["imagenet100_vits16_dino"], ["train.steps=1000"]))["train.warmup_steps"]
100

Run names and folders: ``name`` is ``--set name=...`` or a preset's ``name:`` if one is
given, else the last preset's file name (``-c dino_sp`` -> ``dino_sp``), else ``run``;
``out_dir`` is ``--set out_dir=...`` if given, else ``runs/<name>`` (so ``-c dino`` and
``-c dino_sp`` write to ``runs/dino`` and ``runs/dino_sp``).

>>> cfg = resolve(["dino_sp"], ["train.steps=10", "sp.weight=1.0"])
>>> cfg["sp"]["enabled"], cfg["train"]["steps"]
(True, 10)
"""

from __future__ import annotations

import copy
import logging
import math
import re
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import yaml

from .errors import UserError

CONFIG_DIR = Path(__file__).parent / "configs"

DEFAULTS: dict[str, Any] = {
    "name": "",  # "" = the last preset's name (-c dino_sp -> dino_sp), or "run" without one
    "seed": 0,
    "out_dir": "",  # "" = runs/<name>
    "device": "auto",  # auto | cpu | cuda
    "data": {
        "name": "partsworld",  # partsworld | folder | shards (a folder made by `spatialssl data prepare`)
        "root": "",  # folder data set root (ImageFolder layout; labels used by evals only), or the shards folder
        "canvas_size": 64,  # folder data: canvas side in px; partsworld: render size
        "n_train": 20000,  # partsworld only
        "n_eval": 2000,  # partsworld only: val/test/ood size
        "seed": 0,  # partsworld only: the data set's seed (independent of the run's seed)
        # images of train held out as split 'holdout' (a validation split carved from the training
        # images: pretraining and probe-training never see them; the study tunes on it); 0 = none
        "holdout": 0,
        "distractors": 2,  # partsworld only: at most this many distractor primitives per image (0: none)
        "fill": [0.65, 0.95],  # partsworld only: the object's bounding sphere spans this fraction of the frame
        "background": "scene",  # partsworld only: scene (sky, ground, distractors) | grey (every non-object pixel mid grey)
        "elevation": [8.0, 40.0],  # partsworld only: camera elevation range in degrees (the view shows sky below ~20)
        "cache_dir": "",  # "" = $SPATIALSSL_CACHE or ~/.cache/spatialssl
        "on_error": "skip",  # skip | raise  (unreadable files in folder data)
        "max_pixels": 64_000_000,  # folder data: larger images (w x h) are refused before decoding; 0 = no limit
        "workers": 2,  # shards: DataLoader processes decoding training and eval-feature batches (0 = in process)
        "prefetch": 2,  # shards: batches each worker decodes ahead (memory: workers x prefetch batches)
        "decode": "cpu",  # shards' JPEG canvases: cpu (in the workers) | gpu (nvJPEG on the training GPU); docs/data.md
    },
    "backbone": {
        "name": "vit_tiny",  # vit_tiny | vit_small | vit_base | resnet18 | resnet50 | resnet_mini
        "patch_size": 16,  # ViTs only
        "img_size": 224,  # ViT positional-embedding grid size (dynamic_img_size interpolates)
        "small_stem": False,  # ResNets: 3x3 stride-1 stem, no max-pool (for <= 64 px input)
        "width": 32,  # resnet_mini only: channels of the first stage (doubles per stage)
        "stem_width": 0,  # resnet_mini only: stem channels (0 = timm's 64)
        "drop_path": 0.0,
    },
    "views": {
        "global_size": 224,
        "local_size": 96,
        "n_global": 2,
        "n_local": 6,
        "global_scale": [0.4, 1.0],
        "local_scale": [0.05, 0.4],
        "ratio": [0.75, 1.3333333],
        "local_flip": "auto",  # auto | per_image | per_view | none  (auto: per_image when SP is on)
        "global_flip": True,
        "color_jitter": 0.8,  # probability
        "jitter_strength": [0.4, 0.4, 0.2, 0.1],  # brightness, contrast, saturation, hue
        "grayscale": 0.2,  # probability
        "blur": [1.0, 0.1],  # probability for global view 1, global view 2 (locals use 0.5)
        "local_blur": 0.5,
        "solarize": 0.2,  # probability, second global view only (BYOL/DINO)
    },
    "framework": {
        "name": "dino",
        # DINO / iBOT
        "out_dim": 65536,
        "hidden_dim": 2048,
        "bottleneck_dim": 256,
        "teacher_temp": 0.04,
        "warmup_teacher_temp": 0.04,
        "warmup_teacher_temp_frac": 0.3,  # a fraction of train.steps, always (module docstring)
        "student_temp": 0.1,
        "center_momentum": 0.9,
        "freeze_last_layer_steps": 0,  # steps, or a fraction of train.steps in (0, 1) (module docstring)
        "norm_last_layer": True,
        "head_batch_norm": False,  # DINO/iBOT: BatchNorm in the projection head's hidden layers
        # iBOT
        "patch_out_dim": 8192,
        "shared_head": False,
        "mask_ratio": [0.1, 0.5],
        "mask_prob": 0.5,
        "patch_loss_weight": 1.0,
        # contrastive / BYOL / MoCo
        "proj_dim": 256,
        "temperature": 0.1,
        # momentum encoders
        "momentum": 0.996,
        "momentum_end": 1.0,
        "stop_grad_patch_embed": True,  # MoCo v3: frozen random patch projection (ViTs)
    },
    "sp": {
        "enabled": False,
        "weight": 0.5,
        "max_iou": 0.0,
        "offsets": "canvas",  # canvas | reference
        "antisymmetric": True,
        "hidden_dim": 256,
        "extra_local_views": 2,  # for frameworks without local views
        "pair_candidates": 64,  # rejection-sampling candidate pairs per pair (both boxes redrawn)
        "min_gap": 3.0,  # canvas px between the two boxes of a pair (0 = touching allowed); docs/sp.md
        "beta": 1.0,  # smooth-L1 beta (on standardised targets)
        # geometry | shuffled: a control arm whose targets are permuted across the batch's pairs,
        # so they say nothing about the pair; it still cuts, forwards and pairs the local views
        "targets": "geometry",
    },
    "train": {
        "steps": 1000,
        "batch_size": 64,
        "lr": 5e-4,  # peak lr at batch 256; scaled linearly with batch_size / 256
        "lr_scale_with_batch": True,
        "min_lr": 1e-6,
        # the length of every per-step schedule (lr, weight decay, EMA momentum, teacher
        # temperature); 0 = train.steps. Larger: the run is that longer run stopped at
        # train.steps (a schedule question the study tunes: step 2,000 of a 3,000-step cosine
        # beat a 2,000-step run, issue "Fair by construction")
        "schedule_steps": 0,
        # schedule lengths: whole steps (100) or a fraction of train.steps in (0, 1) (0.1 = the
        # first 10% of the run), resolved by ``schedule_steps`` (module docstring)
        "warmup_steps": 0.1,  # 100 of the default 1000 steps
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "clip_grad": 3.0,  # 0 = off
        "precision": "auto",  # auto | fp32 | bf16  (auto: bf16 on CUDA, fp32 on CPU)
        "compile": False,  # torch.compile the step's whole forward (backbones, heads, losses, SP)
        "compile_backend": "inductor",  # torch.compile's backend (aot_eager, eager: no code generated; for tests)
        # NHWC activations for CNN backbones (faster convolutions on CPU with oneDNN, and on
        # GPU tensor cores); benchmarks/cpu_step.py measures it. No effect on ViTs
        "channels_last": False,
        # steps or a fraction, as warmup_steps. The default is in steps: a cadence in steps bounds
        # the work an interruption loses whatever the run's length (the ImageNet presets use 0.05)
        "checkpoint_every": 500,
        "log_every": 10,
        "collapse_every": 50,
        "num_threads": 0,  # torch CPU threads; 0 = torch default
        "progress": True,
        # several processes (torchrun; docs/distributed.md): ddp = DistributedDataParallel (gradient
        # all-reduce overlapped with backward) | allreduce = one flat all-reduce after backward
        "data_parallel": "ddp",
        "sync_bn": False,  # BatchNorm statistics over all processes (SyncBatchNorm; GPUs only) when world > 1
    },
    "eval": {
        "tasks": ["knn", "linear", "patch_pair"],
        "split_train": "train",
        "split_test": "test",
        "n_train": 5000,  # probe-train images (0 = all)
        "n_test": 2000,
        "img_size": 0,  # 0 = views.global_size
        "batch_size": 256,
        "knn_k": 20,
        "knn_t": 0.07,
        "linear_epochs": 100,
        "linear_lr": [0.1, 0.03, 0.01, 0.003, 0.001],
        "pp_pairs_per_image": 8,
        "pp_scale": [0.05, 0.3],
        "pp_crop_size": 0,  # 0 = views.local_size
        "pp_epochs": 200,
        "pp_hidden": 128,
        "seeds": 1,
        "random_floor": True,
        # finegrained / segmentation / depth / robustness / jigsaw (issue 5; docs/evaluations.md)
        "dense_n_train": 1000,  # probe-train images for segmentation and depth (0 = all of n_train)
        "dense_n_test": 500,  # 0 = all of n_test
        "dense_epochs": 30,
        "dense_lr": 0.01,  # AdamW lr of the per-patch linear head
        "dense_batch_size": 64,
        "seg_target": "semantic",  # semantic | parts  (PartsWorld masks)
        "seg_root": "",  # folder data: <seg_root>/<split>/{images,masks} (PNG masks, 0 = background)
        "seg_ignore_index": 255,  # mask value left out of training and scoring (folder data)
        "depth_root": "",  # folder data: <depth_root>/<split>/{images,depth} (.npy or 16-bit .png)
        "depth_scale": 1.0,  # folder depth maps: metres = stored value * depth_scale
        "robust_corruptions": [],  # [] = all 15 ImageNet-C corruptions
        "robust_severities": [],  # [] = 1..5 (severity 0, the clean images, is always scored)
        "robust_n_test": 1000,  # first images of split_test (0 = all of n_test)
        "robust_ood": True,  # also score the 'ood' split when the data set has one
        "jigsaw_n": 3,  # n x n tiles
        "jigsaw_tile_size": 0,  # px each tile is resized to before embedding (0 = views.local_size)
        "jigsaw_n_train": 1000,  # probe-train images (0 = all of n_train)
        "jigsaw_n_test": 500,  # 0 = all of n_test
        "jigsaw_epochs": 100,
        "jigsaw_hidden": 256,  # MLP probe width (0 = a linear probe)
        "n_examples": 6,  # example images saved in metrics/<task>_examples.npz for the report
    },
}

CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "data.name": ("partsworld", "folder", "shards"),
    "data.on_error": ("skip", "raise"),
    "data.decode": ("cpu", "gpu"),
    "data.background": ("scene", "grey"),
    "backbone.name": ("vit_tiny", "vit_small", "vit_base", "resnet18", "resnet50", "resnet_mini"),
    "views.local_flip": ("auto", "per_image", "per_view", "none"),
    "sp.offsets": ("canvas", "reference"),
    "sp.targets": ("geometry", "shuffled"),
    "train.precision": ("auto", "fp32", "bf16"),
    "train.data_parallel": ("ddp", "allreduce"),
    "train.compile_backend": ("inductor", "aot_eager", "eager"),
}


class ConfigError(UserError):
    """A config key or value that is not allowed; the message names it."""


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2's float rule.

    PyYAML implements YAML 1.1, whose floats need a dot: ``1e-4``, ``5e-4`` and ``1e6``
    load as *strings* there, while YAML 1.2 (and JSON, and Python) read them as numbers.
    Learning rates are written that way, so configs and ``--set`` values use this loader.
    """


# YAML 1.2 core-schema floats (plus 1.1's ``1_000.5`` underscores, which PyYAML already accepts)
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def load_yaml(text_or_file: Any, where: str = "") -> Any:
    """YAML 1.2-style load (see ``_Loader``); malformed YAML is a one-line ``ConfigError``
    naming ``where`` and the line."""
    try:
        return yaml.load(text_or_file, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where or 'YAML'} is not valid YAML{at}: {problem}") from None


def with_defaults(saved: dict, defaults: dict | None = None) -> dict:
    """A saved run's config with the keys added since it was written filled in at their
    defaults (``defaults``, default ``DEFAULTS``); every saved value, and any key no longer
    known, is kept as it is. The one place of the rule "a key a saved config lacks counts as
    its default": evaluation (``evals.features``) and the resume check (``resume_changes``)
    both read old runs through it."""
    out = copy.deepcopy(saved)

    def fill(dst: dict, src: dict) -> None:
        for key, value in src.items():
            if key not in dst:
                dst[key] = copy.deepcopy(value)
            elif isinstance(value, dict) and isinstance(dst[key], dict):
                fill(dst[key], value)

    fill(out, DEFAULTS if defaults is None else defaults)
    return out


def _merge(base: dict, delta: dict, where: str = "") -> None:
    for key, value in delta.items():
        path = f"{where}{key}"
        if key not in base:
            import difflib

            allowed = ", ".join(sorted(base))
            names = [str(k) for k in base]
            initials = "".join(w[:1] for w in str(key).split("_"))  # learning_rate -> lr
            close = ([initials] if initials in names and "_" in str(key) else []) or \
                difflib.get_close_matches(str(key), names, n=1, cutoff=0.5) or \
                [n for n in names if str(key) in n or n in str(key) and len(n) > 2][:1]
            hint = f"did you mean '{where}{close[0]}'? " if close else ""
            raise ConfigError(f"unknown config key '{path}' ({hint}allowed here: {allowed})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' is a section; give it a mapping, not {value!r}")
            _merge(base[key], value, path + ".")
        else:
            base[key] = _coerce(path, base[key], value)


def _coerce(path: str, default: Any, value: Any) -> Any:
    """Check ``value`` against the type of ``default`` (ints are accepted for floats; a
    schedule length, ``SCHEDULE_KEYS``, is an int or a float whatever its default)."""
    if path in SCHEDULE_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}' must be a number of steps or a fraction of train.steps, "
                              f"got {value!r}")
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' must be true or false, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}' must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{path}' must be an integer, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}' must be a string, got {value!r}")
    elif isinstance(default, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}' must be a list, got {value!r}")
        if default and all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in default):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"config key '{path}' must be a list of numbers, got {value!r}")
            if len(value) != len(default) and path not in ("eval.linear_lr",):
                raise ConfigError(f"config key '{path}' must have {len(default)} numbers, got {value!r}")
            if isinstance(default[0], float):
                value = [float(v) for v in value]
    if path in CHOICES and value not in CHOICES[path]:
        raise ConfigError(f"config key '{path}' must be one of {', '.join(CHOICES[path])}; got {value!r}")
    return value


def parse_override(text: str) -> dict:
    """``"a.b=1"`` -> ``{"a": {"b": 1}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    if not key.strip() or any(not p for p in key.strip().split(".")):
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.steps=100)")
    value = load_yaml(raw, f"the value of --set {key.strip()}") if raw.strip() != "" else ""
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_preset(name_or_path: str) -> dict:
    """A delta YAML by preset name (``configs/<name>.yaml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"no config preset '{name_or_path}' (known presets: {known})")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a file")
    with open(path) as f:
        delta = load_yaml(f, f"config file {path}") or {}
    if not isinstance(delta, dict):
        raise ConfigError(f"config file {path} must hold a mapping")
    bases = delta.pop("base", [])
    delta.pop(RESUME_HISTORY, None)  # a run's config.yaml may be used as a preset
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        _deep_update(merged, load_preset(b))
    _deep_update(merged, delta)
    return merged


# training budgets of ``spatialssl compare --budget`` (overrides after the framework's and
# the demo's presets; the rest comes from configs/demo.yaml)
BUDGETS: dict[str, list[str]] = {
    "tiny": ["train.steps=10", "train.batch_size=32", "data.n_train=256", "data.n_eval=128"],  # smoke test
    "small": ["train.steps=400", "data.n_train=8000"],  # the demo's budget
    "medium": ["train.steps=1500", "data.n_train=20000", "data.n_eval=2000"],
}


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def resolve(presets: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = (),
            base: dict | None = None, warn: bool = True) -> dict:
    """Defaults (or ``base``), then each preset delta, then ``key=value`` overrides; validated.

    ``warn=False``: no SP/view warnings (for configs resolved only to read or validate their
    eval.* and data.* keys, whose views nobody trains on)."""
    cfg = copy.deepcopy(base if base is not None else DEFAULTS)
    for p in presets:
        try:
            _merge(cfg, load_preset(p))
        except ConfigError as e:  # a bad key or value in a preset file: name the file
            if "no config preset" in str(e) or str(e).startswith("config file"):
                raise
            path = Path(p) if Path(p).suffix else CONFIG_DIR / f"{p}.yaml"
            raise ConfigError(f"{path}: {e}") from None
    for o in overrides:
        _merge(cfg, parse_override(o))
    if not cfg["name"]:
        cfg["name"] = Path(presets[-1]).stem if presets else "run"
    return derive(cfg, warn)


def derive(cfg: dict, warn: bool = True) -> dict:
    """Values that follow from others, computed in this one place."""
    check_values(cfg)
    cfg["name"] = cfg["name"] or "run"
    cfg["out_dir"] = cfg["out_dir"] or f"runs/{cfg['name']}"  # each preset its own folder: -c dino, -c dino_sp
    v, sp = cfg["views"], cfg["sp"]
    if v["local_flip"] == "auto":
        v["local_flip"] = "per_image" if sp["enabled"] else "per_view"
    for key, least, most in (("fill", 1e-6, 3), ("elevation", 0, 85)):  # PartsWorld's camera ranges
        lo, hi = cfg["data"][key]
        if not least <= lo <= hi <= most:
            raise ConfigError(f"config key 'data.{key}' must satisfy {least} <= low <= high <= {most}, "
                              f"got {cfg['data'][key]}")
    for key in ("global_scale", "local_scale", "ratio"):
        lo, hi = v[key]
        if not 0 < lo <= hi:
            raise ConfigError(f"config key 'views.{key}' must satisfy 0 < low <= high, got {v[key]}")
    if cfg["train"]["steps"] < 1:
        raise ConfigError(f"config key 'train.steps' must be >= 1, got {cfg['train']['steps']}")
    if cfg["train"]["schedule_steps"] and cfg["train"]["schedule_steps"] < cfg["train"]["steps"]:
        raise ConfigError(f"config key 'train.schedule_steps' must be 0 (= train.steps) or >= train.steps "
                          f"({cfg['train']['steps']}), got {cfg['train']['schedule_steps']}")
    if cfg["train"]["batch_size"] < 2:
        raise ConfigError("config key 'train.batch_size' must be >= 2")
    if not 0.0 <= sp["max_iou"] < 1.0:
        raise ConfigError(f"config key 'sp.max_iou' must be in [0, 1), got {sp['max_iou']}")
    if warn:  # the torch-free checks; SP's pair fallback rate needs its sampler and is logged when
        log_once(upsampling_warnings(cfg))  # views are built for training (views.MultiCrop.from_config)
        log_once(ignored_data_warnings(cfg))
    return cfg


# data keys only the built-in PartsWorld reads (its size, seed and how it draws)
PARTSWORLD_ONLY = ("n_train", "n_eval", "seed", "distractors", "fill", "elevation", "background")


def ignored_data_warnings(cfg: dict) -> list[str]:
    """A warning naming each PartsWorld-only data key set away from its default while the data
    is a folder or prepared shards (a preset's or a --set's: it would be silently ignored)."""
    d = cfg["data"]
    if d["name"] == "partsworld":
        return []
    keys = [k for k in PARTSWORLD_ONLY if not same(d[k], DEFAULTS["data"][k])]
    if not keys:
        return []
    return [f"data.name is {d['name']}: {', '.join(f'data.{k}={d[k]}' for k in keys)} "
            f"{'is' if len(keys) == 1 else 'are'} read by PartsWorld only and ignored here (the images are "
            f"those of {d['root'] or 'data.root'}; data.holdout holds some of them out)"]


# --------------------------------------------------------------------------- warnings
# (no torch here: ``spatialssl config`` resolves in a fraction of a second; sp.config_warnings
# adds the sampler's fallback rate to these)

_warned: set[str] = set()


def log_once(messages: list[str]) -> None:
    """Log each of ``messages`` as a warning on the "spatialssl" logger, once per process
    (configs are resolved many times in one run: per arm, per evaluation)."""
    for m in messages:
        if m not in _warned:
            _warned.add(m)
            logging.getLogger("spatialssl").warning(m)


# the resolved config warns when a global view is upsampled from its median box by more
# than this, or a local view from its smallest box by more than LOCAL_UPSAMPLE_WARN: on pink
# noise ds R^2 from per-view statistics was ~0 at <= 1.0x, 0.04 at 1.1x, 0.17 at 1.2x and
# 0.56 at 1.5x (dino_sp's views; benchmarks/sp_shortcuts.py, docs/sp.md "Resampling")
UPSAMPLE_WARN = 1.5
LOCAL_UPSAMPLE_WARN = 1.1


def upsampling(size: int, scale: tuple[float, float], canvas_side: int) -> tuple[float, float]:
    """How much views of ``size`` px are enlarged from their boxes: (least, most), the
    view side over the box side ``sqrt(area)`` at the largest and smallest box of
    ``scale`` (area fractions of a square canvas of ``canvas_side`` px)."""
    side = lambda s: math.sqrt(s) * canvas_side  # noqa: E731
    return size / side(scale[1]), size / side(scale[0])


def upsampling_warnings(cfg: dict) -> list[str]:
    """One warning per view kind upsampled from the canvas by more than ``UPSAMPLE_WARN``.

    Local views count at their smallest box, against ``LOCAL_UPSAMPLE_WARN``: an SP view
    enlarged more than its pair partner is blurrier, and its sharpness alone then tells ds
    (on pink noise, where nothing else can, per-view statistics explained R^2 0.17 of ds
    at 1.2x and 0.56 at 1.5x, ~0 with no view enlarged; ``benchmarks/sp_shortcuts.py``). Global views, never SP's inputs,
    count at their median box (area at the middle of ``views.global_scale``): the
    frameworks' own recipes enlarge their smallest crops ~2x on ImageNet too, but a
    typical global view should not be a blur of a few canvas pixels (224 px views from a
    64 px canvas were 3.5x upsampled even at full scale).
    """
    v, side = cfg["views"], int(cfg["data"]["canvas_size"])
    out = []
    lo, hi = v["global_scale"]
    mid = v["global_size"] / (math.sqrt((lo + hi) / 2) * side)
    if mid > UPSAMPLE_WARN:
        out.append(f"global views ({v['global_size']} px) are upsampled {mid:.1f}x from their median box on a "
                   f"{side} px canvas (views.global_scale={list(v['global_scale'])}): set data.canvas_size >= "
                   f"{math.ceil(v['global_size'] / (UPSAMPLE_WARN * math.sqrt((lo + hi) / 2)))}")
    least, most = upsampling(v["local_size"], tuple(v["local_scale"]), side)
    if most > LOCAL_UPSAMPLE_WARN:
        need = math.ceil(v["local_size"] / math.sqrt(v["local_scale"][0]))
        out.append(f"local views ({v['local_size']} px) are upsampled {least:.1f}-{most:.1f}x from their boxes on a "
                   f"{side} px canvas (views.local_scale={list(v['local_scale'])}): their blur tells their size, "
                   f"a shortcut for SP's ds; set data.canvas_size >= {need} (no view enlarged), or views.local_size "
                   f"smaller, or views.local_scale's lower bound larger")
    return out


# key -> (lowest allowed value, whether the bound is strict)
_LOWER_BOUNDS: dict[str, tuple[float, bool]] = {
    "seed": (0, False),
    "data.canvas_size": (1, False), "data.max_pixels": (0, False),
    "data.n_train": (1, False), "data.n_eval": (1, False), "data.holdout": (0, False), "data.distractors": (0, False),
    "views.global_size": (1, False), "views.local_size": (1, False),
    "views.n_global": (1, False), "views.n_local": (0, False),
    "sp.weight": (0.0, False), "sp.pair_candidates": (1, False), "sp.extra_local_views": (0, False),
    "sp.hidden_dim": (1, False), "sp.beta": (0.0, True),
    "train.lr": (0.0, True), "train.min_lr": (0.0, False), "train.schedule_steps": (0, False),
    "train.clip_grad": (0.0, False), "train.num_threads": (0, False),
    "train.log_every": (1, False), "train.collapse_every": (1, False),
    "eval.knn_k": (1, False), "eval.knn_t": (0.0, True), "eval.seeds": (1, False), "eval.batch_size": (1, False),
    "eval.n_train": (0, False), "eval.n_test": (0, False), "eval.linear_epochs": (1, False),
    "eval.pp_epochs": (1, False), "eval.pp_pairs_per_image": (1, False),
}


def check_values(cfg: dict) -> None:
    """Ranges of numeric keys and combinations a run cannot train with; each error names
    the key and what is allowed (``ConfigError``)."""
    for key, (low, strict) in _LOWER_BOUNDS.items():
        try:
            value = get(cfg, key)
        except KeyError:  # a section another version does not have
            continue
        if value < low or (strict and value == low):
            raise ConfigError(f"config key '{key}' must be {'>' if strict else '>='} {low}, got {value}")
    for key, least in SCHEDULE_KEYS.items():
        value = get(cfg, key)
        if isinstance(value, float) and not (0.0 < value < 1.0 or (value == 0.0 and least == 0)):
            hint = (f"whole steps are written without a decimal point: {int(value)}" if value >= 1
                    and value.is_integer() else "e.g. 0.1 for a tenth of the run, or whole steps as an integer")
            raise ConfigError(f"config key '{key}' is a fraction of train.steps: it must be in (0, 1), got {value} "
                              f"({hint})")
        if isinstance(value, int) and value < least:
            raise ConfigError(f"config key '{key}' must be >= {least} steps (or a fraction of train.steps in (0, 1)), "
                              f"got {value}")
    frac = cfg["framework"]["warmup_teacher_temp_frac"]
    if not 0.0 <= frac <= 1.0:
        raise ConfigError(f"config key 'framework.warmup_teacher_temp_frac' is a fraction of train.steps: it must be "
                          f"in [0, 1], got {frac}")


# --------------------------------------------------------------------------- schedules

# schedule lengths written as whole steps or as a fraction of train.steps -> least steps
SCHEDULE_KEYS: dict[str, int] = {
    "train.warmup_steps": 0,  # lr: linear warm-up, then cosine
    "framework.freeze_last_layer_steps": 0,  # DINO / iBOT: the head's last layer gets no gradient
    "train.checkpoint_every": 1,  # cadence of checkpoint.pt (and one at the end)
}
TEACHER_TEMP_WARMUP = "framework.warmup_teacher_temp_frac"  # always a fraction of train.steps


def fraction_steps(value: int | float, steps: int, least: int = 0) -> int:
    """Steps of a schedule length: an int is steps; a float is a fraction of ``steps``,
    ``floor(value x steps)`` (plus 1e-6 for binary rounding: 0.29 x 100 is 28.999999999999996
    in floating point, and 29 steps here) and at least ``least``."""
    if isinstance(value, float):
        return max(least, math.floor(value * steps + 1e-6))
    return int(value)


def schedule_steps(cfg: dict, steps: int | None = None) -> dict[str, int]:
    """Every schedule length of ``cfg`` in steps, for a run of ``steps`` (default
    ``train.schedule_steps`` or else ``train.steps``): ``SCHEDULE_KEYS`` and the teacher-temperature warm-up
    (``TEACHER_TEMP_WARMUP``). The one place fractions become steps."""
    if steps is None:  # the schedules' length: train.schedule_steps, 0 meaning train.steps
        steps = cfg["train"].get("schedule_steps") or cfg["train"]["steps"]
    out = {key: fraction_steps(get(cfg, key), steps, least) for key, least in SCHEDULE_KEYS.items()}
    out[TEACHER_TEMP_WARMUP] = fraction_steps(float(get(cfg, TEACHER_TEMP_WARMUP)), steps)
    return out


_SCHEDULE_NAMES = {"train.warmup_steps": "lr warm-up", "framework.freeze_last_layer_steps": "last-layer freeze",
                   TEACHER_TEMP_WARMUP: "teacher-temperature warm-up", "train.checkpoint_every": "checkpoint every"}


def describe_schedule(cfg: dict, framework_keys: Iterable[str] | None = None) -> str:
    """One line: each schedule's length in steps, and the key and value it comes from.
    ``framework_keys``: the ``framework.*`` keys the chosen framework reads (its class's
    ``config_keys``); a framework schedule it does not read (BYOL has no teacher temperature)
    is left out. None: every schedule.

    >>> describe_schedule(resolve(["imagenet100_vits16_dino"], ["train.steps=1000"]))[:75]
    'schedules at train.steps=1000: lr warm-up 100 steps (train.warmup_steps 0.1'
    """
    parts = []
    for key, n in schedule_steps(cfg).items():
        section, _, name = key.partition(".")
        if section == "framework" and framework_keys is not None and name not in framework_keys:
            continue
        written = get(cfg, key)
        how = f"{written:g} of the run" if isinstance(written, float) else f"{written}"
        parts.append(f"{_SCHEDULE_NAMES[key]} {n} steps ({key} {how})")
    longer = cfg["train"].get("schedule_steps") or 0
    of = f" of a {longer}-step schedule (train.schedule_steps)" if longer and longer != cfg["train"]["steps"] else ""
    return f"schedules at train.steps={cfg['train']['steps']}{of}: " + ", ".join(parts)


# --------------------------------------------------------------------------- resume


# The one list of keys that change no number: where and how a run is logged and its data
# decoded (``data.workers``, ``data.prefetch``: DataLoader processes), or floating-point
# rounding only (``device``, ``train.num_threads``, ``train.compile``, ``train.compile_backend``,
# ``train.channels_last``, ``train.data_parallel``); ``eval.*`` is never read by training (each evaluation records the
# settings it ran with in ``metrics/<task>.json``, and the report compares those). Read by the
# resume check (``resume_changes``: these may change on resume), the report (a baseline / + SP
# pair may differ in these and ``sp.*``, nothing else) and the feature cache (``data.*`` keys
# listed here are not part of its key). Entries ending in "." are prefixes.
NUMBER_FREE: tuple[str, ...] = (
    "name", "out_dir", "device", "data.cache_dir", "data.workers", "data.prefetch", "train.progress",
    "train.log_every", "train.checkpoint_every", "train.collapse_every", "train.num_threads", "train.compile",
    "train.compile_backend", "train.channels_last", "train.data_parallel", "eval.",
)


def number_free(key: str) -> bool:
    """Whether the dotted ``key`` changes no number (``NUMBER_FREE``)."""
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in NUMBER_FREE)


# Keys only training reads, though they change its numbers: evaluations decode prepared shards on
# the CPU whatever ``data.decode`` says (docs/data.md). Left out, with the number-free ones, of
# the feature-cache key and of the evaluation data settings the report compares (``eval_data``).
EVAL_UNREAD: tuple[str, ...] = ("data.decode",)


def eval_data(data: dict) -> dict:
    """The ``data`` section's keys that can change an evaluation's numbers: those neither
    number-free (``NUMBER_FREE``) nor unread by evaluations (``EVAL_UNREAD``)."""
    return {k: v for k, v in data.items() if not number_free(f"data.{k}") and f"data.{k}" not in EVAL_UNREAD}


RESUME_HISTORY = "resumed_with_changes"  # config.yaml entry listing changes forced on resume


def flatten(cfg: dict, where: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{where}{k}."))
        else:
            out[f"{where}{k}"] = v
    return out


def resume_changes(saved: dict, new: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Keys whose value differs between a checkpoint's config and a new one, as
    ``(unsafe, safe)`` dicts of ``key -> (saved value, new value)``; ``safe`` keys are
    those in ``NUMBER_FREE``. A key the saved config lacks (added since) counts as its
    default."""
    defaults = derive(copy.deepcopy(DEFAULTS), warn=False)  # no warnings about views nobody trains on
    old = flatten(with_defaults({k: v for k, v in saved.items() if k != RESUME_HISTORY}, defaults))
    new_flat = flatten({k: v for k, v in new.items() if k != RESUME_HISTORY})
    # schedule lengths compare in steps: 100 steps and 0.1 of a 1000-step run are the same schedule
    for flat in (old, new_flat):
        for key, least in SCHEDULE_KEYS.items():
            if key in flat:
                flat[key] = fraction_steps(flat[key], flat["train.steps"], least)
    unsafe, safe = {}, {}
    for key, value in new_flat.items():
        before = old.get(key, value)
        if same(before, value):
            continue
        (safe if number_free(key) else unsafe)[key] = (before, value)
    return unsafe, safe


def same(a: Any, b: Any) -> bool:
    """Equal as config values: 1 == 1.0, lists element by element, a bool only equal to itself."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def save(cfg: dict, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically (a temporary file renamed onto ``path``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    tmp.replace(path)


def get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        node = node[p]
    return node


def check_sections(items: list[str] | tuple[str, ...], sections: tuple[str, ...], command: str, why: str) -> None:
    """``--set`` items of a command that reads only ``sections`` of the config (``eval``,
    ``probe``): any other key is a ConfigError naming it, what may be set, and ``why``."""
    names = [f"{s}.*" for s in sections]
    allowed = " and ".join(names) if len(names) == 2 else ", ".join(names)
    for item in items:
        key = item.split("=", 1)[0].strip()
        if key.split(".", 1)[0] not in sections or "." not in key:
            raise ConfigError(f"{command} --set {key}: only {allowed} keys can be set ({why})")
