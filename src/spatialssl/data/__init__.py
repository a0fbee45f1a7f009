"""Data sets as in-memory canvas sets (see ``canvases.CanvasSet``).

``load_split(data_cfg, split)`` is the one entry point the trainer and the evaluations
use: ``data.name: partsworld`` renders (once, cached) the built-in PartsWorld set;
``data.name: folder`` reads ``<root>/<split>`` in ImageFolder layout (or ``<root>`` itself
for ``train`` when it has no ``train`` folder), every split labelled by the train split's
class names; ``data.name: shards`` opens a folder prepared by
``spatialssl data prepare`` lazily (``shards.ShardSet``: same attributes, images decoded per
batch; ``select`` gives a lazy view of some rows, ``subset`` an in-memory ``CanvasSet``).
"""

from __future__ import annotations

from pathlib import Path

from .canvases import CanvasSet
from ..config import ConfigError
from ..errors import NotFound

SPLITS = ("train", "val", "test", "ood")


# the data keys that decide how PartsWorld draws an image (partsworld_config, grey_background);
# the rest of the section (sizes, seed, cache) decides which images and how many
RENDER_KEYS = ("distractors", "fill", "elevation", "background")


def partsworld_config(data_cfg: dict):
    from .partsworld import PartsWorldConfig

    n = data_cfg["n_eval"]
    return PartsWorldConfig(size=data_cfg["canvas_size"], n_train=data_cfg["n_train"], n_val=n, n_test=n,
                            n_ood=n, seed=data_cfg["seed"], distractors=data_cfg["distractors"],
                            fill_min=float(data_cfg["fill"][0]), fill_max=float(data_cfg["fill"][1]),
                            elev_min_deg=float(data_cfg["elevation"][0]), elev_max_deg=float(data_cfg["elevation"][1]))


def grey_background(ds: CanvasSet) -> CanvasSet:
    """``ds`` with every pixel off the object (sky, ground, shadows, distractors: semantic 0)
    set to mid grey (128): the background then carries no instance cue. Masks and depth are
    kept as rendered."""
    import dataclasses

    import torch

    images = torch.where(ds.semantic[:, None] > 0, ds.images, torch.full_like(ds.images[:1], 128))
    return dataclasses.replace(ds, images=images, meta={**ds.meta, "background": "grey"})


def train_folder(root: Path) -> tuple[Path, tuple[str, ...]]:
    """The train split's folder of a folder data set, and the sub-folder names there that
    are not classes: ``<root>/train``, or ``<root>`` itself when it has no ``train`` folder
    (its ``val``, ``test``, ``ood`` folders are then the other splits, not classes)."""
    if (root / "train").is_dir():
        return root / "train", ()
    return root, tuple(s for s in SPLITS if (root / s).is_dir())


def check_canvas(data_cfg: dict, ds) -> None:
    """Training on prepared shards: their canvas must be ``data.canvas_size``, which the views'
    checks (enlargement, fallback rates) and the presets assume; else a ValueError naming both.
    (Evaluations resize to their own input size and accept any canvas.)"""
    have = getattr(ds, "canvas_size", None)
    want = data_cfg.get("canvas_size")
    if data_cfg.get("name") == "shards" and want is not None and have is not None and int(want) != have:
        raise ConfigError(f"{data_cfg['root']} holds {have} px canvases but config key 'data.canvas_size' is "
                         f"{want}: set data.canvas_size={have}, or prepare the shards again with --canvas {want}")


HOLDOUT = "holdout"  # the validation split carved from train (data.holdout images)


def holdout_rows(n: int, k: int, labels) -> "torch.Tensor":
    """The ``k`` rows of an ``n``-image train split held out as the validation split: a
    stratified sample (``canvases.stratified_sample``) seeded by a fixed key, never by the
    run's seed, so every arm and seed of a study trains without, and validates on, the same
    images."""
    from .canvases import stratified_sample

    if k >= n:
        raise ConfigError(f"config key 'data.holdout' ({k}) must be smaller than the train split ({n} images)")
    return stratified_sample(n, k, labels, "data.holdout")


def load_split(data_cfg: dict, split: str, progress: bool = True):
    """One split of the configured data set: a CanvasSet (in memory) or a ShardSet (prepared shards).

    With ``data.holdout`` = k > 0, ``train`` is the train split less k images held out
    (``holdout_rows``) and ``holdout`` is those k: a validation split carved from the
    training images, which pretraining and probe-training never see and which is never the
    test split (the study picks its hyper-parameters on it)."""
    k = int(data_cfg.get("holdout", 0) or 0)
    if split == HOLDOUT and not k:
        raise ConfigError(f"split '{HOLDOUT}' needs config key 'data.holdout' > 0 (images of train held out)")
    if k and split in ("train", HOLDOUT):
        import torch

        ds = _load(data_cfg, "train", progress)
        rows = holdout_rows(len(ds), k, ds.labels)
        if split == "train":
            keep = torch.ones(len(ds), dtype=torch.bool)
            keep[rows] = False
            rows = keep.nonzero().flatten()
        return ds.select(rows) if hasattr(ds, "select") else ds.subset(rows)
    return _load(data_cfg, split, progress)


def _load(data_cfg: dict, split: str, progress: bool = True):
    name = data_cfg["name"]
    if name == "shards":
        from .shards import ShardSet

        if not data_cfg["root"]:
            raise ConfigError("config key 'data.root' must name a prepared shards folder when data.name is 'shards'")
        return ShardSet(data_cfg["root"], split)
    if name == "partsworld":
        from . import partsworld

        if split not in SPLITS:
            raise ConfigError(f"unknown PartsWorld split '{split}' (known: {', '.join(SPLITS)})")
        ds = partsworld.load(split, partsworld_config(data_cfg), cache_dir=data_cfg["cache_dir"] or None,
                             progress=progress)
        return grey_background(ds) if data_cfg["background"] == "grey" else ds
    if name == "folder":
        from . import folders

        if not data_cfg["root"]:
            raise ConfigError("config key 'data.root' must name a folder when data.name is 'folder'")
        root = Path(data_cfg["root"])
        train, ignore = train_folder(root)
        path = train if split == "train" else root / split
        if split != "train" and not path.is_dir():
            raise NotFound(f"data.root {root} has no '{split}' folder (expected {path})")
        # every split is labelled by the train split's class names (a split lacking a class
        # must not shift the labels of the others)
        classes = folders.class_folders(train, ignore)
        return folders.load_classification(str(path), canvas_size=data_cfg["canvas_size"],
                                           on_error=data_cfg["on_error"], progress=progress, classes=classes,
                                           ignore=ignore if split == "train" else (),
                                           max_pixels=data_cfg.get("max_pixels", folders.DEFAULT_MAX_PIXELS))
    raise ConfigError(f"config key 'data.name' must be partsworld, folder or shards, got {name!r}")
