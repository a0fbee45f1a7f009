"""Rewrite committed per-item outcomes and example arrays (``metrics/<task>_outcomes.pt``,
``<task>_examples.pt``, as evaluations wrote them before ``spatialssl.compact``) as the
compact ``.npz`` files evaluations write now, checking that each loads back bit for bit
before the ``.pt`` is removed. The report reads either (``runfolder.read_items``).

    python benchmarks/compact_results.py results/ [--dry-run]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spatialssl import compact, runfolder  # noqa: E402


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def convert(path: Path, dry_run: bool = False) -> tuple[int, int]:
    """(bytes before, bytes after) of one ``.pt`` file converted to its ``.npz``."""
    what = "outcomes" if path.stem.endswith("_outcomes") else "examples"
    obj = torch.load(path, map_location="cpu", weights_only=what == "outcomes")
    task = path.stem[: -len(what) - 1]
    out = runfolder.items_path(path.parent.parent, task, what)
    if dry_run:
        out = Path("/tmp") / f"compact_check_{out.name}"
    compact.save(out, obj)
    if not same(obj, compact.load(out)):
        out.unlink()
        raise SystemExit(f"{path}: the compact copy differs from the original; left as it was")
    after = out.stat().st_size
    if dry_run:
        out.unlink()
    else:
        path.unlink()
    return path.stat().st_size if dry_run else 0, after


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", type=Path)
    p.add_argument("--dry-run", action="store_true", help="check and measure, change nothing")
    a = p.parse_args(argv)
    files = sorted([*a.root.rglob("metrics/*_outcomes.pt"), *a.root.rglob("metrics/*_examples.pt")])
    before = sum(f.stat().st_size for f in files)
    after = 0
    for f in files:
        after += convert(f, a.dry_run)[1]
    print(f"{len(files)} files: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB"
          + (" (dry run: nothing changed)" if a.dry_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
