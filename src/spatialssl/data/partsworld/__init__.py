"""PartsWorld: the built-in procedural 3D parts-scene data set.

Every image shows one **compound object** (a category such as ``snowman`` or ``car``) built
from analytic primitives -- ellipsoids/spheres, oriented boxes, and capped frustums (which
cover cylinders and cones) -- standing on a textured ground plane under a sky gradient.
Scenes are rendered by vectorised ray casting in torch, batched over images x pixels x
primitives, on CPU or GPU:

* primary rays are culled against each primitive's bounding sphere with one batched matmul,
  the surviving (ray, primitive) pairs are intersected analytically, the nearest hit wins;
* shading is diffuse + ambient from one directional light, with shadows (a shadow ray per
  visible point, cast against the same primitives);
* the ground is a textured plane (checker / stripes / noise; the ``ood`` split uses rings /
  dots / waves) with distance fog towards the horizon colour.

Per image (see :class:`~spatialssl.data.canvases.CanvasSet`):

* ``images``: uint8 [N, 3, H, W] RGB;
* ``depth``: float32 [N, H, W], camera z (distance along the optical axis) in scene units,
  clipped to ``cfg.far``; sky pixels (and ground beyond ``far``) equal ``cfg.far``;
* ``semantic``: int64 [N, H, W], category id + 1 on the object, 0 elsewhere (ground, sky
  **and distractor primitives**);
* ``parts``: int64 [N, H, W], global part id (``meta["part_names"][id]``), 0 elsewhere
  (distractors included);
* ``labels``: int64 [N] category id; ``fine_labels``: int64 [N] global fine id
  ``category * VARIANTS + variant``.

Splits ``train``/``val``/``test`` share one appearance distribution; ``ood`` has the same
categories and variants under unseen part palettes, ground textures, lighting and skies.

Determinism: each image's scene is drawn from its own ``numpy`` generator seeded by
``(cfg.seed, split, index)`` (never global RNG state), so the scene of image ``i`` does not
depend on which other images are rendered. Rendering runs in chunks of ``cfg.chunk``
images; :func:`load` always generates a split in the same fixed chunk order, so the same
config gives byte-identical arrays on CPU.

The package, by concern: ``spec.py`` (the config, splits and generator version: the cache
key), ``scene.py`` (primitive rows, camera), ``render.py`` (ray casting and shading),
``templates.py`` (categories and variants), ``sampling.py`` (one scene per image); this file
renders splits, caches them and draws previews.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings

import numpy as np
import torch

from ...progress import bar as progress_bar
from ..canvases import CanvasSet
from .render import trace
from .sampling import sample_scenes
from .scene import (BOX, ELLIPSOID, FRUSTUM, NONE, Scene, look_at, make_scene, prim_row,  # noqa: F401 (API)
                    _AX_X, _AX_Z, _rx, _ry, _rz)
from .spec import GENERATOR_VERSION, SPLITS, _SPLIT_ID, PartsWorldConfig, _check_split  # noqa: F401 (API)
from .templates import CATEGORIES, FINE_NAMES, PART_NAMES, VARIANTS  # noqa: F401 (API)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------
# Public API: render, load, preview
# ----------------------------------------------------------------------------------------


def _meta(cfg: PartsWorldConfig, split: str) -> dict:
    return {
        "source": "partsworld", "split": split, "config": dataclasses.asdict(cfg),
        "config_hash": cfg.key(), "generator_version": GENERATOR_VERSION,
        "part_names": list(PART_NAMES), "far": float(cfg.far),
    }


def render(cfg: PartsWorldConfig, split: str, start: int, count: int, device: str | torch.device = "cpu") -> CanvasSet:
    """Render images ``start .. start+count-1`` of ``split``.

    Rendering runs in consecutive chunks of ``cfg.chunk`` images starting at ``start``.
    Each image's scene depends only on ``(cfg, split, index)``; the arrays are deterministic
    for a given ``(cfg, split, start, count)`` on CPU.

    Returns:
        A CanvasSet (CPU tensors): images uint8 [count, 3, S, S], depth float32 [count, S, S],
        semantic / parts int64 [count, S, S], labels / fine_labels int64 [count].
    """
    _check_split(split)
    if count <= 0:
        raise ValueError("render: count must be positive")
    out = _render_arrays(cfg, split, start, count, device)
    return _to_canvas(cfg, split, out)


def _render_arrays(cfg: PartsWorldConfig, split: str, start: int, count: int, device,
                   progress: bool = False, desc: str = "") -> dict[str, torch.Tensor]:
    n = count
    s = cfg.size
    images = torch.empty(n, 3, s, s, dtype=torch.uint8)
    depth = torch.empty(n, s, s, dtype=torch.float32)
    semantic = torch.empty(n, s, s, dtype=torch.uint8)
    parts = torch.empty(n, s, s, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    fine = torch.empty(n, dtype=torch.int64)
    chunk = max(1, int(cfg.chunk))
    bar = progress_bar(total=n, desc=desc or f"partsworld {split}", unit="img", leave=False, enabled=progress)
    with torch.no_grad():
        for a in range(0, n, chunk):
            c = min(chunk, n - a)
            sc, lab, fl = sample_scenes(cfg, split, start + a, c)
            r = trace(sc.to(device), s, cfg.far, cfg.shadows)
            images[a:a + c] = (r["rgb"] * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).cpu()
            depth[a:a + c] = r["depth"].cpu()
            semantic[a:a + c] = r["semantic"].to(torch.uint8).cpu()
            parts[a:a + c] = r["parts"].to(torch.uint8).cpu()
            labels[a:a + c] = torch.from_numpy(lab)
            fine[a:a + c] = torch.from_numpy(fl)
            bar.update(c)
    bar.close()
    return {"images": images, "depth": depth, "semantic": semantic, "parts": parts,
            "labels": labels, "fine_labels": fine}


def _to_canvas(cfg: PartsWorldConfig, split: str, arr: dict[str, torch.Tensor]) -> CanvasSet:
    return CanvasSet(
        images=arr["images"], labels=arr["labels"], fine_labels=arr["fine_labels"], depth=arr["depth"],
        semantic=arr["semantic"].long(), parts=arr["parts"].long(), class_names=list(CATEGORIES),
        fine_names=list(FINE_NAMES), meta=_meta(cfg, split),
    )


def default_cache_dir() -> str:
    """``$SPATIALSSL_CACHE`` if set, else ``~/.cache/spatialssl``."""
    env = os.environ.get("SPATIALSSL_CACHE")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "spatialssl")


def cache_path(split: str, cfg: PartsWorldConfig | None = None, cache_dir: str | None = None) -> str:
    """Path of the cache file of (cfg, split): ``<dir>/partsworld/<key>-<split>.pt``."""
    cfg = cfg or PartsWorldConfig()
    _check_split(split)
    return os.path.join(cache_dir or default_cache_dir(), "partsworld", f"{cfg.key()}-{split}.pt")


_ARRAYS = ("images", "depth", "semantic", "parts", "labels", "fine_labels")


def _digest(arr: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in _ARRAYS:
        t = arr[k].contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _save(path: str, cfg: PartsWorldConfig, split: str, arr: dict[str, torch.Tensor]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"header": {"version": GENERATOR_VERSION, "key": cfg.key(), "split": split,
                          "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
                          "shapes": json.dumps({k: list(arr[k].shape) for k in _ARRAYS}),
                          "sha256": _digest(arr)},
               **{k: arr[k] for k in _ARRAYS}}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _try_load(path: str, cfg: PartsWorldConfig, split: str) -> dict[str, torch.Tensor] | None:
    """The verified arrays of a cache file, or None (with a warning) if it is unusable."""
    if not os.path.exists(path):
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        hdr = payload["header"]
        arr = {k: payload[k] for k in _ARRAYS}
        if hdr["version"] != GENERATOR_VERSION or hdr["key"] != cfg.key() or hdr["split"] != split:
            raise ValueError("header does not match the requested config/split")
        n, s = cfg.n_for(split), cfg.size
        want = {"images": [n, 3, s, s], "depth": [n, s, s], "semantic": [n, s, s], "parts": [n, s, s],
                "labels": [n], "fine_labels": [n]}
        got = {k: list(arr[k].shape) for k in _ARRAYS}
        if got != want or json.loads(hdr["shapes"]) != want:
            raise ValueError(f"shapes {got} differ from the expected {want}")
        if _digest(arr) != hdr["sha256"]:
            raise ValueError("sha256 checksum mismatch")
        return arr
    except Exception as e:  # noqa: BLE001 -- any failure means: regenerate
        warnings.warn(f"partsworld: cache file {path} is corrupt or partial ({type(e).__name__}: {e}); "
                      f"regenerating it", RuntimeWarning, stacklevel=3)
        return None


def load(split: str, cfg: PartsWorldConfig | None = None, cache_dir: str | None = None,
         device: str | torch.device = "cpu", progress: bool = True) -> CanvasSet:
    """One PartsWorld split, generated once and cached on disk.

    The cache file is ``cache_path(split, cfg, cache_dir)``; it holds a header (generator
    version, config key, shapes, sha256 of the arrays) that is verified on every load. A
    missing, corrupt or partial file is (re)generated in fixed chunk order, written to a
    temporary file and renamed into place atomically.

    Args:
        split: ``train``, ``val``, ``test`` or ``ood``.
        cfg: generator config (default :class:`PartsWorldConfig`).
        cache_dir: cache root (default :func:`default_cache_dir`).
        device: where to render when generating (the result is always on CPU).
        progress: show a progress bar (``spatialssl.progress``) while generating.

    Returns:
        CanvasSet with images uint8 [N, 3, S, S], depth float32 [N, S, S], semantic / parts
        int64 [N, S, S], labels / fine_labels int64 [N].
    """
    cfg = cfg or PartsWorldConfig()
    _check_split(split)
    path = cache_path(split, cfg, cache_dir)
    arr = _try_load(path, cfg, split)
    if arr is None:
        t0 = time.time()
        arr = _render_arrays(cfg, split, 0, cfg.n_for(split), device, progress=progress)
        dt = time.time() - t0
        _save(path, cfg, split, arr)
        msg = f"partsworld: generated {split} {cfg.n_for(split)} imgs {cfg.size}px in {dt:.1f}s -> {path}"
        logger.info(msg)
    cs = _to_canvas(cfg, split, arr)
    cs.meta["cache_file"] = path
    return cs


def preview(out_png: str, cfg: PartsWorldConfig | None = None, split: str = "train", n: int = 16,
            cache_dir: str | None = None) -> str:
    """Write a grid of ``n`` samples: RGB | depth | semantic | parts, titled class/fine name.

    Renders the first ``n`` images of ``split`` directly (the same scenes as the cached
    split, without reading a possibly large cache file; ``cache_dir`` is accepted for API
    symmetry and not needed). Depth is shown per sample from its nearest to its 98th
    percentile non-sky value; label 0 (background) is black. Returns ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = cfg or PartsWorldConfig()
    _check_split(split)
    n = max(1, min(n, cfg.n_for(split)))
    cs = render(cfg, split, 0, n)
    per_row = 4 if n >= 4 else n
    rows = math.ceil(n / per_row)
    fig, axes = plt.subplots(rows, per_row * 4, figsize=(per_row * 4 * 1.5, rows * 1.75), squeeze=False)
    from matplotlib.colors import ListedColormap

    base = plt.get_cmap("tab20")(np.arange(20))
    lab_cmap = ListedColormap(np.vstack([[0, 0, 0, 1], base]))  # 0 (background) = black
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c0 = divmod(i, per_row)
        c0 *= 4
        axes[r, c0].imshow(cs.images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[r, c0].set_title(cs.fine_names[int(cs.fine_labels[i])], fontsize=7, loc="left")
        dep = cs.depth[i].numpy()
        near = dep[dep < cfg.far]
        lo, hi = (float(near.min()), float(np.percentile(near, 98))) if near.size else (0.0, cfg.far)
        axes[r, c0 + 1].imshow(dep, cmap="magma_r", vmin=lo, vmax=max(hi, lo + 1e-3), interpolation="nearest")
        axes[r, c0 + 1].set_title(f"depth {lo:.1f}-{hi:.1f}", fontsize=6)
        sem = cs.semantic[i].numpy()
        axes[r, c0 + 2].imshow(np.where(sem > 0, (sem - 1) % 20 + 1, 0), cmap=lab_cmap, vmin=0, vmax=20,
                               interpolation="nearest")
        axes[r, c0 + 2].set_title("semantic", fontsize=6)
        prt = cs.parts[i].numpy()
        axes[r, c0 + 3].imshow(np.where(prt > 0, (prt - 1) % 20 + 1, 0), cmap=lab_cmap, vmin=0, vmax=20,
                               interpolation="nearest")
        axes[r, c0 + 3].set_title("parts", fontsize=6)
    fig.suptitle(f"PartsWorld {split} ({cfg.size}px, key {cfg.key()})", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png

