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
def test_presets_leave_position_unreadable_from_view_statistics(preset):
    r = _r2(preset)
    assert r["dx"] < 0.1 and r["dy"] < 0.1, r


@pytest.mark.xfail(strict=True, reason="open (docs/sp.md 'Resampling'): roi_align's resampling makes a view's "
                                       "high-frequency content depend on its box size even when no view is upsampled")
@pytest.mark.parametrize("preset", ["demo", "dino_sp"])
def test_presets_leave_scale_unreadable_from_view_statistics(preset):
    assert _r2(preset)["ds"] < 0.1
