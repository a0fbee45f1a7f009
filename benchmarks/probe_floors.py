"""Random-init floors of the two spatial probes, per architecture, through ``spatialssl probe``.

Each architecture is built by timm at random init (seed 0, ``pretrained=False``), saved as a
safetensors file, and probed exactly as a user's pretrained weights would be
(``evals.pretrained.probe``: patch-pair R² of dx / dy / ds and jigsaw tile accuracy) on
PartsWorld at its 64 px render size. A pretrained backbone's probe numbers mean something
only above these floors. Small eval sizes keep it to a few CPU minutes:

    PYTHONPATH=src nice -n 10 python benchmarks/probe_floors.py [--archs resnet18,vit_tiny_patch16_224] \
        [--n-test 200] [--img 64] [--crop 32]

Printed as the Markdown table of docs/evaluations.md ("Probing a pretrained backbone").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from spatialssl.evals.pretrained import probe

ARCHS = ["resnet18", "convnext_atto", "vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2"]


def floors(arch: str, overrides: list[str], workdir: Path) -> tuple[dict, float]:
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    path = workdir / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    t0 = time.perf_counter()
    res = probe(path, arch, "patch_pair,jigsaw", workdir / arch, overrides, progress=False)
    return res, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--n-test", type=int, default=200, help="patch-pair test images (half probe-train, half test)")
    ap.add_argument("--jigsaw-train", type=int, default=300)
    ap.add_argument("--jigsaw-test", type=int, default=150)
    ap.add_argument("--img", type=int, default=64, help="eval image size (the whole image: jigsaw's puzzles)")
    ap.add_argument("--crop", type=int, default=32, help="patch-pair crop and jigsaw tile size")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    overrides = ["data.n_train=1000", "data.n_eval=500", f"eval.n_test={a.n_test}", "eval.random_floor=false",
                 f"eval.img_size={a.img}", f"eval.pp_crop_size={a.crop}", f"eval.jigsaw_tile_size={a.crop}",
                 f"eval.jigsaw_n_train={a.jigsaw_train}", f"eval.jigsaw_n_test={a.jigsaw_test}"]
    print(f"PartsWorld 64 px, eval image {a.img} px, crops / tiles {a.crop} px (ViTs: nearest multiple of the patch), "
          f"patch pairs on {a.n_test} test images, jigsaw {a.jigsaw_train} / {a.jigsaw_test} images, seed 0, "
          f"{a.threads} thread(s)\n")
    print("| architecture (random init) | params | pp R² dx | pp R² dy | pp R² ds | jigsaw tile acc (chance 0.111) "
          "| s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs.split(","):
            res, secs = floors(arch, overrides, Path(tmp))
            pp, jg = res["patch_pair"], res["jigsaw"]
            n = sum(p.numel() for p in timm.create_model(arch, pretrained=False, num_classes=0).parameters())
            print(f"| {arch} | {n / 1e6:.1f}M | {pp['r2_dx']:.3f} | {pp['r2_dy']:.3f} | {pp['r2_ds']:.3f} "
                  f"| {jg['tile_acc']:.3f} | {secs:.0f} |", flush=True)


if __name__ == "__main__":
    main()
