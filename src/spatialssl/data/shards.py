"""Prepared shards: a data set decoded and resized once, stored as JPEG bytes on disk, read lazily.

``spatialssl data prepare --root DIR --out SHARDS [--canvas 256]`` turns an ImageFolder (or
PartsWorld) into this layout; training and evaluation then read only the images they need,
so memory does not grow with the data set (ImageNet-1k at 256 px would be ~250 GB as an
in-memory canvas tensor, per process)::

    SHARDS/meta.json                 format, canvas size, per split: shard list, counts, class names
    SHARDS/<split>/shard-00000.bin   the JPEG bytes of up to ``shard_size`` canvases, concatenated
    SHARDS/<split>/shard-00000.npz   offsets int64 [n + 1], labels, fine labels, skipped files

Format *(our choice, see docs/data.md for the measurements)*: memory-mapped arrays
(``numpy.memmap``) of JPEG bytes with an offsets index. Random access by index is what
makes exact resume free: the trainer's batch at step ``s`` is a pure function of
``(seed, s)`` (``engine.trainer.batch_indices``), so a resumed run reads the same batches
with no iterator state to save; each process reads only its slice of each batch.
WebDataset's tar streams are sequential (resuming mid-epoch means replaying the stream), and
LitData / MosaicML Streaming add a dependency and their own shuffling whose state would have
to be checkpointed; JPEG decoding is torchvision's (``torchvision.io.decode_jpeg``, batched,
on the CPU in DataLoader workers or with nvJPEG on a GPU).

Canvases are made by the folder loaders' rule (``folders._decode_image``: shorter side to
the canvas, centre crop), then JPEG-encoded at ``quality`` (default 95); a streamed canvas
therefore differs from the in-memory loader's by JPEG's error only (a test bounds it).

Preparation is resumable: shards are written one by one (bytes, then index, each to a
temporary file renamed into place), a shard whose index exists is never redone, and
``meta.json`` is written last.
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torchvision.io import decode_jpeg, encode_jpeg
from tqdm.auto import tqdm

from .canvases import CanvasSet

FORMAT = "spatialssl-shards"
VERSION = 1


def is_prepared(path: str | os.PathLike) -> bool:
    return (Path(path) / "meta.json").is_file()


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_shard(out: Path, name: str, blobs: list[np.ndarray], labels: list[int], fine: list[int],
                 skipped: dict[str, str]) -> int:
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in blobs], out=offsets[1:])

    def write_bin(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for b in blobs:
                f.write(b.tobytes())
            f.flush()
            os.fsync(f.fileno())

    def write_idx(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, offsets=offsets, labels=np.asarray(labels, dtype=np.int64),
                     fine_labels=np.asarray(fine, dtype=np.int64), skipped=np.asarray(json.dumps(skipped)))

    _atomic_write(out / f"{name}.bin", write_bin)
    _atomic_write(out / f"{name}.npz", write_idx)  # written last: its presence marks the shard done
    return len(blobs)


def write_split(out: str | os.PathLike, split: str, n_items: int,
                make: Callable[[int], tuple[torch.Tensor | None, int, int, str | None]],
                canvas_size: int, class_names: list[str] | None = None, fine_names: list[str] | None = None,
                shard_size: int = 1024, quality: int = 95, workers: int = 4, progress: bool = True,
                source: dict | None = None) -> dict:
    """Write one split as shards, resumably.

    Args:
        make: item index -> (uint8 canvas [3, S, S] or None if unreadable, label, fine label,
            reason when unreadable). Items are grouped into shards by index, so the grouping
            (and so resuming) does not depend on which files turn out unreadable.
    Returns:
        the split's entry of ``meta.json``.
    """
    root = Path(out)
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-n_items // shard_size))
    names = [f"shard-{k:05d}" for k in range(n_shards)]
    todo = [k for k in range(n_shards) if not (d / f"{names[k]}.npz").exists()]
    bar = tqdm(total=n_items, desc=f"prepare {split}", unit="img", disable=not progress)
    bar.update(n_items - sum(min(shard_size, n_items - k * shard_size) for k in todo))

    def encode(i: int):
        img, lab, fine, reason = make(i)
        blob = None if img is None else encode_jpeg(img.contiguous(), quality=quality).numpy()
        return i, blob, lab, fine, reason

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k in todo:
            lo, hi = k * shard_size, min(n_items, (k + 1) * shard_size)
            blobs, labels, fine, skipped = [], [], [], {}
            for i, blob, lab, fl, reason in pool.map(encode, range(lo, hi)):  # in index order
                if blob is None:
                    skipped[str(reason[0])] = reason[1]
                else:
                    blobs.append(blob)
                    labels.append(lab)
                    fine.append(fl)
                bar.update(1)
            _write_shard(d, names[k], blobs, labels, fine, skipped)
    bar.close()

    counts, skipped_all = [], {}
    for name in names:
        with np.load(d / f"{name}.npz") as z:
            counts.append(int(len(z["offsets"]) - 1))
            skipped_all.update(json.loads(str(z["skipped"])))
    entry = {"n": int(sum(counts)), "shards": [f"{split}/{nm}" for nm in names], "counts": counts,
             "class_names": list(class_names or []), "fine_names": list(fine_names or []),
             "skipped": skipped_all, "candidates": n_items}
    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta and meta.get("canvas_size") != canvas_size:
        raise ValueError(f"{root} holds shards with canvas {meta.get('canvas_size')}, not {canvas_size}: "
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
        raise ValueError(f"spatialssl: no readable image for split {split} ({n_items} candidate files)")
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
        raise FileNotFoundError(f"spatialssl: data folder not found: {rootp}")
    # the folder loaders' layout rule: <root>/train, or <root> itself (its split folders not classes)
    train_dir, not_classes = train_folder(rootp)
    layout = {"train": train_dir, **{s: rootp / s for s in SPLITS if s != "train" and (rootp / s).is_dir()}}
    if splits:
        missing = [s for s in splits if s not in layout]
        if missing:
            raise FileNotFoundError(f"spatialssl: {rootp} has no split folder(s) {', '.join(missing)}")
        layout = {s: layout[s] for s in splits}
    names = folders.class_folders(train_dir, not_classes)
    label = {c: i for i, c in enumerate(names)}
    entries = {}
    for split, path in layout.items():
        classes = folders.class_folders(path, not_classes if split == "train" else ())
        unknown = [c for c in classes if c not in label]
        if unknown:
            raise ValueError(f"spatialssl: split {split} has class folder(s) not in train: {', '.join(unknown)}")
        items = [(f, label[c]) for c in classes for f in folders._list_images(path / c)]

        def make(i: int, items=items):
            f, lab = items[i]
            try:  # the folder loaders' canvas rule and bad-file handling
                arr, _ = folders._decode_image(f, canvas_size, folders.DEFAULT_MAX_PIXELS if max_pixels is None
                                               else max_pixels)
            except folders._Unreadable as e:
                if on_error == "raise":
                    raise ValueError(f"spatialssl: unreadable file: {f} ({e})") from None
                return None, lab, -1, (f, str(e))
            return torch.from_numpy(arr), lab, -1, None

        entries[split] = write_split(out, split, len(items), make, canvas_size, names, None, shard_size, quality,
                                     workers, progress, source={"root": str(path), "kind": "classification"})
    return entries


def prepare_canvases(data: CanvasSet, out: str | os.PathLike, split: str, shard_size: int = 1024,
                     quality: int = 95, workers: int = 4, progress: bool = True, source: dict | None = None) -> dict:
    """An in-memory CanvasSet (e.g. a rendered PartsWorld split) as shards."""
    n = len(data)

    def make(i: int):
        lab = int(data.labels[i]) if data.labels is not None else -1
        fine = int(data.fine_labels[i]) if data.fine_labels is not None else -1
        return data.images[i], lab, fine, None

    h, w = data.size
    if h != w:
        raise ValueError(f"shards hold square canvases; got {h}x{w}")
    return write_split(out, split, n, make, h, data.class_names, data.fine_names, shard_size, quality, workers,
                       progress, source=source)


# --------------------------------------------------------------------------- reading


class ShardSet:
    """One split of a prepared folder, read lazily: only the index (offsets, labels) is held
    in memory; image bytes are memory-mapped and decoded per batch.

    Attributes:
        labels / fine_labels: int64 [N] (None where the source had none).
        class_names, fine_names: as in ``CanvasSet``.

    >>> ds = ShardSet("shards", "train")
    >>> ds.decode(torch.tensor([0, 5, 9])).shape      # uint8 [3, 3, S, S]
    """

    def __init__(self, root: str | os.PathLike, split: str) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"spatialssl: no prepared shards at {self.root} (no meta.json): run "
                                    f"`spatialssl data prepare --root DIR --out {self.root}` first")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"spatialssl: {meta_path} is not a {FORMAT} v{VERSION} folder")
        if split not in meta["splits"]:
            raise FileNotFoundError(f"spatialssl: {self.root} has no split '{split}' "
                                    f"(prepared: {', '.join(meta['splits'])})")
        e = meta["splits"][split]
        self.split, self.canvas_size = split, int(meta["canvas_size"])
        self.class_names, self.fine_names = list(e["class_names"]), list(e["fine_names"])
        self.meta = {"source": "shards", "root": str(self.root), "split": split, "skipped": list(e["skipped"]),
                     "canvas_size": self.canvas_size}
        offs, labs, fines, self._files = [], [], [], []
        for name in e["shards"]:
            with np.load(self.root / f"{name}.npz") as z:
                offs.append(z["offsets"])
                labs.append(z["labels"])
                fines.append(z["fine_labels"])
            self._files.append(self.root / f"{name}.bin")
        self._shard = np.concatenate([np.full(len(o) - 1, k, dtype=np.int64) for k, o in enumerate(offs)])
        self._start = np.concatenate([o[:-1] for o in offs])
        self._end = np.concatenate([o[1:] for o in offs])
        if len(self._shard) == 0:
            raise ValueError(f"spatialssl: split {split} of {self.root} is empty")
        lab, fine = torch.from_numpy(np.concatenate(labs)), torch.from_numpy(np.concatenate(fines))
        self.labels = lab if bool((lab >= 0).all()) else None
        self.fine_labels = fine if bool((fine >= 0).all()) else None
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return len(self._shard)

    @property
    def size(self) -> tuple[int, int]:
        return self.canvas_size, self.canvas_size

    def _map(self, k: int) -> np.memmap:
        # opened lazily, per process (a DataLoader worker maps the files itself after fork)
        m = self._maps.get(k)
        if m is None:
            m = self._maps[k] = np.memmap(self._files[k], dtype=np.uint8, mode="r")
        return m

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def read(self, idx: torch.Tensor | list[int]) -> list[torch.Tensor]:
        """The JPEG bytes of items ``idx``: a list of uint8 1-D tensors."""
        out = []
        for i in torch.as_tensor(idx).tolist():
            k, a, b = int(self._shard[i]), int(self._start[i]), int(self._end[i])
            out.append(torch.from_numpy(np.array(self._map(k)[a:b])))
        return out

    def decode(self, idx: torch.Tensor | list[int], device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 [len(idx), 3, S, S] canvases (batched ``decode_jpeg``; nvJPEG when ``device`` is CUDA)."""
        imgs = decode_jpeg(self.read(idx), device=device)
        return torch.stack(imgs)

    def subset(self, idx: torch.Tensor | slice) -> CanvasSet:
        """Items ``idx`` decoded into an in-memory ``CanvasSet`` (for evaluation subsets)."""
        all_idx = torch.arange(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx)
        pick = lambda t: None if t is None else t[all_idx]  # noqa: E731
        return CanvasSet(self.decode(all_idx), labels=pick(self.labels), fine_labels=pick(self.fine_labels),
                         class_names=list(self.class_names), fine_names=list(self.fine_names), meta=dict(self.meta))

    @property
    def images(self) -> torch.Tensor:
        """Every canvas decoded (small sets only: this is what shards exist to avoid)."""
        warnings.warn(f"spatialssl: decoding all {len(self)} images of {self.root}/{self.split} into memory",
                      stacklevel=2)
        return self.decode(torch.arange(len(self)))


class _StepBatches(torch.utils.data.Dataset):
    def __init__(self, data: ShardSet, index: Callable[[int], torch.Tensor], start: int, end: int) -> None:
        self.data, self.index, self.start, self.end = data, index, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.data.decode(self.index(self.start + k))


def stream_batches(data: ShardSet, index: Callable[[int], torch.Tensor], start: int, end: int,
                   workers: int = 2, prefetch: int = 2) -> Iterator[torch.Tensor]:
    """Decoded batches for steps ``start .. end - 1``, in step order.

    ``index(step)`` gives this process's image indices for that step (the trainer's
    ``local_batch_indices``), so the order is deterministic from (seed, step) and a resumed run
    continues exactly. Decoding runs in ``workers`` DataLoader processes (0: in this one);
    at most ``workers * prefetch`` decoded batches wait in memory, whatever the data set's size.
    """
    ds = _StepBatches(data, index, start, end)
    if workers == 0:
        return (ds[k] for k in range(len(ds)))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=prefetch, persistent_workers=False)
    return iter(loader)
