"""Schedules, precomputed once per run and indexed by the global step (as DINO does)."""

from __future__ import annotations

import math

import torch


def cosine(base: float, final: float, steps: int, warmup_steps: int = 0, warmup_start: float = 0.0) -> torch.Tensor:
    """Linear warmup from ``warmup_start`` to ``base`` over ``warmup_steps``, then a cosine
    from ``base`` to ``final``; float64 [steps], its length asserted."""
    warmup_steps = min(warmup_steps, steps)
    warm = torch.linspace(warmup_start, base, warmup_steps + 1, dtype=torch.float64)[:-1] if warmup_steps else torch.zeros(0, dtype=torch.float64)
    n = steps - warmup_steps
    t = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    cos = final + 0.5 * (base - final) * (1 + torch.cos(math.pi * t))
    out = torch.cat([warm, cos])
    assert out.numel() == steps, (out.numel(), steps)
    return out


def linear_then_constant(start: float, end: float, ramp_steps: int, steps: int) -> torch.Tensor:
    """``start`` -> ``end`` linearly over ``ramp_steps``, then ``end``; float64 [steps]."""
    ramp_steps = min(ramp_steps, steps)
    ramp = torch.linspace(start, end, ramp_steps, dtype=torch.float64) if ramp_steps else torch.zeros(0, dtype=torch.float64)
    out = torch.cat([ramp, torch.full((steps - ramp_steps,), end, dtype=torch.float64)])
    assert out.numel() == steps, (out.numel(), steps)
    return out
