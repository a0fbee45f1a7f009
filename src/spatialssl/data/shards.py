"""Prepared shards: a data set decoded and resized once, stored as JPEG bytes on disk, read lazily.

``spatialssl data prepare --root DIR --out SHARDS [--canvas 256]`` turns an ImageFolder, a
segmentation or depth folder (``--layout segmentation|depth``), or PartsWorld into this
layout; training and evaluation then read only the images they need, so memory does not
grow with the data set (ImageNet-1k at 256 px would be ~250 GB as an in-memory canvas
tensor, per process)::

    SHARDS/meta.json                        format, canvas size, per split: shard list, counts,
                                            per-shard SHA-1 of the JPEG bytes, targets, class names
    SHARDS/<split>/shard-00000.bin          the JPEG bytes of up to ``shard_size`` canvases, concatenated
    SHARDS/<split>/shard-00000.<target>.bin dense targets (semantic / parts / depth), lossless
                                            (``encode_target``: zlib of the raw array), concatenated
    SHARDS/<split>/shard-00000.npz          offsets int64 [n + 1] (and <target>_offsets), labels,
                                            fine labels, skipped files, the .bin's SHA-1

Format *(our choice, see docs/data.md for the measurements)*: memory-mapped arrays
(``numpy.memmap``) of JPEG bytes with an offsets index. Random access by index is what
makes exact resume free: the trainer's batch at step ``s`` is a pure function of
``(seed, s)`` (``engine.trainer.batch_indices``), so a resumed run reads the same batches
with no iterator state to save; each process reads only its slice of each batch.
WebDataset's tar streams are sequential (resuming mid-epoch means replaying the stream), and
LitData / MosaicML Streaming add a dependency and their own shuffling whose state would have
to be checkpointed; JPEG decoding is torchvision's (``torchvision.io.decode_jpeg``, batched,
on the CPU in DataLoader workers or, ``data.decode=gpu``, with nvJPEG on the training GPU:
``decode_canvases``).

Canvases are made by the folder loaders' rule (``folders.decode_image``: shorter side to
the canvas, centre crop), then JPEG-encoded at ``quality`` (default 95); a streamed canvas
therefore differs from the in-memory loader's by JPEG's error only (a test bounds it).

Preparation is resumable: shards are written one by one (bytes, then targets, then index,
each to a temporary file renamed into place), a shard whose index exists is never redone,
and ``meta.json`` is written last. The per-shard digests make a cheap content identity for
the evaluations' feature cache (``ShardSet.digest``: no image is read to compute it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torchvision.io import decode_jpeg, encode_jpeg

from ..progress import bar as progress_bar
from .canvases import CanvasSet
from ..errors import NotFound, UserError

FORMAT = "spatialssl-shards"
VERSION = 1


def is_prepared(path: str | os.PathLike) -> bool:
    return (Path(path) / "meta.json").is_file()


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


TARGETS = ("semantic", "parts", "depth")  # dense targets a split may carry (CanvasSet attributes)


def encode_target(a: np.ndarray) -> bytes:
    """A dense target [S, S] as lossless bytes: one dtype byte, then the raw array zlib-compressed.

    Masks are stored as uint8 when their ids fit (else int32), depth as float32. Chosen by
    measurement (docs/data.md): on PartsWorld masks zlib of the raw array is half the size of
    a PNG and decodes 4x faster, and PNG cannot hold float32 depth (torchvision's
    ``encode_png`` takes uint8 only) -- one codec for every dtype, in the standard library.
    """
    a = np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.floating):
        code, raw = b"f", a.astype(np.float32)
    elif a.size and a.min() >= 0 and a.max() <= 255:
        code, raw = b"u", a.astype(np.uint8)
    else:
        code, raw = b"i", a.astype(np.int32)
    return code + zlib.compress(raw.tobytes(), 6)


def decode_target(blob: bytes, size: int) -> torch.Tensor:
    """Inverse of ``encode_target``: int64 [S, S] (masks) or float32 [S, S] (depth)."""
    code, raw = blob[:1], zlib.decompress(blob[1:])
    dtype = {b"f": np.float32, b"u": np.uint8, b"i": np.int32}[code]
    a = np.frombuffer(raw, dtype=dtype).reshape(size, size)
    return torch.from_numpy(a.astype(np.float32 if code == b"f" else np.int64))


@dataclass
class Row:
    """One item to write: a canvas (None when unreadable, with ``reason`` = (file, why)), its
    labels (-1: none) and dense targets by name (``TARGETS``; [S, S] arrays)."""

    image: torch.Tensor | None
    label: int = -1
    fine: int = -1
    reason: tuple[str, str] | None = None
    targets: dict[str, np.ndarray] = field(default_factory=dict)


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_blobs(path: Path, blobs: list[bytes]) -> tuple[np.ndarray, str]:
    """Concatenated ``blobs`` written atomically; their offsets [n + 1] and the SHA-1 of the bytes."""
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    h = hashlib.sha1()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for b in blobs:
                f.write(b)
                h.update(b)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)
    return offsets, h.hexdigest()


def _write_shard(out: Path, name: str, blobs: list[bytes], labels: list[int], fine: list[int],
                 skipped: dict[str, str], targets: dict[str, list[bytes]]) -> int:
    offsets, digest = _write_blobs(out / f"{name}.bin", blobs)
    extra = {f"{k}_offsets": _write_blobs(out / f"{name}.{k}.bin", v)[0] for k, v in targets.items()}

    def write_idx(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, offsets=offsets, labels=np.asarray(labels, dtype=np.int64),
                     fine_labels=np.asarray(fine, dtype=np.int64), skipped=np.asarray(json.dumps(skipped)),
                     digest=np.asarray(digest), **extra)

    _atomic_write(out / f"{name}.npz", write_idx)  # written last: its presence marks the shard done
    return len(blobs)


def write_split(out: str | os.PathLike, split: str, n_items: int, make: Callable[[int], Row],
                canvas_size: int, class_names: list[str] | None = None, fine_names: list[str] | None = None,
                shard_size: int = 1024, quality: int = 95, workers: int = 4, progress: bool = True,
                source: dict | None = None, targets: tuple[str, ...] = (), extra: dict | None = None,
                pre_skipped: dict[str, str] | None = None) -> dict:
    """Write one split as shards, resumably.

    Args:
        make: item index -> ``Row`` (the canvas uint8 [3, S, S] or None if unreadable, labels,
            and the dense ``targets`` named here). Items are grouped into shards by index, so
            the grouping (and so resuming) does not depend on which files turn out unreadable.
        targets: the dense targets every readable row carries (subset of ``TARGETS``).
        extra: JSON facts the split's canvases carry (``CanvasSet.meta``: PartsWorld's
            ``far`` and ``part_names``), restored into ``ShardSet.meta``.
        pre_skipped: files skipped before any decoding (images without a mask), {file: why}.
    Returns:
        the split's entry of ``meta.json``.
    """
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise ValueError(f"unknown dense target(s) {bad} (known: {', '.join(TARGETS)})")
    root = Path(out)
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-n_items // shard_size))
    names = [f"shard-{k:05d}" for k in range(n_shards)]
    todo = [k for k in range(n_shards) if not (d / f"{names[k]}.npz").exists()]
    bar = progress_bar(total=n_items, desc=f"prepare {split}", unit="img", enabled=progress)
    bar.update(n_items - sum(min(shard_size, n_items - k * shard_size) for k in todo))

    def encode(i: int):
        row = make(i)
        if row.image is None:
            return row, None, {}
        missing = [t for t in targets if t not in row.targets]
        if missing:
            raise ValueError(f"item {i} of split {split} lacks its {', '.join(missing)} target")
        blob = encode_jpeg(row.image.contiguous(), quality=quality).numpy().tobytes()
        return row, blob, {t: encode_target(row.targets[t]) for t in targets}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k in todo:
            lo, hi = k * shard_size, min(n_items, (k + 1) * shard_size)
            blobs, labels, fine, skipped = [], [], [], {}
            tblobs: dict[str, list[bytes]] = {t: [] for t in targets}
            for row, blob, tb in pool.map(encode, range(lo, hi)):  # in index order
                if blob is None:
                    skipped[str(row.reason[0])] = row.reason[1]
                else:
                    blobs.append(blob)
                    labels.append(row.label)
                    fine.append(row.fine)
                    for t in targets:
                        tblobs[t].append(tb[t])
                bar.update(1)
            _write_shard(d, names[k], blobs, labels, fine, skipped, tblobs)
    bar.close()

    counts, digests, skipped_all = [], [], dict(pre_skipped or {})
    for name in names:
        with np.load(d / f"{name}.npz") as z:
            counts.append(int(len(z["offsets"]) - 1))
            skipped_all.update(json.loads(str(z["skipped"])))
            # a shard written before digests were recorded (a resumed old preparation): hash its file
            digests.append(str(z["digest"]) if "digest" in z.files else _file_digest(d / f"{name}.bin"))
            lacking = [t for t in targets if f"{t}_offsets" not in z.files]
        if lacking:
            raise UserError(f"spatialssl: {d / name}.npz has no {', '.join(lacking)} target: it was prepared "
                             f"without them; prepare into another folder")
    entry = {"n": int(sum(counts)), "shards": [f"{split}/{nm}" for nm in names], "counts": counts,
             "digests": digests, "targets": list(targets), "extra": dict(extra or {}),
             "class_names": list(class_names or []), "fine_names": list(fine_names or []),
             "skipped": skipped_all, "candidates": n_items + len(pre_skipped or {})}
    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta and meta.get("canvas_size") != canvas_size:
        raise UserError(f"{root} holds shards with canvas {meta.get('canvas_size')}, not {canvas_size}: "
                         f"prepare into another folder")
    meta.update({"format": FORMAT, "version": VERSION, "canvas_size": canvas_size, "quality": quality})
    meta.setdefault("splits", {})[split] = entry
    if source:
        meta.setdefault("source", {})[split] = source
    _atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    if skipped_all:
        warnings.warn(f"spatialssl: skipped {len(skipped_all)} unreadable file(s) preparing {split}; "
                      f"listed in {meta_path}", stacklevel=2)
    if entry["n"] == 0:
        raise UserError(f"spatialssl: no readable image for split {split} ({n_items} candidate files)")
    return entry


def prepare_folder(root: str | os.PathLike, out: str | os.PathLike, canvas_size: int = 256,
                   splits: tuple[str, ...] | None = None, shard_size: int = 1024, quality: int = 95,
                   on_error: str = "skip", workers: int = 4, progress: bool = True,
                   max_pixels: int | None = None) -> dict:
    """An ImageFolder root (``root/<split>/<class>/...`` or ``root/<class>/...`` as ``train``)
    as shards under ``out``; labels follow train's sorted class names (a split's class must
    be one of train's)."""
    from . import SPLITS, folders, train_folder

    rootp = Path(root)
    if not rootp.is_dir():
        raise NotFound(f"spatialssl: data folder not found: {rootp}")
    # the folder loaders' layout rule: <root>/train, or <root> itself (its split folders not classes)
    train_dir, not_classes = train_folder(rootp)
    layout = {"train": train_dir, **{s: rootp / s for s in SPLITS if s != "train" and (rootp / s).is_dir()}}
    if splits:
        missing = [s for s in splits if s not in layout]
        if missing:
            raise NotFound(f"spatialssl: {rootp} has no split folder(s) {', '.join(missing)}")
        layout = {s: layout[s] for s in splits}
    names = folders.class_folders(train_dir, not_classes)
    label = {c: i for i, c in enumerate(names)}
    entries = {}
    for split, path in layout.items():
        classes = folders.class_folders(path, not_classes if split == "train" else ())
        unknown = [c for c in classes if c not in label]
        if unknown:
            raise UserError(f"spatialssl: split {split} has class folder(s) not in train: {', '.join(unknown)}")
        items = [(f, label[c]) for c in classes for f in folders.list_images(path / c)]
        empty = [c for c in classes if not folders.list_images(path / c)]
        if empty:  # a class with no image still takes a label id: say so (chance counts present classes)
            warnings.warn(f"spatialssl: data prepare: class folder(s) {', '.join(str(path / c) for c in empty)} of "
                          f"split {split} hold no image; their label id(s) stay reserved", stacklevel=2)

        def make(i: int, items=items):
            f, lab = items[i]
            try:  # the folder loaders' canvas rule and bad-file handling
                arr, _ = folders.decode_image(f, canvas_size, folders.DEFAULT_MAX_PIXELS if max_pixels is None
                                               else max_pixels)
            except folders.Unreadable as e:
                if on_error == "raise":
                    raise UserError(f"spatialssl: unreadable file: {f} ({e})") from None
                return Row(None, lab, reason=(str(f), str(e)))
            return Row(torch.from_numpy(arr), lab)

        entries[split] = write_split(out, split, len(items), make, canvas_size, names, None, shard_size, quality,
                                     workers, progress, source={"root": str(path), "kind": "classification"})
    return entries


DENSE_LAYOUTS = {"segmentation": ("masks", "semantic", (".png", ".PNG")),
                 "depth": ("depth", "depth", (".npy", ".png", ".PNG"))}  # layout -> (folder, target, extensions)


def prepare_dense(root: str | os.PathLike, out: str | os.PathLike, layout: str, canvas_size: int = 256,
                  splits: tuple[str, ...] | None = None, shard_size: int = 1024, quality: int = 95,
                  on_error: str = "skip", workers: int = 4, progress: bool = True, depth_scale: float = 1.0,
                  max_pixels: int | None = None) -> dict:
    """A segmentation or depth folder as shards: ``root/<split>/images/<rel>/<stem>.<ext>`` with
    ``root/<split>/masks/<rel>/<stem>.png`` (``layout="segmentation"``, target ``semantic``) or
    ``root/<split>/depth/<rel>/<stem>.{npy,png}`` (``layout="depth"``, metres = value x
    ``depth_scale``): the layout of ``eval.seg_root`` / ``eval.depth_root``.

    Pairing, the canvas rule (nearest-neighbour resize of the target), bad and unpaired files
    (skipped and counted, or ``ValueError`` with ``on_error="raise"``) and size mismatches
    (always an error) are ``folders.load_segmentation`` / ``load_depth``'s; targets are stored
    losslessly (``encode_target``), so a loaded target equals the folder loader's exactly.
    """
    from . import SPLITS, folders

    if layout not in DENSE_LAYOUTS:
        raise ValueError(f"unknown dense layout {layout!r} (known: {', '.join(DENSE_LAYOUTS)})")
    sub, target, exts = DENSE_LAYOUTS[layout]
    rootp = Path(root)
    if not rootp.is_dir():
        raise NotFound(f"spatialssl: data folder not found: {rootp}")
    found = [s for s in SPLITS if (rootp / s / "images").is_dir()]
    if not found:
        raise NotFound(f"spatialssl: {rootp} has no <split>/images folder (expected e.g. "
                                f"{rootp / 'train' / 'images'} and {rootp / 'train' / sub})")
    for s in splits or ():
        if s not in found:
            raise NotFound(f"spatialssl: {rootp} has no {s}/images folder")
    mp = folders.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    what = "mask" if layout == "segmentation" else "depth"
    entries = {}
    for split in splits or found:
        ip, tp = rootp / split / "images", folders.check_dir(rootp / split / sub, what)
        items, missing = folders.pair_targets(ip, tp, exts, what, on_error)

        def make(i: int, items=items):
            it = items[i]
            try:  # the folder loaders' per-item rule (folders._load)
                arr, (w, h) = folders.decode_image(it.image, canvas_size, mp)
            except folders.Unreadable as e:
                bad, why = it.image, str(e)
            else:
                try:
                    t = (folders.decode_mask(it.target, mp) if what == "mask"
                         else folders.decode_depth(it.target, float(depth_scale), mp))
                except folders.Unreadable as e:
                    bad, why = it.target, f"{what} file: {e}"
                else:
                    if t.shape != (h, w):
                        raise UserError(f"spatialssl: {what} size {t.shape[1]}x{t.shape[0]} (WxH) differs from its "
                                         f"image size {w}x{h}: {what} {it.target}, image {it.image}")
                    return Row(torch.from_numpy(arr), targets={target: folders.resize_nearest(t, canvas_size)})
            if on_error == "raise":
                raise UserError(f"spatialssl: unreadable file: {bad} ({why})")
            return Row(None, reason=(str(bad), why))

        extra = {"depth_scale": float(depth_scale)} if layout == "depth" else {}
        entries[split] = write_split(out, split, len(items), make, canvas_size, None, None, shard_size, quality,
                                     workers, progress, source={"root": str(rootp / split), "kind": layout},
                                     targets=(target,), extra=extra, pre_skipped=missing)
    return entries


def prepare_canvases(data: CanvasSet, out: str | os.PathLike, split: str, shard_size: int = 1024,
                     quality: int = 95, workers: int = 4, progress: bool = True, source: dict | None = None) -> dict:
    """An in-memory CanvasSet (e.g. a rendered PartsWorld split) as shards, with its dense
    targets (``depth``, ``semantic``, ``parts``) when it has them, and the JSON facts of its
    ``meta`` the evaluations read (``far``, ``part_names``)."""
    n = len(data)
    targets = tuple(t for t in TARGETS if getattr(data, t) is not None)

    def make(i: int):
        lab = int(data.labels[i]) if data.labels is not None else -1
        fine = int(data.fine_labels[i]) if data.fine_labels is not None else -1
        return Row(data.images[i], lab, fine, targets={t: getattr(data, t)[i].numpy() for t in targets})

    h, w = data.size
    if h != w:
        raise ValueError(f"shards hold square canvases; got {h}x{w}")
    extra = {k: data.meta[k] for k in ("far", "part_names", "depth_scale") if k in data.meta}
    return write_split(out, split, n, make, h, data.class_names, data.fine_names, shard_size, quality, workers,
                       progress, source=source, targets=targets, extra=extra)


# --------------------------------------------------------------------------- reading

DECODE_WARN_BYTES = 1 << 30  # decoding more than this into memory at once (``images``, targets) warns


def decode_canvases(data: list[torch.Tensor], device: str | torch.device | None = None) -> torch.Tensor:
    """The one JPEG decode rule of shards: JPEG bytes (uint8 1-D CPU tensors, ``ShardSet.read``)
    -> uint8 canvases [len(data), 3, S, S], in the order given.

    On the CPU (``device`` None or a CPU device) by libjpeg (batched ``decode_jpeg``); on a CUDA
    device by batched nvJPEG (``nvjpeg_decode``), stacked on that device and ready for use on
    its current stream. The two decoders may differ by a few levels per pixel. Only the
    canvases are JPEG: dense targets keep ``decode_target`` on the CPU.
    """
    if device is not None and torch.device(device).type == "cuda":
        return torch.stack(nvjpeg_decode(data, torch.device(device)))
    return torch.stack(decode_jpeg(data))


_DECODE_STREAMS: dict[torch.device, "torch.cuda.Stream"] = {}


def nvjpeg_decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Batched nvJPEG decode (``decode_jpeg(list, device="cuda")``) of JPEG bytes onto CUDA
    ``device``: uint8 [3, S, S] tensors, safe to use on the stream that was current at the call.

    **Stream ordering (the caveat).** torchvision decodes with its own nvJPEG handle on its own
    CUDA stream (from the pool), not on the caller's current stream, while its output tensors
    are allocated from the caching allocator under the *current* stream. Two hazards follow for
    a caller that uses them as they come: (1) the caching allocator may hand the decoder a block
    just freed on the current stream whose last readers are still queued there (the previous
    training step), and the decoder's stream, not ordered after that work, would overwrite it;
    (2) a kernel on the current stream could read an output before the decoder's stream has
    written it (torchvision's ``decode_jpegs_cuda.cpp``, as read for this code, makes the then-
    current stream wait on an event of its decoder stream and synchronises that stream before
    returning; earlier versions need not). So: the decode runs with a dedicated side stream
    current (outputs come from that stream's pool, never from memory with work queued on the
    training stream); the caller's stream then waits for the side stream (``wait_stream``), and
    each output is marked as used on the caller's stream (``record_stream``: the allocator does
    not recycle it while that stream's work is queued). A caller reading the outputs on yet
    another stream must do the same (``wait_stream`` and ``record_stream``, or
    ``torch.cuda.current_stream().synchronize()`` first).
    """
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with torch.cuda.device(device):
        consumer = torch.cuda.current_stream(device)
        side = _DECODE_STREAMS.get(device)
        if side is None:
            side = _DECODE_STREAMS[device] = torch.cuda.Stream(device)
        with torch.cuda.stream(side):
            imgs = decode_jpeg(data, device=device)
        consumer.wait_stream(side)
        for im in imgs:
            im.record_stream(consumer)
    return imgs



def has_split(root: str | os.PathLike, split: str) -> bool:
    """Whether the prepared folder ``root`` holds ``split``."""
    try:
        return split in json.loads((Path(root) / "meta.json").read_text())["splits"]
    except (OSError, ValueError, KeyError):
        return False


class ShardSet:
    """One split of a prepared folder, read lazily: only the index (offsets, labels) is held
    in memory; image bytes (and dense targets) are memory-mapped and decoded per batch.

    A ``select``-ed ShardSet is a lazy view of some rows (what the evaluations' seeded
    subsets are); ``digest`` names the content of its images cheaply (the manifest's
    per-shard SHA-1 and which rows), for the feature cache.

    Attributes:
        labels / fine_labels: int64 [N] (None where the source had none).
        class_names, fine_names: as in ``CanvasSet``.
        targets: the dense targets stored (``TARGETS``); ``semantic`` / ``parts`` / ``depth``
            decode them all ([N, S, S], None when not stored); ``decode_target`` per batch.
        meta: source facts, with the split's ``extra`` (PartsWorld's ``far``, ``part_names``).

    >>> ds = ShardSet("shards", "train")
    >>> ds.decode(torch.tensor([0, 5, 9])).shape      # uint8 [3, 3, S, S]
    >>> ds.select(torch.arange(100)).digest()         # a view of 100 rows, its content digest
    """

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise NotFound(f"spatialssl: no prepared shards at {self.root} (no meta.json): run "
                                    f"`spatialssl data prepare --root DIR --out {self.root}` first")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise UserError(f"spatialssl: {meta_path} is not a {FORMAT} v{VERSION} folder")
        if split not in meta["splits"]:
            raise NotFound(f"spatialssl: {self.root} has no split '{split}' "
                                    f"(prepared: {', '.join(meta['splits'])})")
        e = meta["splits"][split]
        self.split, self.canvas_size = split, int(meta["canvas_size"])
        self.class_names, self.fine_names = list(e["class_names"]), list(e["fine_names"])
        self.targets: tuple[str, ...] = tuple(e.get("targets", ()))
        self.meta = {"source": "shards", "root": str(self.root), "split": split, "skipped": list(e["skipped"]),
                     "canvas_size": self.canvas_size, **e.get("extra", {})}
        self._entry = {k: e[k] for k in ("shards", "counts")} | {"digests": e.get("digests"),
                                                                 "quality": meta.get("quality")}
        offs, labs, fines, self._files = [], [], [], []
        toffs: dict[str, list[np.ndarray]] = {t: [] for t in self.targets}
        for name in e["shards"]:
            with np.load(self.root / f"{name}.npz") as z:
                offs.append(z["offsets"])
                labs.append(z["labels"])
                fines.append(z["fine_labels"])
                for t in self.targets:
                    toffs[t].append(z[f"{t}_offsets"])
            self._files.append(self.root / f"{name}.bin")
        self._shard = np.concatenate([np.full(len(o) - 1, k, dtype=np.int64) for k, o in enumerate(offs)])
        self._start = np.concatenate([o[:-1] for o in offs])
        self._end = np.concatenate([o[1:] for o in offs])
        self._tspan = {t: (np.concatenate([o[:-1] for o in v]), np.concatenate([o[1:] for o in v]))
                       for t, v in toffs.items()}
        if len(self._shard) == 0:
            raise UserError(f"spatialssl: split {split} of {self.root} is empty")
        self._rows = np.arange(len(self._shard), dtype=np.int64)  # rows of the whole split (a view: some)
        lab, fine = torch.from_numpy(np.concatenate(labs)), torch.from_numpy(np.concatenate(fines))
        self.labels = lab if bool((lab >= 0).all()) else None
        self.fine_labels = fine if bool((fine >= 0).all()) else None
        self._maps: dict[str, np.memmap] = {}
        self._split_digest: str | None = None

    def __len__(self) -> int:
        return len(self._shard)

    @property
    def size(self) -> tuple[int, int]:
        return self.canvas_size, self.canvas_size

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if self.labels is not None else 0

    def _map(self, k: int, target: str = "") -> np.memmap:
        # opened lazily, per process (a DataLoader worker maps the files itself after fork)
        key = f"{k}{target}"
        m = self._maps.get(key)
        if m is None:
            f = self._files[k] if not target else self._files[k].with_suffix(f".{target}.bin")
            m = self._maps[key] = np.memmap(f, dtype=np.uint8, mode="r")
        return m

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    # ---- views and content -----------------------------------------------------------
    def select(self, idx: torch.Tensor | list[int]) -> "ShardSet":
        """A lazy view of rows ``idx`` (of this set): nothing is decoded; labels, names and
        meta follow."""
        i = torch.as_tensor(idx, dtype=torch.long)
        if len(i) and (int(i.min()) < 0 or int(i.max()) >= len(self)):
            raise IndexError(f"rows out of range 0..{len(self) - 1} of {self.root}/{self.split}")
        ii = i.numpy()
        view = copy.copy(self)
        view._maps = {}
        view._shard, view._start, view._end, view._rows = (a[ii] for a in (self._shard, self._start, self._end,
                                                                            self._rows))
        view._tspan = {t: (a[ii], b[ii]) for t, (a, b) in self._tspan.items()}
        view.labels = None if self.labels is None else self.labels[i]
        view.fine_labels = None if self.fine_labels is None else self.fine_labels[i]
        view.meta = dict(self.meta)
        return view

    def split_digest(self) -> str:
        """Content digest of the prepared split's images: the SHA-1 of each shard's JPEG bytes
        as recorded in ``meta.json`` at preparation (for folders prepared before digests were
        recorded, each shard file is hashed once per process), with the canvas size."""
        if self._split_digest is None:
            digests = self._entry["digests"] or [_file_digest(f) for f in self._files]
            material = [self.canvas_size, self._entry["counts"], digests]
            self._split_digest = hashlib.sha1(json.dumps(material).encode()).hexdigest()
        return self._split_digest

    def digest(self) -> str:
        """Content digest of this set's images (the split's ``split_digest`` and which rows, in
        order): equal digests, equal decoded images. Costs O(rows), never reads an image."""
        h = hashlib.sha1(self.split_digest().encode())
        h.update(np.ascontiguousarray(self._rows).tobytes())
        return h.hexdigest()

    # ---- decoding --------------------------------------------------------------------
    def read(self, idx: torch.Tensor | list[int]) -> list[torch.Tensor]:
        """The JPEG bytes of items ``idx``: a list of uint8 1-D tensors."""
        out = []
        for i in torch.as_tensor(idx).tolist():
            k, a, b = int(self._shard[i]), int(self._start[i]), int(self._end[i])
            out.append(torch.from_numpy(np.array(self._map(k)[a:b])))
        return out

    def decode(self, idx: torch.Tensor | list[int], device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 [len(idx), 3, S, S] canvases (``decode_canvases``: nvJPEG when ``device`` is CUDA)."""
        return decode_canvases(self.read(idx), device)

    def decode_target(self, idx: torch.Tensor | list[int], target: str) -> torch.Tensor:
        """Dense target ``target`` of items ``idx``: int64 (masks) or float32 (depth) [len(idx), S, S]."""
        if target not in self.targets:
            raise KeyError(f"{self.root}/{self.split} has no {target} target (stored: {list(self.targets) or 'none'})")
        start, end = self._tspan[target]
        out = []
        for i in torch.as_tensor(idx).tolist():
            k = int(self._shard[i])
            out.append(decode_target(self._map(k, target)[int(start[i]):int(end[i])].tobytes(), self.canvas_size))
        return torch.stack(out) if out else torch.zeros((0, self.canvas_size, self.canvas_size))

    def _decode_all(self, what: str, bytes_per_item: int) -> torch.Tensor:
        if len(self) * bytes_per_item > DECODE_WARN_BYTES:
            warnings.warn(f"spatialssl: decoding {what} of all {len(self)} items of {self.root}/{self.split} into "
                          f"memory ({len(self) * bytes_per_item / 2**30:.1f} GiB)", stacklevel=3)
        idx = torch.arange(len(self))
        return self.decode(idx) if what == "images" else self.decode_target(idx, what)

    @property
    def images(self) -> torch.Tensor:
        """Every canvas of this set decoded, uint8 [N, 3, S, S] (a view's rows only; warns above
        ``DECODE_WARN_BYTES``: streaming is what shards exist for)."""
        return self._decode_all("images", 3 * self.canvas_size ** 2)

    def _target(self, name: str) -> torch.Tensor | None:
        return self._decode_all(name, 8 * self.canvas_size ** 2) if name in self.targets else None

    semantic = property(lambda self: self._target("semantic"), doc="int64 [N, S, S] or None (decodes all)")
    parts = property(lambda self: self._target("parts"), doc="int64 [N, S, S] or None (decodes all)")
    depth = property(lambda self: self._target("depth"), doc="float32 [N, S, S] or None (decodes all)")

    def subset(self, idx: torch.Tensor | slice) -> CanvasSet:
        """Items ``idx`` decoded into an in-memory ``CanvasSet`` (images and dense targets)."""
        all_idx = torch.arange(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx)
        pick = lambda t: None if t is None else t[all_idx]  # noqa: E731
        dense = {t: self.decode_target(all_idx, t) for t in self.targets}
        return CanvasSet(self.decode(all_idx), labels=pick(self.labels), fine_labels=pick(self.fine_labels),
                         class_names=list(self.class_names), fine_names=list(self.fine_names), meta=dict(self.meta),
                         **dense)

    def load(self) -> CanvasSet:
        """This whole set (a view: its rows) decoded into a ``CanvasSet``."""
        return self.subset(slice(None))


class _StepBatches(torch.utils.data.Dataset):
    """Step ``k`` -> its decoded canvases, or (``raw``) the list of their JPEG bytes."""

    def __init__(self, data: ShardSet, index: Callable[[int], torch.Tensor], start: int, end: int,
                 raw: bool = False) -> None:
        self.data, self.index, self.start, self.end, self.raw = data, index, start, end, raw

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, k: int) -> torch.Tensor | list[torch.Tensor]:
        idx = self.index(self.start + k)
        return self.data.read(idx) if self.raw else self.data.decode(idx)


def stream_batches(data: ShardSet, index: Callable[[int], torch.Tensor], start: int, end: int,
                   workers: int = 2, prefetch: int = 2, pin_memory: bool = False,
                   decode_device: torch.device | None = None) -> Iterator[torch.Tensor]:
    """Decoded batches for steps ``start .. end - 1``, in step order.

    ``index(step)`` gives this process's image indices for that step (the trainer's
    ``local_batch_indices``), so the order is deterministic from (seed, step) and a resumed run
    continues exactly. Decoding runs in ``workers`` DataLoader processes (0: in this one);
    at most ``workers * prefetch`` decoded batches wait in memory, whatever the data set's size.
    ``pin_memory`` (training on CUDA): batches come in page-locked memory (the DataLoader's
    pinning thread), so their upload with ``non_blocking=True`` is asynchronous.

    ``decode_device`` (a CUDA device: ``data.decode=gpu``): the workers only read each batch's
    JPEG bytes (a list of uint8 tensors; at most ``workers * prefetch`` batches of bytes wait),
    and this process decodes them with batched nvJPEG onto that device (``decode_canvases``:
    the same canvases, in the same order and layout, on the device, ordered on its current
    stream).
    """
    raw = decode_device is not None
    ds = _StepBatches(data, index, start, end, raw=raw)
    if workers == 0:
        batches = (ds[k] for k in range(len(ds)))
    else:
        batches = iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                                   prefetch_factor=prefetch, persistent_workers=False,
                                                   pin_memory=pin_memory and not raw))
    if raw:
        return (decode_canvases(b, decode_device) for b in batches)
    if workers == 0 and pin_memory:
        return (b.pin_memory() for b in batches)
    return batches
