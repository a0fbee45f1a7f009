"""Data sets as in-memory canvas sets (see ``canvases.CanvasSet``).

``load_split(data_cfg, split)`` is the one entry point the trainer and the evaluations
use: ``data.name: partsworld`` renders (once, cached) the built-in PartsWorld set;
``data.name: folder`` reads ``<root>/<split>`` in ImageFolder layout (or ``<root>`` itself
for ``train`` when it has no split folders); ``data.name: shards`` opens a folder prepared by
``spatialssl data prepare`` lazily (``shards.ShardSet``: same attributes, images decoded per
batch; ``subset`` gives an in-memory ``CanvasSet``).
"""

from __future__ import annotations

from pathlib import Path

from .canvases import CanvasSet

SPLITS = ("train", "val", "test", "ood")


def partsworld_config(data_cfg: dict):
    from .partsworld import PartsWorldConfig

    n = data_cfg["n_eval"]
    return PartsWorldConfig(size=data_cfg["canvas_size"], n_train=data_cfg["n_train"], n_val=n, n_test=n,
                            n_ood=n, seed=data_cfg["seed"])


def load_split(data_cfg: dict, split: str, progress: bool = True):
    """One split of the configured data set: a CanvasSet (in memory) or a ShardSet (prepared shards)."""
    name = data_cfg["name"]
    if name == "shards":
        from .shards import ShardSet

        if not data_cfg["root"]:
            raise ValueError("config key 'data.root' must name a prepared shards folder when data.name is 'shards'")
        return ShardSet(data_cfg["root"], split)
    if name == "partsworld":
        from . import partsworld

        if split not in SPLITS:
            raise ValueError(f"unknown PartsWorld split '{split}' (known: {', '.join(SPLITS)})")
        return partsworld.load(split, partsworld_config(data_cfg), cache_dir=data_cfg["cache_dir"] or None,
                               progress=progress)
    if name == "folder":
        from . import folders

        if not data_cfg["root"]:
            raise ValueError("config key 'data.root' must name a folder when data.name is 'folder'")
        root = Path(data_cfg["root"])
        path = root / split
        if not path.is_dir():
            if split != "train":
                raise FileNotFoundError(f"data.root {root} has no '{split}' folder (expected {path})")
            path = root
        return folders.load_classification(str(path), canvas_size=data_cfg["canvas_size"],
                                           on_error=data_cfg["on_error"], progress=progress)
    raise ValueError(f"config key 'data.name' must be partsworld, folder or shards, got {name!r}")
