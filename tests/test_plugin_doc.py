"""docs/plugin.md runs as written: SP in a user's own loop (under 20 lines of code), and a
user's framework registered and trained with SP by the spatialssl trainer."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from spatialssl import config
from spatialssl.engine.trainer import pretrain
from spatialssl.frameworks import REGISTRY

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugin.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def code_lines(src: str) -> list[str]:
    return [ln for ln in src.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_own_loop_snippet_runs_and_is_short():
    own_loop = python_blocks()[0]
    n = len(code_lines(own_loop))
    assert n < 20 and f"is {n} lines of code" in DOC.read_text()  # the doc states the count
    ns: dict = {}
    exec(compile(own_loop, f"{DOC}:own-loop", "exec"), ns)
    assert math.isfinite(ns["loss"].item())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ns["sp"].parameters())


@pytest.fixture
def registry_guard():
    """The doc registers 'simsiam'; leave the registry as it was."""
    before = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(before)


def test_registered_framework_trains_with_sp(tmp_path, registry_guard):
    blocks = python_blocks()
    exec(compile(blocks[1], f"{DOC}:framework", "exec"), {})
    assert "simsiam" in REGISTRY
    assert 'config.resolve([preset], ["framework.name=simsiam"' in blocks[2]  # the usage shown
    tiny = ["backbone.name=resnet_mini", "backbone.width=8", "backbone.small_stem=true", "views.global_size=32",
            "views.local_size=16", "framework.hidden_dim=64", "framework.proj_dim=32", "train.steps=2",
            "train.batch_size=8", "train.log_every=1", "train.progress=false", f"out_dir={tmp_path / 'run'}",
            "framework.name=simsiam"]
    g = torch.Generator().manual_seed(0)
    from spatialssl.data.canvases import CanvasSet

    data = CanvasSet(torch.randint(0, 256, (16, 3, 48, 48), dtype=torch.uint8, generator=g),
                     labels=torch.zeros(16, dtype=torch.long))
    out = pretrain(config.resolve(["simclr_sp"], tiny), data=data)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert len(rows) == 2 and all(math.isfinite(r["loss_fw"]) and math.isfinite(r["loss_sp"]) for r in rows)
