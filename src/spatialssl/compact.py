"""Small files for results that are committed: nested dicts and lists of tensors, numbers
and strings in one compressed ``.npz``, losslessly.

An evaluation's per-item outcomes repeat themselves (every patch-pair metric carries the
same ``group`` array; a floor's targets equal the run's) and hold 0/1 values as float32:
saved as they are, a CPU study's outcomes were 26 MiB, over what a GPU call can carry.
``save`` stores each distinct array once (by content), in the narrowest dtype that holds
its values exactly (float32 0/1 as uint8, int64 image ids as int16, ...), records the
original dtype, and compresses; ``load`` gives back the same structure with the original
dtypes, bit for bit (tests/test_compact.py). numpy's ``savez_compressed`` does the
compression; nothing here is pickled, so a file loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "spatialssl-compact-1"
_INT_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64)


def _narrow(a: np.ndarray) -> np.ndarray:
    """The array in the narrowest dtype that holds every value exactly."""
    if a.dtype == np.bool_ or a.size == 0:
        return a
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            return a
    elif not np.issubdtype(a.dtype, np.integer):
        return a
    lo, hi = a.min(), a.max()
    for dt in _INT_DTYPES:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            if np.dtype(dt).itemsize < a.dtype.itemsize:
                return a.astype(dt)
            return a
    return a


def _encode(obj: Any, arrays: dict[str, np.ndarray], seen: dict[str, str]) -> Any:
    if isinstance(obj, torch.Tensor):
        a = obj.detach().cpu().contiguous()
        dtype = str(a.dtype).replace("torch.", "")
        if a.dtype == torch.bfloat16:
            a = a.float()
        arr = a.numpy()
        h = hashlib.sha1(f"{dtype}{arr.shape}".encode() + arr.tobytes()).hexdigest()
        if h not in seen:
            seen[h] = f"a{len(arrays)}"
            arrays[seen[h]] = _narrow(arr)
        return {"__tensor__": seen[h], "dtype": dtype}
    if isinstance(obj, np.ndarray):
        return _encode(torch.from_numpy(np.ascontiguousarray(obj)), arrays, seen) | {"numpy": True}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("compact.save: dict keys must be strings")
        return {"__dict__": {k: _encode(v, arrays, seen) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays, seen) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"compact.save: cannot store a {type(obj).__name__}")


def _decode(obj: Any, arrays) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        arr = arrays[obj["__tensor__"]]
        t = torch.from_numpy(np.array(arr)).to(getattr(torch, obj["dtype"]))
        return t.numpy() if obj.get("numpy") else t
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _decode(v, arrays) for k, v in obj["__dict__"].items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def save(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` to ``path`` (an ``.npz``), atomically (a temporary file, then a rename)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    index = _encode(obj, arrays, {})
    buf = io.BytesIO()
    np.savez_compressed(buf, __index__=np.frombuffer(json.dumps({"format": FORMAT, "obj": index}).encode(),
                                                     dtype=np.uint8), **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def load(path: str | Path) -> Any:
    """What ``save`` wrote, with the original dtypes (ValueError when it is not such a file)."""
    with np.load(path, allow_pickle=False) as z:
        if "__index__" not in z.files:
            raise ValueError(f"{path}: not a spatialssl compact file")
        index = json.loads(z["__index__"].tobytes().decode())
        if index.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown compact format {index.get('format')!r}")
        arrays = {k: z[k] for k in z.files if k != "__index__"}
    return _decode(index["obj"], arrays)
