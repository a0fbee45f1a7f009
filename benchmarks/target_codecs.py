"""Lossless codecs for dense targets (masks, depth) in prepared shards: size and speed.

Renders 64 PartsWorld images at 128 px and stores their semantic / part masks and float32
depth maps as raw bytes, zlib-compressed raw arrays (what ``shards.encode_target`` does),
PNG (torchvision, masks only: ``encode_png`` takes uint8), and byte-shuffled zlib (depth);
prints KiB per image, encode / decode per second, and whether the round trip is exact.

    PYTHONPATH=src python benchmarks/target_codecs.py
"""

from __future__ import annotations

import time
import zlib

import numpy as np
import torch
from torchvision.io import decode_png, encode_png

from spatialssl.data import partsworld


def bench(name, arrs, enc, dec):
    t = time.perf_counter()
    blobs = [enc(a) for a in arrs]
    te = time.perf_counter() - t
    t = time.perf_counter()
    outs = [dec(b) for b in blobs]
    td = time.perf_counter() - t
    ok = all(np.array_equal(o, a) for o, a in zip(outs, arrs))
    raw = sum(a.nbytes for a in arrs)
    print(f"{name:28s} {sum(len(b) for b in blobs) / len(arrs) / 1024:7.2f} KiB/img (raw {raw / len(arrs) / 1024:.1f})"
          f"  enc {len(arrs) / te:7.0f}/s dec {len(arrs) / td:7.0f}/s lossless={ok}")


def main() -> None:
    torch.set_num_threads(1)
    s = 128
    cfg = partsworld.PartsWorldConfig(size=s, n_train=64, n_val=8, n_test=8, n_ood=8)
    cs = partsworld.render(cfg, "train", 0, 64)
    for kind in ("semantic", "parts"):
        m = [a.numpy().astype(np.uint8) for a in getattr(cs, kind)]
        bench(f"{kind} raw uint8", m, lambda a: a.tobytes(), lambda b: np.frombuffer(b, np.uint8).reshape(s, s))
        bench(f"{kind} zlib-6 uint8", m, lambda a: zlib.compress(a.tobytes(), 6),
              lambda b: np.frombuffer(zlib.decompress(b), np.uint8).reshape(s, s))
        bench(f"{kind} png (torchvision)", m, lambda a: encode_png(torch.from_numpy(a)[None]).numpy().tobytes(),
              lambda b: decode_png(torch.frombuffer(bytearray(b), dtype=torch.uint8))[0].numpy())
    d = [a.numpy() for a in cs.depth]
    bench("depth raw f32", d, lambda a: a.tobytes(), lambda b: np.frombuffer(b, np.float32).reshape(s, s))
    bench("depth zlib-6 f32", d, lambda a: zlib.compress(a.tobytes(), 6),
          lambda b: np.frombuffer(zlib.decompress(b), np.float32).reshape(s, s))
    bench("depth byteshuffle+zlib f32", d, lambda a: zlib.compress(a.view(np.uint8).reshape(-1, 4).T.copy().tobytes(), 6),
          lambda b: np.frombuffer(zlib.decompress(b), np.uint8).reshape(4, -1).T.copy().view(np.float32).reshape(s, s))


if __name__ == "__main__":
    main()
