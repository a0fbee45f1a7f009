"""Release the CPU study's seed-0 pairs as ``checkpoints/<cell>/`` (what ``make demo`` evaluates).

For every framework whose seed-0 pair (``<fw>-cnn-s0`` and ``<fw>_sp-cnn-s0``) is complete
in the study (``results/study/cpu``, run folders in ``runs/study/cpu``), copies into
``checkpoints/<cell>/``:

  backbone.safetensors   the evaluated backbone (timm-loadable state dict; for DINO/iBOT/BYOL/MoCo
                         the teacher/momentum encoder, as the run exported it)
  config.yaml            the resolved config the run trained with
  status.json            step / steps / complete
  metrics.jsonl          the training curve;   train.log  the trainer's log
  metrics/<task>.json    the study's evaluations (8 protocols, 3 probe seeds)
  command.txt            the study call that trained it; commit.txt: the code's commit

and rewrites the table in ``checkpoints/README.md`` from those metrics. Pairs not complete
are left out (and said so). Earlier released folders not in this set are removed.

Usage:
    python benchmarks/release.py [--results results/study/cpu] [--runs runs/study/cpu] [--out checkpoints]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from spatialssl import runfolder  # noqa: E402
from spatialssl.study.plan import FRAMEWORKS, Cell, read_json  # noqa: E402

FILES = (runfolder.BACKBONE, runfolder.CONFIG, runfolder.STATUS, runfolder.CURVE, runfolder.LOG)
RESULT_FILES = ("command.txt", "commit.txt")
ROWS = [("knn", "top1", "kNN"), ("linear", "top1", "linear"), ("patch_pair", "r2_dx", "pp R² dx"),
        ("patch_pair", "r2_dy", "pp R² dy"), ("patch_pair", "r2_ds", "pp R² ds"), ("jigsaw", "tile_acc", "jigsaw tile")]


def complete(results: Path, cell: Cell) -> bool:
    rec = read_json(results / cell.name / "cell.json")
    return bool(rec.get("complete"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results/study/cpu")
    p.add_argument("--runs", default="runs/study/cpu")
    p.add_argument("--out", default=str(REPO / "checkpoints"))
    args = p.parse_args()
    results, runs, out = Path(args.results), Path(args.runs), Path(args.out)
    released, missing = [], []
    for fw in FRAMEWORKS:
        pair = [Cell(fw, arm, "cnn", 0) for arm in ("base", "sp")]
        if not all(complete(results, c) and (runs / c.name / runfolder.BACKBONE).exists() for c in pair):
            missing.append(fw)
            continue
        released += pair
    names = {c.name for c in released}
    for old in out.iterdir():
        if old.is_dir() and old.name not in names:
            shutil.rmtree(old)
    table = ["| run | " + " | ".join(r[2] for r in ROWS) + " |", "|---" * (len(ROWS) + 1) + "|"]
    floor = None
    for cell in released:
        dst = out / cell.name
        (dst / "metrics").mkdir(parents=True, exist_ok=True)
        for f in FILES:
            if (runs / cell.name / f).exists():
                shutil.copy(runs / cell.name / f, dst / f)
        for f in RESULT_FILES:
            if (results / cell.name / f).exists():
                shutil.copy(results / cell.name / f, dst / f)
        for m in (results / cell.name / "metrics").glob("*.json"):
            shutil.copy(m, dst / "metrics" / m.name)
        vals = {t: json.loads((dst / "metrics" / f"{t}.json").read_text())["values"]
                for t, _, _ in ROWS if (dst / "metrics" / f"{t}.json").exists()}
        table.append(f"| {cell.name} | " + " | ".join(f"{vals[t][k]:.3f}" if t in vals and k in vals[t] else "–"
                                                      for t, k, _ in ROWS) + " |")
        floor = floor or vals
    if floor:
        table.append("| random-init floor | " + " | ".join(
            f"{floor[t][f'random_{k}']:.3f}" if t in floor and f"random_{k}" in floor[t] else "–"
            for t, k, _ in ROWS) + " |")
    readme = out / "README.md"
    text = readme.read_text() if readme.exists() else ""
    start, end = "<!-- release table -->", "<!-- /release table -->"
    block = start + "\n" + "\n".join(table) + "\n" + end
    text = text[:text.index(start)] + block + text[text.index(end) + len(end):] if start in text else text + "\n" + block + "\n"
    readme.write_text(text)
    print("\n".join(table))
    print(f"released: {', '.join(sorted(names)) or 'none'}; not complete: {', '.join(missing) or 'none'}")


if __name__ == "__main__":
    main()
