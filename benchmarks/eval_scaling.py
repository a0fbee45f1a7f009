"""Time and peak memory of the evaluation paths that grow with the data (issue 10).

- ``knn``: ``probes.knn_votes`` (top-k chunked over queries and over the bank, merged) on
  synthetic L2-normalised features, bank N = 10k, 100k (D = 384, ViT-S, 1,000 queries) and
  1M (D = 128 and 200 queries, to keep a CPU run short and the bank at 512 MB).
- ``segmentation``: the whole protocol (``segmentation.run``) at the ViT-S/16 preset's
  sizes: 224 px eval input -> 14 x 14 x 384 patch features, 256 px masks, 150 classes,
  500 test images (``eval.dense_n_test``'s default); the probe trains 1 epoch on 64 images
  (batch 8): the benchmark is about scoring, which reduces each chunk of logits (argmax,
  per-image counts) instead of holding [500, 150, 256, 256] logits (19.7 GB in fp32).
- ``patch_pair``: the whole protocol (``patch_pair.run``) at the preset's sizes: 2,000 test
  images (``eval.n_test``) of 256 px, 8 pairs each, 96 px crops (``views.local_size``),
  crops cut and embedded in streamed batches of ``eval.batch_size`` (the 32,000 crops at
  once would be 3.5 GB); 20 probe epochs instead of 200 (the probe is not what scales).

Backbones are stubs with the preset's output shapes (average pooling and a fixed random
1x1 projection to 384 channels), so the numbers measure the evaluation code, not a ViT.
Each case runs in its own process; "extra peak" is the peak resident memory above what the
process held once the inputs (features, images, masks) were built. On a GPU
(``--device cuda``) it is ``torch.cuda.max_memory_allocated`` above the inputs instead.

    PYTHONPATH=src python benchmarks/eval_scaling.py                 # CPU, all cases
    PYTHONPATH=src python benchmarks/eval_scaling.py --device cuda   # a GPU
    PYTHONPATH=src python benchmarks/eval_scaling.py --case knn_1m   # one case
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CASES = ["knn_10k", "knn_100k", "knn_1m", "segmentation_vits", "patch_pair_vits"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stub(nn.Module):
    """Backbone API with a ViT-S/16's shapes: patch [B, 384, H/16, W/16], pooled [B, 384]."""

    embed_dim = 384

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 384, 1)

    def features(self, x: torch.Tensor):
        p = self.proj(F.avg_pool2d(x, 16))
        return p.mean((2, 3)), p

    def forward(self, x: torch.Tensor):
        return self.proj(x.mean((2, 3), keepdim=True)).flatten(1)


def context(splits: dict, device: str, **ev):
    from spatialssl import config
    from spatialssl.evals.features import EvalContext

    over = ["data.name=folder", "backbone.name=resnet_mini", "views.global_size=224", "views.local_size=96",
            "train.progress=false", "eval.random_floor=false", "eval.n_examples=0"]
    cfg = config.resolve([], over + [f"eval.{k}={v}" for k, v in ev.items()])
    return EvalContext(cfg, Stub(), "bench", device, None, 0, False, splits)


def run_case(case: str, device: str) -> dict:
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    if case.startswith("knn"):
        from spatialssl.evals.probes import knn_votes

        n, d, m = {"knn_10k": (10_000, 384, 1000), "knn_100k": (100_000, 384, 1000),
                   "knn_1m": (1_000_000, 128, 200)}[case]
        bank = torch.randn(n, d, device=device)
        labels = torch.randint(0, 1000, (n,), device=device)
        queries = torch.randn(m, d, device=device)
        info = {"N": n, "D": d, "queries": m}
        go = lambda: knn_votes(bank, labels, queries, 1000, k=20, t=0.07)  # noqa: E731
    else:
        from spatialssl.data.canvases import CanvasSet
        from spatialssl.evals import patch_pair, segmentation

        if case == "segmentation_vits":
            n_tr, n_te, size, c = 64, 500, 256, 150
            mk = lambda n: CanvasSet(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8),  # noqa: E731
                                     labels=torch.zeros(n, dtype=torch.long),
                                     semantic=torch.randint(0, c, (n, size, size)))
            ctx = context({"train": mk(n_tr), "test": mk(n_te)}, device, img_size=224, dense_epochs=1,
                          dense_batch_size=8, dense_n_train=0, dense_n_test=0, n_train=0, n_test=0)
            info = {"test images": n_te, "classes": c, "mask": size, "grid": "14x14", "D": 384}
            go = lambda: segmentation.run(ctx)  # noqa: E731
        else:
            n_te, size = 2000, 256
            te = CanvasSet(torch.randint(0, 256, (n_te, 3, size, size), dtype=torch.uint8),
                           labels=torch.randint(0, 10, (n_te,)))
            ctx = context({"test": te}, device, pp_epochs=20, pp_pairs_per_image=8, n_test=0)
            info = {"test images": n_te, "pairs": n_te * 8, "crop": 96, "D": 384}
            go = lambda: patch_pair.run(ctx)  # noqa: E731
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    before, peak_before = rss_mb(), peak_rss_mb()
    t0 = time.perf_counter()
    go()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    extra = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else peak_rss_mb() - max(before, peak_before)
    return {"case": case, **info, "seconds": round(dt, 2), "extra_peak_MB": round(max(extra, 0.0), 1),
            "inputs_MB": round(before, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--case", choices=CASES, default=None, help="run one case in this process")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.case:
        print(json.dumps(run_case(a.case, a.device)))
        return
    print(f"device {a.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| case | size | time (s) | extra peak memory (MB) | process memory with inputs (MB) |")
    print("|---|---|---|---|---|")
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case, "--device", a.device]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        size = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("case", "seconds", "extra_peak_MB", "inputs_MB"))
        print(f"| {case} | {size} | {r['seconds']} | {r['extra_peak_MB']} | {r['inputs_MB']} |", flush=True)


if __name__ == "__main__":
    main()
