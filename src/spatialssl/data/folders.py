"""Users' own image folders, decoded once into fixed-size uint8 canvases (a ``CanvasSet``).

Four layouts:

- :func:`load_classification` -- ImageFolder layout ``root/<class>/<...>/<image>``; class ids
  follow the sorted class-folder names, or a given class list (the train split's: every
  other split is labelled by train's class names, see :func:`load_classification`).
- :func:`load_segmentation` -- ``images/<rel>/<stem>.<ext>`` plus ``masks/<rel>/<stem>.png``
  (single-channel or palette PNG; the pixel value is the class id, 0 = background).
- :func:`load_depth` -- ``images/<rel>/<stem>.<ext>`` plus ``depth/<rel>/<stem>.npy`` (float) or
  ``depth/<rel>/<stem>.png`` (16-bit; metres = value * ``depth_scale``). When both exist the
  ``.npy`` wins.
- :func:`load_unlabelled` -- every image under ``root`` (recursively), no labels.

Canvas rule (all loaders): the image is decoded with PIL, converted to RGB (alpha dropped,
palette and grey expanded, 16-bit grey scaled to 8 bits, 32-bit float grey read as [0, 1]
when its maximum is <= 1, else as [0, 255]), its **shorter side resized to
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

Images larger than ``max_pixels`` (width x height; default 64 megapixels, ``data.max_pixels``;
0 = no limit) are refused **before decoding** (PIL reads the size from the header) and
handled like unreadable files, naming the file and its size: a 13 KB PNG can declare
12000 x 9000 pixels and would otherwise take 1.5 GB to decode. PIL's own hard limit
(``Image.MAX_IMAGE_PIXELS`` x 2, about 179 megapixels) applies as well.

Folder walks follow symbolic links to folders, but read each real folder once: a link to
a folder already read, or to one that contains it (a loop: ``ln -s .. cat/loop``), is
skipped with a warning naming the link (``spatialssl: skipped symlink ...``).

Always errors, whatever ``on_error``: a missing folder (``FileNotFoundError`` naming it), a
data set with no readable image (``ValueError`` naming the folder), a mask or depth map whose
size differs from its image (``ValueError`` naming both files), two images with the same
stem in one folder (ambiguous pairing; ``ValueError`` naming both).

Decoding runs on a thread pool (PIL releases the GIL while decoding) with a progress
bar (``spatialssl.progress``); the output order is the sorted path order, independent of thread timing. At most
:data:`DECODE_PIXELS_IN_FLIGHT` pixels are decoded at once across the threads (a large
image waits for the others), which bounds the memory decoding takes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..progress import bar as progress_bar
from .canvases import CanvasSet
from ..errors import NotFound, UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_ON_ERROR = ("skip", "raise")
DEFAULT_MAX_PIXELS = 64_000_000  # config.DEFAULTS["data"]["max_pixels"]
DECODE_PIXELS_IN_FLIGHT = 128_000_000  # ~0.4 GB of RGB being decoded at once, whatever the thread count

__all__ = [
    "IMAGE_EXTENSIONS",
    "load_classification",
    "load_segmentation",
    "load_depth",
    "load_unlabelled",
    "class_folders",
    # the per-file rules, shared with data.shards (prepare): listing, pairing, decoding, sizing
    "list_images",
    "check_dir",
    "pair_targets",
    "Unreadable",
    "decode_image",
    "decode_mask",
    "decode_depth",
    "resize_nearest",
]


# --------------------------------------------------------------------------- file discovery


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_images(root: Path, visited: set[str] | None = None) -> list[Path]:
    """Every non-hidden file with an image extension under ``root``, sorted, recursively.

    Links to folders are followed, each real folder at most once: a link to a folder
    already walked (``visited``: real paths, shared by the caller across walks) or to a
    folder that contains ``root`` (a loop) is skipped with a warning naming the link.
    """
    visited = set() if visited is None else visited
    root_real = os.path.realpath(root)
    visited.add(root_real)

    def unreadable(e: OSError) -> None:
        warnings.warn(f"spatialssl: skipped unreadable folder: {e.filename} ({e.strerror})", stacklevel=4)

    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        keep = []
        for d in sorted(dirnames):
            if _is_hidden(d):
                continue
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if os.path.commonpath([real, root_real]) == real:
                warnings.warn(f"spatialssl: skipped symlink loop: {full} -> {real} (a folder that contains it)",
                              stacklevel=3)
                continue
            if real in visited:
                warnings.warn(f"spatialssl: skipped symlink to a folder already read: {full} -> {real}",
                              stacklevel=3)
                continue
            visited.add(real)
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if not _is_hidden(f) and f.lower().endswith(IMAGE_EXTENSIONS):
                out.append(Path(dirpath) / f)
    return sorted(out)


def class_folders(root: str | os.PathLike, ignore: tuple[str, ...] = ()) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``root`` (the class names of an
    ImageFolder layout), without those in ``ignore``."""
    rootp = check_dir(root, "classification")
    return sorted(d.name for d in rootp.iterdir() if d.is_dir() and not _is_hidden(d.name) and d.name not in ignore)


def check_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder that exists (``NotFound`` naming ``what`` otherwise)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise NotFound(f"spatialssl: {what} folder not found: {p}")
    return p


def _check_args(canvas_size: int, on_error: str, max_pixels: int = 0) -> None:
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
    if int(canvas_size) < 1:
        raise ValueError(f"canvas_size must be a positive integer, got {canvas_size}")
    if int(max_pixels) < 0:
        raise ValueError(f"max_pixels must be >= 0 (0 = no limit), got {max_pixels}")


# --------------------------------------------------------------------------- decoding


class Unreadable(Exception):
    """A file that cannot be decoded (skipped or raised by ``on_error``)."""


class _SizeMismatch(Exception):
    """A mask/depth whose size differs from its image (always an error)."""


def _canvas_geometry(w: int, h: int, size: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Resized (w, h) with the shorter side == size, and the centre-crop box."""
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    return (nw, nh), (left, top, left + size, top + size)


class _PixelGate:
    """At most ``total`` pixels decoded at once across threads; an image larger than
    ``total`` waits until it is alone. Hand-written: concurrent.futures bounds tasks, not
    their size."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self.cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        n = min(pixels, self.total)
        with self.cond:
            self.cond.wait_for(lambda: self.used + n <= self.total)
            self.used += n
        try:
            yield
        finally:
            with self.cond:
                self.used -= n
                self.cond.notify_all()


_GATE = _PixelGate(DECODE_PIXELS_IN_FLIGHT)


def _open(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, load: bool = True) -> Image.Image:
    """``Image.open`` with the size checked against ``max_pixels`` before any decoding;
    ``load`` decodes it (truncated files fail there)."""
    try:
        if path.stat().st_size == 0:
            raise Unreadable("empty file")
        im = Image.open(path)  # reads the header only
    except Unreadable:
        raise
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise Unreadable(f"{type(e).__name__}: {e}") from None
    w, h = im.size
    if max_pixels and w * h > max_pixels:
        raise Unreadable(f"{w}x{h} pixels ({w * h / 1e6:.0f} megapixels) is more than data.max_pixels="
                          f"{max_pixels}; not decoded")
    if load:
        with _GATE.hold(w * h):
            _decode(im)
    return im


def _decode(im: Image.Image) -> None:
    try:
        im.load()  # forces a full decode: truncated files fail here
    except Exception as e:
        raise Unreadable(f"{type(e).__name__}: {e}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":  # float images: [0, 1] (the usual float convention) unless their values say otherwise
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
            top = 1.0 if a.max() <= 1.0 else 255.0 if a.max() <= 255.0 else 65535.0
        else:
            top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def decode_image(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 [3, size, size] canvas and the original (w, h)."""
    im = _open(path, max_pixels, load=False)
    w, h = im.size
    with _GATE.hold(w * h):  # decoding, conversion and resizing hold the full-size image
        _decode(im)
        try:
            rgb = _to_rgb(im)
            new, box = _canvas_geometry(w, h, size)
            rgb = rgb.resize(new, Image.BILINEAR).crop(box)
            arr = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        except Exception as e:
            raise Unreadable(f"{type(e).__name__}: {e}") from None
    return np.ascontiguousarray(arr), (w, h)


def resize_nearest(a: np.ndarray, size: int) -> np.ndarray:
    """A target map [H, W] onto the canvas of ``size`` px by the images' rule, nearest neighbour."""
    h, w = a.shape
    new, (l, t, r, b) = _canvas_geometry(w, h, size)
    # nearest neighbour on the index grid, the same mapping as PIL's NEAREST (pixel centres)
    ys = np.minimum(((np.arange(new[1]) + 0.5) * h / new[1]).astype(np.int64), h - 1)[t:b]
    xs = np.minimum(((np.arange(new[0]) + 0.5) * w / new[0]).astype(np.int64), w - 1)[l:r]
    return a[ys[:, None], xs[None, :]]


def decode_mask(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A single-channel class-index mask [H, W] (``Unreadable`` if it is not one)."""
    im = _open(path, max_pixels)
    if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise Unreadable(
            f"mask must be a single-channel or palette PNG (class id per pixel), got mode {im.mode}"
        )
    return np.asarray(im).astype(np.int64)


def decode_depth(path: Path, depth_scale: float, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A depth map [H, W] from ``.npy`` or a 16-bit PNG (``Unreadable`` if it is not one)."""
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:
            raise Unreadable(f"{type(e).__name__}: {e}") from None
        a = np.squeeze(np.asarray(a))
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
            raise Unreadable(f"depth .npy must hold a numeric [H, W] array, got {a.dtype} {a.shape}")
        return a.astype(np.float32)
    im = _open(path, max_pixels)
    if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "F"):
        raise Unreadable(f"depth PNG must be single-channel (16-bit), got mode {im.mode}")
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
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor | None, list[int], dict[str, str]]:
    n = len(items)
    images = torch.empty((n, 3, canvas_size, canvas_size), dtype=torch.uint8)
    tdtype = torch.int64 if target == "mask" else torch.float32
    targets = torch.empty((n, canvas_size, canvas_size), dtype=tdtype) if target else None

    def work(i: int):
        it = items[i]
        try:
            arr, (w, h) = decode_image(it.image, canvas_size, max_pixels)
        except Unreadable as e:
            return i, it.image, str(e)
        if target is not None:
            try:
                t = (decode_mask(it.target, max_pixels) if target == "mask"
                     else decode_depth(it.target, depth_scale, max_pixels))
            except Unreadable as e:
                return i, it.target, f"{target} file: {e}"
            if t.shape != (h, w):
                raise _SizeMismatch(
                    f"spatialssl: {target} size {t.shape[1]}x{t.shape[0]} (WxH) differs from its image "
                    f"size {w}x{h}: {target} {it.target}, image {it.image}"
                )
            targets[i] = torch.from_numpy(np.ascontiguousarray(resize_nearest(t, canvas_size)))
        images[i] = torch.from_numpy(arr)
        return i, None, None

    skipped: dict[str, str] = dict(pre_skipped or {})
    ok: list[int] = []
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool, warnings.catch_warnings():
        # PIL's own bomb warning names no file; sizes are checked against max_pixels instead
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        results = pool.map(work, range(n))
        bar = progress_bar(results, total=n, desc=f"decoding {root}", enabled=progress, unit="img")
        try:
            for i, bad, reason in bar:  # map() yields in submission order: deterministic
                if bad is None:
                    ok.append(i)
                    continue
                if on_error == "raise":
                    raise UserError(f"spatialssl: unreadable file: {bad} ({reason})")
                skipped[str(bad)] = reason
                _warn_skip(bad, reason)
        except _SizeMismatch as e:
            pool.shutdown(wait=True, cancel_futures=True)  # do not decode the rest first
            raise UserError(str(e)) from None
        except ValueError:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
    if not ok:
        raise UserError(
            f"spatialssl: no readable image in {root} ({len(items)} candidate files, "
            f"{len(skipped)} skipped; extensions considered: {', '.join(IMAGE_EXTENSIONS)})"
        )
    if skipped:
        warnings.warn(
            f"spatialssl: skipped {len(skipped)} unreadable file(s) under {root}, e.g. "
            f"{'; '.join(f'{p} ({r})' for p, r in list(skipped.items())[:3])}; a pretrain lists them all in its run "
            f"folder's skipped_files.txt (data.on_error=raise fails on the first instead)",
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


def pair_targets(images: Path, targets: Path, exts: tuple[str, ...], what: str, on_error: str):
    """Pair every image under ``images`` with ``targets/<rel stem><ext>``."""
    files = list_images(images)
    if not files:
        raise UserError(
            f"spatialssl: no image files in {images} (extensions considered: {', '.join(IMAGE_EXTENSIONS)})"
        )
    by_stem: dict[Path, Path] = {}
    for f in files:
        stem = f.relative_to(images).with_suffix("")
        if stem in by_stem:
            raise UserError(
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
                raise UserError(f"spatialssl: image without {what}: {f} ({reason})")
            missing[str(f)] = reason
            _warn_skip(f, reason, kind=f"image without {what}")
            continue
        items.append(_Item(f, hit))
    return items, missing


# --------------------------------------------------------------------------- public loaders


def load_classification(
    root: str, canvas_size: int = 256, on_error: str = "skip", progress: bool = True,
    classes: list[str] | None = None, ignore: tuple[str, ...] = (), max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CanvasSet:
    """ImageFolder layout ``root/<class>/**/<image>``; labels = index in the class list.

    Args:
        classes: the class list labels index into (the train split's, so that every split
            of a data set labels a class alike). Default: the sorted sub-folder names of
            ``root``. With a list, each class folder of ``root`` must be in it (a folder
            that is not is a ``ValueError`` naming it: its images have no train label);
            classes without a folder here are fine (a warning names them).
        ignore: sub-folder names that are not classes (e.g. the other splits' folders when
            ``root`` is itself the train split).
        max_pixels: larger images are refused before decoding (see the module docstring).

    Every non-hidden sub-folder of ``root`` is a class (kept even if it has no readable
    image, so ids match the folder names; a warning says so). Files directly in ``root``
    are ignored. See the module docstring for the canvas rule and bad-file handling.
    """
    _check_args(canvas_size, on_error, max_pixels)
    rootp = check_dir(root, "classification")
    found = class_folders(rootp, ignore)
    if classes is None:
        classes = found
    else:
        classes = list(classes)
        extra = [c for c in found if c not in classes]
        if extra:
            raise UserError(f"spatialssl: class folder(s) {', '.join(extra)} in {rootp} are not classes of the "
                             f"train split ({', '.join(classes)}): labels follow train's class names")
        missing = [c for c in classes if c not in found]
        if missing:
            warnings.warn(f"spatialssl: {rootp} has no folder for the train class(es) {', '.join(missing)}; "
                          f"labels follow the train split's {len(classes)} classes", stacklevel=2)
    if not found:
        raise UserError(f"spatialssl: no class folders in {rootp} (expected root/<class>/<image>)")
    visited = {os.path.realpath(rootp / c) for c in found} | {os.path.realpath(rootp)}
    items, labels = [], []
    for c in found:
        for f in list_images(rootp / c, visited):
            items.append(_Item(f))
            labels.append(classes.index(c))
    if not items:
        raise UserError(f"spatialssl: no image files in the class folders of {rootp}")
    images, _, ok, skipped = _load(items, rootp, canvas_size, on_error, progress, None, max_pixels=max_pixels)
    lab = torch.tensor(labels, dtype=torch.int64)[torch.tensor(ok, dtype=torch.long)]
    counts = torch.bincount(lab, minlength=len(classes))
    for c, k in zip(classes, counts.tolist()):
        if k == 0 and c in found:
            warnings.warn(f"spatialssl: class folder {rootp / c} has no readable image", stacklevel=2)
    return CanvasSet(
        images=images, labels=lab, class_names=classes,
        meta=_meta("classification", rootp, canvas_size, [items[i].image for i in ok], skipped,
                   class_counts=dict(zip(classes, counts.tolist()))),
    )


def load_segmentation(
    images: str, masks: str, canvas_size: int = 256, on_error: str = "skip", progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CanvasSet:
    """Images plus PNG masks with the same relative stem; ``semantic`` = mask value (0 = background).

    ``labels`` is None. ``class_names`` is left empty (ids are whatever the masks hold);
    ``meta["mask_values"]`` lists the ids seen. A mask whose size differs from its image is a
    ``ValueError`` naming both files.
    """
    _check_args(canvas_size, on_error, max_pixels)
    ip, mp = check_dir(images, "images"), check_dir(masks, "masks")
    items, missing = pair_targets(ip, mp, (".png", ".PNG"), "mask", on_error)
    if not items:
        raise UserError(f"spatialssl: no image in {ip} has a mask in {mp}")
    imgs, sem, ok, skipped = _load(items, ip, canvas_size, on_error, progress, "mask", pre_skipped=missing,
                                   max_pixels=max_pixels)
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
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CanvasSet:
    """Images plus depth maps with the same relative stem: ``.npy`` float or 16-bit ``.png``.

    Depth = stored value * ``depth_scale`` (e.g. 0.001 for millimetre PNGs), float32; resized
    with nearest neighbour so invalid zeros are never blended into valid depth.
    """
    _check_args(canvas_size, on_error, max_pixels)
    ip, dp = check_dir(images, "images"), check_dir(depth, "depth")
    items, missing = pair_targets(ip, dp, (".npy", ".png", ".PNG"), "depth", on_error)
    if not items:
        raise UserError(f"spatialssl: no image in {ip} has a depth map in {dp}")
    imgs, dep, ok, skipped = _load(
        items, ip, canvas_size, on_error, progress, "depth", depth_scale=float(depth_scale), pre_skipped=missing,
        max_pixels=max_pixels,
    )
    return CanvasSet(
        images=imgs, depth=dep,
        meta=_meta("depth", ip, canvas_size, [items[i].image for i in ok], skipped,
                   depth=str(dp), depth_scale=float(depth_scale)),
    )


def load_unlabelled(
    root: str, canvas_size: int = 256, on_error: str = "skip", progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CanvasSet:
    """Every image under ``root`` (recursively, sorted); labels None."""
    _check_args(canvas_size, on_error, max_pixels)
    rootp = check_dir(root, "image")
    files = list_images(rootp)
    if not files:
        raise UserError(
            f"spatialssl: no image files in {rootp} (extensions considered: {', '.join(IMAGE_EXTENSIONS)})"
        )
    imgs, _, ok, skipped = _load([_Item(f) for f in files], rootp, canvas_size, on_error, progress, None,
                                 max_pixels=max_pixels)
    return CanvasSet(
        images=imgs, meta=_meta("unlabelled", rootp, canvas_size, [files[i] for i in ok], skipped)
    )
