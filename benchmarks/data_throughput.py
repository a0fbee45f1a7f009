"""Data-pipeline throughput: prepared shards vs torchvision's ImageFolder + DataLoader.

Makes a synthetic ImageFolder of photo-sized JPEGs (smooth random images, 500x375 px, in
a temporary folder), then measures, on this machine:

- prepare time (decode, resize to the canvas, JPEG-encode, write shards) per 10k images;
- images/s of the streamed pipeline (``shards.stream_batches``: batched JPEG decode of the
  prepared canvases) with 0 (in process), 1 and 2 DataLoader workers, and per worker;
- the same for torchvision's ``ImageFolder`` + ``DataLoader`` decoding the original files
  and resizing them to the canvas (shorter side, centre crop), 1 and 2 workers;
- peak RSS growth (after its imports) of a fresh process streaming three passes over the
  prepared set, beside the in-memory loader's for the same folder;
- with ``--eval``: images/s of the evaluations' streamed feature extraction
  (``evals.features.extract`` over the whole prepared split, decoded in 0 / 1 / 2
  DataLoader workers, worker start-up included) with a stub backbone (global average
  pooling: the pipeline's own ceiling), the demo's ``resnet_mini`` at its 32 px eval size,
  and ViT-Ti/16 at 224 px; and the peak RSS growth of a fresh process extracting features of
  the whole split streamed, beside extracting them from the in-memory folder loader's set.
  ``--only-eval`` skips the training-pipeline rows.

    PYTHONPATH=src python benchmarks/data_throughput.py [--n 2000] [--canvas 256] [--batch 64] [--eval]

Prints a Markdown table. No GPU needed (``--device cuda`` adds nvJPEG decode when there is one).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spatialssl.data import shards


def make_folder(root: Path, n: int, classes: int = 10, size=(500, 375), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    for i in range(n):
        d = root / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.01, 0.08, 4)
        img = np.stack([128 + 90 * np.sin(xx * f[0] + yy * f[1] + c) * np.cos(xx * f[2] - yy * f[3] * c)
                        for c in range(3)], -1)
        img += rng.normal(0, 8, img.shape)  # some texture, so JPEG has work to do
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=90)


def _child_rss(out: Path, src: Path, canvas: int, batch: int, mode: str) -> float:
    """Peak RSS growth (MiB) of a fresh process after its imports: Linux's peak-RSS counter
    (VmHWM) is reset once the imports are done (``clear_refs``) and read at the end. Streaming
    decodes in the process itself (workers=0), so all of the pipeline's memory is counted."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from spatialssl.data import shards, folders\n"
        "def rss(k):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(k)) / 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5'); base = rss('VmRSS')\n"
        f"mode, out, src, b = {mode!r}, {str(out)!r}, {str(src)!r}, {batch}\n"
        "if mode == 'stream':\n"
        "    ds = shards.ShardSet(out, 'train'); n = len(ds); perm = torch.randperm(n)\n"
        "    idx = lambda s: perm[(torch.arange(b) + s * b) % n]\n"
        "    for x in shards.stream_batches(ds, idx, 0, 3 * n // b, workers=0): pass\n"
        "else:\n"
        f"    d = folders.load_classification(src, canvas_size={canvas}, progress=False)\n"
        "print(rss('VmHWM') - base)\n"
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def _child_extract_rss(out: Path, src: Path, canvas: int, batch: int, mode: str) -> tuple[float, float]:
    """Peak growth (MiB) of a fresh process's *anonymous* memory (``RssAnon``, sampled every
    2 ms by a thread) while ``evals.features.extract`` runs over the whole split: streamed
    from the shards (``extract``, decoding in process) or from the in-memory folder loader's
    set (``extract_memory``). Anonymous memory, because the memory-mapped shard files' pages
    also count in the RSS (``RssFile``: page cache the kernel may drop, growing with the bytes
    read, 66 MB for 2,000 canvases here); returns (anonymous peak growth, VmHWM growth)."""
    import subprocess
    import sys

    code = (
        "import threading, time, torch; torch.set_num_threads(1)\n"
        "from spatialssl.data import shards, folders\n"
        "from spatialssl.evals.features import extract\n"
        "def rss(k):\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(k)) / 1024\n"
        "class Pool(torch.nn.Module):\n"
        "    embed_dim = 3\n"
        "    def features(self, x): return x.mean((2, 3)), None\n"
        "open('/proc/self/clear_refs', 'w').write('5'); base, hwm0 = rss('RssAnon'), rss('VmRSS')\n"
        "peak, done = [0.0], [False]\n"
        "def watch():\n"
        "    while not done[0]:\n"
        "        peak[0] = max(peak[0], rss('RssAnon') - base); time.sleep(0.002)\n"
        "t = threading.Thread(target=watch); t.start()\n"
        f"mode, out, src, b = {mode!r}, {str(out)!r}, {str(src)!r}, {batch}\n"
        "if mode == 'extract':\n"
        "    f, _ = extract(Pool(), shards.ShardSet(out, 'train'), 224, b, workers=0, progress=False)\n"
        "else:\n"
        f"    d = folders.load_classification(src, canvas_size={canvas}, progress=False)\n"
        "    f, _ = extract(Pool(), d.images, 224, b, progress=False)\n"
        "done[0] = True; t.join()\n"
        "print(peak[0], rss('VmHWM') - hwm0)\n"
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    anon, hwm = res.stdout.strip().splitlines()[-1].split()
    return float(anon), float(hwm)


def bench_stream(ds: shards.ShardSet, batch: int, workers: int, steps: int, device: str = "cpu") -> float:
    n = len(ds)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    index = lambda s: perm[(torch.arange(batch) + s * batch) % n]  # noqa: E731
    if device != "cpu":
        t0 = time.perf_counter()
        for s in range(steps):
            ds.decode(index(s), device=device)
        torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - t0)
    it = shards.stream_batches(ds, index, 0, steps + 2, workers=workers, prefetch=2)
    next(it), next(it)  # workers started
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch / (time.perf_counter() - t0)


class Pool(torch.nn.Module):
    """A stub backbone: global average pooling (the extraction pipeline's own ceiling)."""

    embed_dim = 3

    def features(self, x: torch.Tensor):
        return x.mean((2, 3)), None


def bench_extract(ds: shards.ShardSet, backbone, img_size: int, batch: int, workers: int) -> float:
    """img/s of ``evals.features.extract`` over the whole prepared split (workers' start included)."""
    from spatialssl.evals.features import extract

    extract(backbone, ds.select(torch.arange(min(len(ds), batch))), img_size, batch, workers=0, progress=False)
    t0 = time.perf_counter()
    f, _ = extract(backbone, ds, img_size, batch, workers=workers, progress=False)
    assert len(f) == len(ds)
    return len(ds) / (time.perf_counter() - t0)


def eval_rows(ds: shards.ShardSet, out: Path, src: Path, canvas: int, batch: int) -> list[tuple[str, str, str]]:
    from spatialssl import config
    from spatialssl.backbones import create_backbone

    rows = []
    torch.manual_seed(0)
    demo = create_backbone(config.resolve(["demo"], [])["backbone"])
    vit = create_backbone(config.resolve([], ["backbone.name=vit_tiny"])["backbone"])
    for w in (0, 1, 2):
        ips = bench_extract(ds, Pool(), 224, batch, w)
        rows.append((f"eval features, stub backbone, {w} worker(s)", f"{ips:.0f} img/s",
                     f"whole split ({len(ds)}) streamed: decode {canvas} px + resize to 224 + pool"))
    for name, net, size in (("resnet_mini (demo)", demo, 32), ("ViT-Ti/16", vit, 224)):
        for w in (0, 2):
            ips = bench_extract(ds, net, size, batch, w)
            rows.append((f"eval features, {name} at {size} px, {w} worker(s)", f"{ips:.0f} img/s",
                         "the backbone's forward dominates" if size == 224 else "decode and forward share the 2 cores"))
    for mode in ("extract", "extract_memory"):
        anon, hwm = _child_extract_rss(out, src, canvas, batch, mode)
        what = ("eval features of the whole split streamed from the shards (decoded in process)" if mode == "extract"
                else "the same features from the in-memory folder loader's set")
        rows.append((f"peak anonymous memory, {mode}", f"{anon:.0f} MiB",
                     f"{what}, growth after imports (VmHWM growth {hwm:.0f} MiB, memory-mapped pages included); "
                     f"set decoded {len(ds) * 3 * canvas ** 2 / 2**20:.0f} MiB, one batch at 224 px in fp32 "
                     f"{batch * 3 * 224 ** 2 * 4 / 2**20:.0f} MiB"))
    return rows


def bench_imagefolder(root: Path, canvas: int, batch: int, workers: int, steps: int) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize(canvas), transforms.CenterCrop(canvas), transforms.PILToTensor()])
    ds = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0), drop_last=True)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    done = 0
    for _ in range(steps):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
        done += batch
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="images in the synthetic folder")
    ap.add_argument("--canvas", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=15, help="batches timed per setting")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", default="", help="keep the generated folders here")
    ap.add_argument("--eval", action="store_true", help="also time the evaluations' streamed feature extraction")
    ap.add_argument("--only-eval", action="store_true", help="only the prepare row and the --eval rows")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="spatialssl-data-bench-"))
    rows = []
    try:
        src, out = tmp / "folder", tmp / "shards"
        if not src.exists():
            make_folder(src, a.n)
        t0 = time.perf_counter()
        shards.prepare_folder(src, out, canvas_size=a.canvas, shard_size=1024, workers=2, progress=False)
        dt = time.perf_counter() - t0
        ds = shards.ShardSet(out, "train")
        disk = sum(p.stat().st_size for p in out.rglob("*.bin")) / 2**20
        rows.append(("prepare (2 threads)", f"{dt / a.n * 1e4:.0f} s per 10k images",
                     f"{disk:.0f} MiB of JPEG for {a.n} canvases ({disk * 2**20 / a.n / 1024:.0f} KiB each; "
                     f"decoded {a.n * 3 * a.canvas ** 2 / 2**20:.0f} MiB)"))
        if a.eval or a.only_eval:
            rows += eval_rows(ds, out, src, a.canvas, a.batch)
        for w in (() if a.only_eval else (0, 1, 2)):
            ips = bench_stream(ds, a.batch, w, a.steps)
            per = f"{ips / max(w, 1):.0f} per worker" if w else "in process"
            rows.append((f"shards, {w} worker(s)", f"{ips:.0f} img/s", per))
        if not a.only_eval:  # the training pipeline's other rows
            # the alternative format: decoded canvases as one raw uint8 memmap (no decode, 8x the disk)
            raw_path = tmp / "raw.u8"
            raw = np.lib.format.open_memmap(raw_path, mode="w+", dtype=np.uint8, shape=(len(ds), 3, a.canvas, a.canvas))
            for i in range(0, len(ds), 256):
                raw[i:i + 256] = ds.decode(torch.arange(i, min(i + 256, len(ds)))).numpy()
            raw.flush()
            raw = np.load(raw_path, mmap_mode="r")
            perm = torch.randperm(len(ds)).numpy()
            t0 = time.perf_counter()
            for s in range(a.steps):
                torch.from_numpy(raw[np.sort(perm[(np.arange(a.batch) + s * a.batch) % len(ds)])])
            ips = a.steps * a.batch / (time.perf_counter() - t0)
            rows.append(("raw uint8 memmap, in process", f"{ips:.0f} img/s",
                         f"{raw_path.stat().st_size / 2**20:.0f} MiB on disk ({raw_path.stat().st_size / max(disk * 2**20, 1):.1f}x "
                         f"the JPEG shards); page cache warm"))
            if a.device != "cpu" and torch.cuda.is_available():
                ips = bench_stream(ds, a.batch, 0, a.steps, device=a.device)
                rows.append(("shards, nvJPEG decode on " + torch.cuda.get_device_name(), f"{ips:.0f} img/s", ""))
            for w in (1, 2):
                ips = bench_imagefolder(src, a.canvas, a.batch, w, a.steps)
                rows.append((f"torchvision ImageFolder, {w} worker(s)", f"{ips:.0f} img/s",
                             f"{ips / w:.0f} per worker (decodes the 500x375 originals)"))
            # bounded memory: a fresh process streams the prepared set (3 passes, decoding in process)
            buffer_imgs = a.batch
            for mode in ("stream", "memory"):
                rss = _child_rss(out, src, a.canvas, a.batch, mode)
                what = (f"streaming 3 passes over {len(ds)} images (decoded in process), growth after imports"
                        if mode == "stream" else "in-memory loader (folders.load_classification) of the same folder, growth after imports")
                rows.append((f"peak RSS, {mode}", f"{rss:.0f} MiB",
                             f"{what}; one batch = {buffer_imgs} canvases = {buffer_imgs * 3 * a.canvas ** 2 / 2**20:.0f} MiB; "
                             f"set decoded {len(ds) * 3 * a.canvas ** 2 / 2**20:.0f} MiB"))
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{a.n} synthetic 500x375 JPEGs, canvas {a.canvas}, batch {a.batch}, {os.cpu_count()} CPUs, "
          f"torch threads 1\n")
    print("| setting | throughput | notes |\n|---|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
