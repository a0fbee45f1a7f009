"""docs/plugin.md runs as written: SP in a user's own loop (under 20 lines of code), and a
user's framework registered and trained with SP by the spatialssl trainer."""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
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


def test_own_loop_draws_pairs_as_the_trainer_does_and_warns_of_nothing(caplog, monkeypatch):
    """The loop's views come from ``MultiCrop.from_config``, as the trainer's: every valid
    pair is ``sp.min_gap`` px apart, the SP loss is given ``sp_valid``, and neither the
    config nor the loop warns. Planted, each fails: the loop's former
    ``MultiCrop(cfg["views"], n_local=4, max_iou=...)`` (pairs touch: min_gap 0), the SP
    call without ``v.sp_valid``, the former config (16 px local views enlarged from 5% boxes)."""
    from spatialssl import geometry
    from spatialssl import sp as sp_mod
    from spatialssl.views import MultiCrop

    monkeypatch.setattr(config, "_warned", set())  # a config's warnings are logged once per process
    drawn, given = [], []
    real_call, real_forward = MultiCrop.__call__, sp_mod.SpatialPrediction.forward

    def call(self, *args, **kwargs):
        drawn.append(real_call(self, *args, **kwargs))
        return drawn[-1]

    def forward(self, emb, boxes, pairs, valid=None, n_valid=None):
        given.append(valid)
        return real_forward(self, emb, boxes, pairs, valid, n_valid)

    monkeypatch.setattr(MultiCrop, "__call__", call)
    monkeypatch.setattr(sp_mod.SpatialPrediction, "forward", forward)
    ns: dict = {}
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="spatialssl"):
        warnings.simplefilter("error")
        exec(compile(python_blocks()[0], f"{DOC}:own-loop", "exec"), ns)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    cfg = ns["cfg"]
    assert cfg["sp"]["min_gap"] == 3.0 and sp_mod.config_warnings(cfg) == []
    # the batches the loop trained on, and a larger draw from the same MultiCrop
    ns["crops"](torch.randint(0, 256, (512, 3, 64, 64), dtype=torch.uint8))  # recorded by the spy
    assert len(drawn) == 4 and len(given) == 3
    assert all(valid is v.sp_valid for v, valid in zip(drawn, given))  # the loss leaves the fallback pairs out
    for v in drawn:
        a, b = v.local_boxes[v.sp_pairs[:, 0]], v.local_boxes[v.sp_pairs[:, 1]]  # [P, B, 4]
        gap = geometry.box_separation(a, b)
        assert (gap[v.sp_valid] >= cfg["sp"]["min_gap"] - 1e-6).all()
    assert float(drawn[-1].sp_valid.float().mean()) > 0.99  # few fallbacks at these settings


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


def test_the_docs_compare_command_reports_a_marked_pair(tmp_path, monkeypatch, registry_guard):
    """docs/plugin.md's `compare --plugin` command, at the tiny budget: the plugin's framework
    and its + SP arm train in worker processes (which import the plugin), and the report marks
    the pair (✓, ✗ or ≈ on every key row). Plant: the workers not importing the plugin -> the
    cells fail (unknown framework)."""
    from spatialssl.cli import main

    blocks = python_blocks()
    (tmp_path / "my_simsiam.py").write_text(blocks[1])
    monkeypatch.chdir(tmp_path)
    line = next(ln.strip() for ln in DOC.read_text().splitlines() if ln.strip().startswith("spatialssl compare"))
    argv = line.split()[1:]
    argv[argv.index("small")] = "tiny"
    argv[argv.index("--out") + 1] = str(tmp_path / "pair")
    argv += ["--seeds", "0", "--tasks", "knn,linear", "--set", "framework.hidden_dim=64", "--set", "framework.proj_dim=32"]
    assert main(argv) == 0
    report = (tmp_path / "pair" / "report" / "report.md").read_text()
    rows = [r for r in report.splitlines() if r.startswith("| kNN top-1") or r.startswith("| linear top-1")]
    assert rows and all(any(m in r for m in ("✓", "✗", "≈")) for r in rows), rows
    assert "NOT COMPARABLE" not in report
