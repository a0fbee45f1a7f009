"""What changes PartsWorld's data: the config, the splits, the generator version (the cache key)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# the cache key covers the generator's own source (every file of this package), so an edit
# to it (shapes, colours, camera, labels) is never served images cached by an older version
_SOURCE_HASH = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))).hexdigest()[:12]
GENERATOR_VERSION = f"partsworld-3+{_SOURCE_HASH}"
SPLITS = ("train", "val", "test", "ood")
_SPLIT_ID = {s: i for i, s in enumerate(SPLITS)}


@dataclass
class PartsWorldConfig:
    """Everything that changes the generated data; all of it is hashed into the cache key.

    Attributes:
        size: image side in pixels (square images).
        n_train, n_val, n_test, n_ood: images per split.
        seed: master seed; image ``i`` of split ``s`` is drawn from ``(seed, s, i)``.
        distractors: maximum number of distractor primitives per image (0 disables them).
        shadows: cast shadow rays.
        fov_deg: vertical field of view of the pinhole camera.
        fill_min, fill_max: the object's bounding sphere spans this fraction of the frame.
        elev_min_deg, elev_max_deg: camera elevation range.
        far: depth of the sky and clip value of the depth maps (scene units).
        chunk: images rendered per batch (fixed, so generation order is fixed).
    """

    size: int = 64
    n_train: int = 20000
    n_val: int = 2000
    n_test: int = 2000
    n_ood: int = 2000
    seed: int = 0
    distractors: int = 2
    shadows: bool = True
    fov_deg: float = 40.0
    fill_min: float = 0.65
    fill_max: float = 0.95
    elev_min_deg: float = 8.0
    elev_max_deg: float = 40.0
    far: float = 30.0
    chunk: int = 128

    def n_for(self, split: str) -> int:
        """Number of images of ``split``."""
        _check_split(split)
        return int(getattr(self, f"n_{split}"))

    def key(self) -> str:
        """Short hash of the config and the generator version (the cache key)."""
        blob = json.dumps({"v": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_split(split: str) -> None:
    if split not in _SPLIT_ID:
        raise ValueError(f"unknown PartsWorld split {split!r}; expected one of {SPLITS}")
