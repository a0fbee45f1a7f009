"""A run folder's training curve, ``metrics.jsonl``, read in one place and without torch.

The trainer appends one JSON object per logged step (``engine.monitor.RunLog``:
``{"step": 10, "loss_fw": ..., "loss_sp": ..., "sp_r2_dx": ...}``); the trainer (when it
resumes), the report and the study's scheduler all read it through ``parse_rows``, so a
line cut short by a kill mid-write, or anything that is not a JSON object, is left out the
same way everywhere.

>>> steps = [row["step"] for row in read_curve("runs/demo/byol")]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

CURVE = "metrics.jsonl"


def parse_rows(lines: Iterable[str]) -> list[tuple[str, dict]]:
    """(line, row) of each line that holds a JSON object; blank lines, a line cut short by an
    interrupted run and any other value are left out."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a kill mid-write
            continue
        if isinstance(row, dict):
            out.append((line, row))
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL log (``parse_rows``)."""
    return [row for _, row in parse_rows(Path(path).read_text().splitlines())]


def read_curve(run_dir: str | Path) -> list[dict]:
    """The training curve of a run folder: the rows of its ``metrics.jsonl``, in order; []
    when it has none."""
    path = Path(run_dir) / CURVE
    return read_jsonl(path) if path.exists() else []


def last_step(run_dir: str | Path) -> int:
    """The last step the curve records (0 when none): a cheap progress read (loading a
    ViT-S checkpoint to read its step would cost seconds)."""
    last = 0
    for row in read_curve(run_dir):
        try:
            last = max(last, int(row["step"]))
        except (KeyError, TypeError, ValueError):  # no step, or not a number
            pass
    return last
