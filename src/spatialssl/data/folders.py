"""Users' own image folders, decoded once into fixed-size uint8 canvases (a ``CanvasSet``).

Four layouts:

- :func:`load_classification` -- ImageFolder layout ``root/<class>/<...>/<image>``; class ids
  follow the sorted class-folder names.
- :func:`load_segmentation` -- ``images/<rel>/<stem>.<ext>`` plus ``masks/<rel>/<stem>.png``
  (single-channel or palette PNG; the pixel value is the class id, 0 = background).
- :func:`load_depth` -- ``images/<rel>/<stem>.<ext>`` plus ``depth/<rel>/<stem>.npy`` (float) or
  ``depth/<rel>/<stem>.png`` (16-bit; metres = value * ``depth_scale``). When both exist the
  ``.npy`` wins.
- :func:`load_unlabelled` -- every image under ``root`` (recursively), no labels.

Canvas rule (all loaders): the image is decoded with PIL, converted to RGB (alpha dropped,
palette and grey expanded, 16-bit grey scaled to 8 bits), its **shorter side resized to
``canvas_size``** (bilinear, antialiased) and the result **centre-cropped** to a
``canvas_size`` x ``canvas_size`` square. Masks and depth maps get the same resize (nearest
neighbour, so class ids and invalid-depth zeros are never blended) and the same crop. EXIF
orientation is not applied (masks carry none, and neither does torchvision's ImageFolder).

Which files are considered: files whose extension (any case) is in :data:`IMAGE_EXTENSIONS`;
hidden files and folders (name starting with ``.``) are ignored, and so are other
extensions (a ``notes.txt`` beside the images is not an error). A file with an image
extension that cannot be decoded -- truncated, empty, or not an image at all (a text file
named ``x.jpg``) -- is **skipped and counted**: a warning names it
(``spatialssl: skipped unreadable image: PATH (reason)``, greppable) and its path is listed in
``meta["skipped"]`` (with reasons in ``meta["skip_reasons"]``). With ``on_error="raise"`` the
first such file raises a ``ValueError`` naming it instead. For segmentation and depth an
image without its mask/depth file is handled the same way (skipped with
``spatialssl: skipped image without mask/depth: ...``, or ``ValueError`` with
``on_error="raise"``); an unreadable mask/depth file also skips (or raises for) its image.

Always errors, whatever ``on_error``: a missing folder (``FileNotFoundError`` naming it), a
data set with no readable image (``ValueError`` naming the folder), a mask or depth map whose
size differs from its image (``ValueError`` naming both files), two images with the same
stem in one folder (ambiguous pairing; ``ValueError`` naming both).

Decoding runs on a thread pool (PIL releases the GIL while decoding) with a tqdm progress
bar; the output order is the sorted path order, independent of thread timing.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .canvases import CanvasSet

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_ON_ERROR = ("skip", "raise")

__all__ = [
    "IMAGE_EXTENSIONS",
    "load_classification",
    "load_segmentation",
    "load_depth",
    "load_unlabelled",
]


# --------------------------------------------------------------------------- file discovery


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _list_images(root: Path) -> list[Path]:
    """Every non-hidden file with an image extension under ``root``, sorted, recursively."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for f in filenames:
            if not _is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS):
                out.append(Path(dirpath) / f)
    return sorted(out)


def _check_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"spatialssl: {what} folder not found: {p}")
    return p


def _check_args(canvas_size: int, on_error: str) -> None:
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
    if int(canvas_size) < 1:
        raise ValueError(f"canvas_size must be a positive integer, got {canvas_size}")


# --------------------------------------------------------------------------- decoding


class _Unreadable(Exception):
    """A file that cannot be decoded (skipped or raised by ``on_error``)."""


class _SizeMismatch(Exception):
    """A mask/depth whose size differs from its image (always an error)."""


def _canvas_geometry(w: int, h: int, size: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Resized (w, h) with the shorter side == size, and the centre-crop box."""
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    return (nw, nh), (left, top, left + size, top + size)


def _open(path: Path) -> Image.Image:
    try:
        if path.stat().st_size == 0:
            raise _Unreadable("empty file")
        im = Image.open(path)
        im.load()  # forces a full decode: truncated files fail here
        return im
    except _Unreadable:
        raise
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise _Unreadable(f"{type(e).__name__}: {e}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def _decode_image(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 [3, size, size] canvas and the original (w, h)."""
    im = _open(path)
    w, h = im.size
    try:
        rgb = _to_rgb(im)
        new, box = _canvas_geometry(w, h, size)
        rgb = rgb.resize(new, Image.BILINEAR).crop(box)
        arr = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except Exception as e:
        raise _Unreadable(f"{type(e).__name__}: {e}") from None
    return np.ascontiguousarray(arr), (w, h)


def _resize_nearest(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape
    new, (l, t, r, b) = _canvas_geometry(w, h, size)
    # nearest neighbour on the index grid, the same mapping as PIL's NEAREST (pixel centres)
    ys = np.minimum(((np.arange(new[1]) + 0.5) * h / new[1]).astype(np.int64), h - 1)[t:b]
    xs = np.minimum(((np.arange(new[0]) + 0.5) * w / new[0]).astype(np.int64), w - 1)[l:r]
    return a[ys[:, None], xs[None, :]]


def _decode_mask(path: Path) -> np.ndarray:
    im = _open(path)
    if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise _Unreadable(
            f"mask must be a single-channel or palette PNG (class id per pixel), got mode {im.mode}"
        )
    return np.asarray(im).astype(np.int64)


def _decode_depth(path: Path, depth_scale: float) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:
            raise _Unreadable(f"{type(e).__name__}: {e}") from None
        a = np.squeeze(np.asarray(a))
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise _Unreadable(f"depth .npy must hold a numeric [H, W] array, got {a.dtype} {a.shape}")
        return a.astype(np.float32)
    im = _open(path)
    if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "F"):
        raise _Unreadable(f"depth PNG must be single-channel (16-bit), got mode {im.mode}")
    return (np.asarray(im).astype(np.float64) * depth_scale).astype(np.float32)


# --------------------------------------------------------------------------- the shared loop


@dataclass
class _Item:
    image: Path
    target: Path | None = None  # mask or depth file


def _warn_skip(path: Path, reason: str, kind: str = "unreadable image") -> None:
    warnings.warn(f"spatialssl: skipped {kind}: {path} ({reason})", stacklevel=3)


def _load(
    items: list[_Item],
    root: Path,
    canvas_size: int,
    on_error: str,
    progress: bool,
    target: str | None,  # None, "mask" or "depth"
    depth_scale: float = 1.0,
    pre_skipped: dict[str, str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[int], dict[str, str]]:
    n = len(items)
    images = torch.empty((n, 3, canvas_size, canvas_size), dtype=torch.uint8)
    tdtype = torch.int64 if target == "mask" else torch.float32
    targets = torch.empty((n, canvas_size, canvas_size), dtype=tdtype) if target else None

    def work(i: int):
        it = items[i]
        try:
            arr, (w, h) = _decode_image(it.image, canvas_size)
        except _Unreadable as e:
            return i, it.image, str(e)
        if target is not None:
            try:
                t = _decode_mask(it.target) if target == "mask" else _decode_depth(it.target, depth_scale)
            except _Unreadable as e:
                return i, it.target, f"{target} file: {e}"
            if t.shape != (h, w):
                raise _SizeMismatch(
                    f"spatialssl: {target} size {t.shape[1]}x{t.shape[0]} (WxH) differs from its image "
                    f"size {w}x{h}: {target} {it.target}, image {it.image}"
                )
            targets[i] = torch.from_numpy(np.ascontiguousarray(_resize_nearest(t, canvas_size)))
        images[i] = torch.from_numpy(arr)
        return i, None, None

    skipped: dict[str, str] = dict(pre_skipped or {})
    ok: list[int] = []
    workers = max(1, min(8, (os.cpu_count() or 1) * 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(work, range(n))
        bar = tqdm(results, total=n, desc=f"decoding {root}", disable=not progress, unit="img")
        try:
            for i, bad, reason in bar:  # map() yields in submission order: deterministic
                if bad is None:
                    ok.append(i)
                    continue
                if on_error == "raise":
                    raise ValueError(f"spatialssl: unreadable file: {bad} ({reason})")
                skipped[str(bad)] = reason
                _warn_skip(bad, reason)
        except _SizeMismatch as e:
            pool.shutdown(wait=True, cancel_futures=True)  # do not decode the rest first
            raise ValueError(str(e)) from None
        except ValueError:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
    if not ok:
        raise ValueError(
            f"spatialssl: no readable image in {root} ({len(items)} candidate files, "
            f"{len(skipped)} skipped; extensions considered: {', '.join(IMAGE_EXTENSIONS)})"
        )
    if skipped:
        warnings.warn(
            f"spatialssl: skipped {len(skipped)} file(s) under {root}; see CanvasSet.meta['skipped']",
            stacklevel=3,
        )
    idx = torch.tensor(ok, dtype=torch.long)
    if len(ok) < n:
        images = images[idx]
        targets = targets[idx] if targets is not None else None
    return images, targets, ok, skipped


def _meta(kind: str, root: Path, canvas_size: int, files: list[Path], skipped: dict[str, str], **extra) -> dict:
    return dict(
        source="folder",
        kind=kind,
        root=str(root),
        canvas_size=canvas_size,
        resize="shorter side to canvas_size (bilinear, antialiased), centre crop; masks/depth nearest",
        files=[str(p) for p in files],
        skipped=list(skipped),
        skip_reasons=dict(skipped),
        **extra,
    )


def _pair(images: Path, targets: Path, exts: tuple[str, ...], what: str, on_error: str):
    """Pair every image under ``images`` with ``targets/<rel stem><ext>``."""
    files = _list_images(images)
    if not files:
        raise ValueError(
            f"spatialssl: no image files in {images} (extensions considered: {', '.join(IMAGE_EXTENSIONS)})"
        )
    by_stem: dict[Path, Path] = {}
    for f in files:
        stem = f.relative_to(images).with_suffix("")
        if stem in by_stem:
            raise ValueError(
                f"spatialssl: two images share the stem {stem} so the {what} pairing is ambiguous: "
                f"{by_stem[stem]} and {f}"
            )
        by_stem[stem] = f
    items, missing = [], {}
    for stem, f in by_stem.items():
        cand = [targets / (str(stem) + e) for e in exts]
        hit = next((c for c in cand if c.is_file()), None)
        if hit is None:
            reason = f"no {what} file {' or '.join(str(c) for c in cand)}"
            if on_error == "raise":
                raise ValueError(f"spatialssl: image without {what}: {f} ({reason})")
            missing[str(f)] = reason
            _warn_skip(f, reason, kind=f"image without {what}")
            continue
        items.append(_Item(f, hit))
    return items, missing


# --------------------------------------------------------------------------- public loaders


def load_classification(
    root: str, canvas_size: int = 256, on_error: str = "skip", progress: bool = True
) -> CanvasSet:
    """ImageFolder layout ``root/<class>/**/<image>``; labels = index in the sorted class names.

    Every non-hidden sub-folder of ``root`` is a class (kept even if it has no readable
    image, so ids match the folder names; a warning says so). Files directly in ``root``
    are ignored. See the module docstring for the canvas rule and bad-file handling.
    """
    _check_args(canvas_size, on_error)
    rootp = _check_dir(root, "classification")
    classes = sorted(d.name for d in rootp.iterdir() if d.is_dir() and not _is_hidden(d.name))
    if not classes:
        raise ValueError(f"spatialssl: no class folders in {rootp} (expected root/<class>/<image>)")
    items, labels = [], []
    for ci, c in enumerate(classes):
        for f in _list_images(rootp / c):
            items.append(_Item(f))
            labels.append(ci)
    if not items:
        raise ValueError(f"spatialssl: no image files in the class folders of {rootp}")
    images, _, ok, skipped = _load(items, rootp, canvas_size, on_error, progress, None)
    lab = torch.tensor(labels, dtype=torch.int64)[torch.tensor(ok, dtype=torch.long)]
    counts = torch.bincount(lab, minlength=len(classes))
    for c, k in zip(classes, counts.tolist()):
        if k == 0:
            warnings.warn(f"spatialssl: class folder {rootp / c} has no readable image", stacklevel=2)
    return CanvasSet(
        images=images, labels=lab, class_names=classes,
        meta=_meta("classification", rootp, canvas_size, [items[i].image for i in ok], skipped,
                   class_counts=dict(zip(classes, counts.tolist()))),
    )


def load_segmentation(
    images: str, masks: str, canvas_size: int = 256, on_error: str = "skip", progress: bool = True
) -> CanvasSet:
    """Images plus PNG masks with the same relative stem; ``semantic`` = mask value (0 = background).

    ``labels`` is None. ``class_names`` is left empty (ids are whatever the masks hold);
    ``meta["mask_values"]`` lists the ids seen. A mask whose size differs from its image is a
    ``ValueError`` naming both files.
    """
    _check_args(canvas_size, on_error)
    ip, mp = _check_dir(images, "images"), _check_dir(masks, "masks")
    items, missing = _pair(ip, mp, (".png", ".PNG"), "mask", on_error)
    if not items:
        raise ValueError(f"spatialssl: no image in {ip} has a mask in {mp}")
    imgs, sem, ok, skipped = _load(items, ip, canvas_size, on_error, progress, "mask", pre_skipped=missing)
    return CanvasSet(
        images=imgs, semantic=sem,
        meta=_meta("segmentation", ip, canvas_size, [items[i].image for i in ok], skipped,
                   masks=str(mp), mask_values=torch.unique(sem).tolist()),
    )


def load_depth(
    images: str,
    depth: str,
    canvas_size: int = 256,
    on_error: str = "skip",
    depth_scale: float = 1.0,
    progress: bool = True,
) -> CanvasSet:
    """Images plus depth maps with the same relative stem: ``.npy`` float or 16-bit ``.png``.

    Depth = stored value * ``depth_scale`` (e.g. 0.001 for millimetre PNGs), float32; resized
    with nearest neighbour so invalid zeros are never blended into valid depth.
    """
    _check_args(canvas_size, on_error)
    ip, dp = _check_dir(images, "images"), _check_dir(depth, "depth")
    items, missing = _pair(ip, dp, (".npy", ".png", ".PNG"), "depth", on_error)
    if not items:
        raise ValueError(f"spatialssl: no image in {ip} has a depth map in {dp}")
    imgs, dep, ok, skipped = _load(
        items, ip, canvas_size, on_error, progress, "depth", depth_scale=float(depth_scale), pre_skipped=missing
    )
    return CanvasSet(
        images=imgs, depth=dep,
        meta=_meta("depth", ip, canvas_size, [items[i].image for i in ok], skipped,
                   depth=str(dp), depth_scale=float(depth_scale)),
    )


def load_unlabelled(
    root: str, canvas_size: int = 256, on_error: str = "skip", progress: bool = True
) -> CanvasSet:
    """Every image under ``root`` (recursively, sorted); labels None."""
    _check_args(canvas_size, on_error)
    rootp = _check_dir(root, "image")
    files = _list_images(rootp)
    if not files:
        raise ValueError(
            f"spatialssl: no image files in {rootp} (extensions considered: {', '.join(IMAGE_EXTENSIONS)})"
        )
    imgs, _, ok, skipped = _load([_Item(f) for f in files], rootp, canvas_size, on_error, progress, None)
    return CanvasSet(
        images=imgs, meta=_meta("unlabelled", rootp, canvas_size, [files[i] for i in ok], skipped)
    )
