"""The shortcut diagnostic (benchmarks/sp_shortcuts.py) on the shipped presets, cheaply:
few pairs, canvases shrunk to <= 48 px with the presets' own upsampling factors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "sp_shortcuts", Path(__file__).resolve().parents[1] / "benchmarks" / "sp_shortcuts.py")
shortcuts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shortcuts)

PAIRS = 800


def _r2(preset: str, *overrides: str, side: int = 48) -> dict[str, float]:
    cfg = shortcuts.preset_config(preset, list(overrides))
    return shortcuts.shortcut_r2(cfg, PAIRS, scale=min(1.0, side / cfg["data"]["canvas_size"]))


def test_the_diagnostic_finds_the_blur_shortcut():
    """96 px local views from 64 px canvases (upsampled 2.4-6.7x): ds readable, as measured
    in issue 9 (R^2 0.64 from two Laplacian energies)."""
    r = _r2("", "data.canvas_size=64", side=16)
    assert r["ds"] > 0.5, r


@pytest.mark.parametrize("preset", shortcuts.PRESETS)
def test_presets_leave_position_and_scale_unreadable_from_view_statistics(preset):
    """With antialiased resampling and no local view enlarged, neither where nor how big a
    view's box is shows in its low-level statistics (docs/sp.md "Resampling")."""
    r = _r2(preset)
    assert r["dx"] < 0.1 and r["dy"] < 0.1 and r["ds"] < 0.1, r


def test_enlarged_local_views_give_their_scale_away():
    """The rule behind the presets' canvases: dino_sp's views on a 288 px canvas (smallest
    boxes enlarged 1.5x) let the statistics tell ds again."""
    assert _r2("dino_sp", "data.canvas_size=288")["ds"] > 0.3
