"""Host memory of one training step of a preset, per image, measured on the CPU in fp32.

For a GPU-memory *estimate* where no GPU is at hand: the step (multi-crop from uint8 canvases
at the preset's canvas, forward, backward, AdamW) runs in a fresh subprocess at a few batch
sizes, and the peak resident set size of each is read from ``resource.getrusage``; the slope
over batch size is the memory one more image costs (activations, views, canvases), the
intercept the model, optimiser state and runtime. fp32 on the CPU: bf16 autocast on a GPU
keeps most activations in half the bytes, so expect less there; ``benchmarks/throughput.py``
measures the real peak on a GPU (``peak GiB`` columns).

    PYTHONPATH=src python benchmarks/step_memory.py -c imagenet100_vits16_dino_sp --batches 2,4,6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
from spatialssl import config
from spatialssl.engine.trainer import build, train_step
preset, batch, sp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
cfg = config.resolve([preset], [f"train.batch_size={batch}", "train.progress=false", f"sp.enabled={sp}",
                                "train.steps=10", "train.compile=false"])
side = cfg["data"]["canvas_size"]
run = build(cfg, (side, side), torch.device("cpu"))
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8, generator=g)
for i in range(2):
    train_step(run, x, i)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_mib(preset: str, batch: int, sp: bool) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, preset, str(batch), str(sp).lower()],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--preset", default="imagenet100_vits16_dino_sp")
    ap.add_argument("--batches", default="2,4,6")
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    print(f"host memory of a training step, {a.preset}, fp32 on the CPU (one thread), peak RSS per batch size\n")
    print("| SP | " + " | ".join(f"batch {b}" for b in batches) + " | MiB per image (slope) | intercept MiB |")
    print("|---|" + "---:|" * (len(batches) + 2))
    for sp in (False, True):
        peaks = [peak_mib(a.preset, b, sp) for b in batches]
        n = len(batches)
        mb, mp = sum(batches) / n, sum(peaks) / n
        slope = sum((b - mb) * (p - mp) for b, p in zip(batches, peaks)) / sum((b - mb) ** 2 for b in batches)
        print(f"| {'on' if sp else 'off'} | " + " | ".join(f"{p:,.0f}" for p in peaks)
              + f" | {slope:,.0f} | {mp - slope * mb:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
