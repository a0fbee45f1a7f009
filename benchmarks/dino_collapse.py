"""Why DINO collapses on the demo's small CNN, and which settings keep it off the collapse.

For each variant, a short DINO run on the demo's data and CNN (configs/demo.yaml with
framework.name=dino, batch 64, CPU) and, every ``--every`` steps, on one fixed batch of
global views through the teacher:
  z_cos      mean cosine between different images' bottleneck outputs (the normalised
             input of the head's last layer); 1 = every image maps to one direction
  logit_sd   std over images of the centred teacher logits (0 = the same output for all)
  t_H        per-image teacher entropy in nats (log K = uniform: the loss gives no signal)
  loss       the DINO loss of that step
Prints a table (first and last probe per variant).

Usage: PYTHONPATH=src python benchmarks/dino_collapse.py [--steps 100] [--every 20] [--variants base,bn,...]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spatialssl import config  # noqa: E402
from spatialssl.data import load_split  # noqa: E402
from spatialssl.engine.trainer import build, train_step  # noqa: E402
from spatialssl.frameworks.base import teacher_entropies  # noqa: E402

JIT04 = "views.jitter_strength=[0.4,0.4,0.2,0.1]"
VARIANTS = {
    "base": [],
    "lr2e-4": ["train.lr=0.0002"],
    "teacher_temp 0.02": ["framework.teacher_temp=0.02", "framework.warmup_teacher_temp=0.02"],
    "student_temp 0.2": ["framework.student_temp=0.2"],
    "jitter 0.4": [JIT04],
    "bn": ["framework.head_batch_norm=true"],
    "jitter 0.4 + lr 5e-4": [JIT04, "train.lr=0.0005"],
    "bn + lr 5e-4": ["framework.head_batch_norm=true", "train.lr=0.0005"],
    "bn + jitter 0.4": ["framework.head_batch_norm=true", JIT04],
    "demo_dino (bn + jitter 0.4 + lr 5e-4)": ["@demo_dino"],
}


@torch.no_grad()
def probe(run, x: torch.Tensor) -> dict[str, float]:
    fw = run.framework
    h = fw.teacher_head
    z = F.normalize(h.layers(fw.teacher_backbone(x)), dim=-1)
    b = z.shape[0]
    off = ~torch.eye(b, dtype=torch.bool)
    logits = h.last_layer(z)
    t_h = teacher_entropies(logits[None], fw.criterion.center, fw.criterion.teacher_temp)["teacher_entropy"]
    return {"z_cos": (z @ z.T)[off].mean().item(), "logit_sd": (logits - fw.criterion.center[0]).std(0).mean().item(),
            "t_H": t_h.item()}


def run_variant(overrides: list[str], steps: int, every: int, data) -> list[tuple[int, dict]]:
    presets = ["demo_dino"] if overrides[:1] == ["@demo_dino"] else ["demo"]
    ov = [o for o in overrides if not o.startswith("@")]
    cfg = config.resolve(presets, ["framework.name=dino", f"train.steps={steps}", "train.progress=false", *ov])
    run = build(cfg, data.size, torch.device("cpu"))
    run.framework.collect_logs = False
    g = torch.Generator().manual_seed(0)
    fixed = run.multicrop(data.images[:128], torch.Generator().manual_seed(1)).globals[0]
    rows = []
    for step in range(steps):
        idx = torch.randint(0, len(data), (cfg["train"]["batch_size"],), generator=g)
        loss = train_step(run, data.images[idx], step)["loss"].item()
        if step % every == 0 or step == steps - 1:
            rows.append((step, {"loss": loss, **probe(run, fixed)}))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--variants", default="", help="comma-separated names (default: all)")
    a = p.parse_args()
    names = a.variants.split(",") if a.variants else list(VARIANTS)
    data = load_split(config.resolve(["demo"], [])["data"], "train", progress=False)
    k = config.resolve(["demo"], [])["framework"]["out_dim"]
    print(f"DINO on the demo CNN, CPU ({torch.get_num_threads()} threads), {a.steps} steps; uniform t_H = log K = {math.log(k):.2f}")
    print("| variant | step | loss | z_cos | logit_sd | t_H |\n|---|---:|---:|---:|---:|---:|")
    for name in names:
        rows = run_variant(VARIANTS[name], a.steps, a.every, data)
        for step, r in (rows[1], rows[-1]):
            print(f"| {name} | {step} | {r['loss']:.3f} | {r['z_cos']:.3f} | {r['logit_sd']:.4f} | {r['t_H']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
