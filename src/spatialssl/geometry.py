"""Boxes, crop-box sampling and SP targets: pure, vectorised tensor code.

A box is ``(x0, y0, x1, y1)`` in canvas pixels (float), x to the right, y down; pixel i
covers [i, i+1). Shapes in docstrings: ``[..., 4]`` means any leading dims.
"""

from __future__ import annotations

import math

import torch
from .config import ConfigError


def sample_boxes(n: int, canvas_hw: tuple[int, int], scale: tuple[float, float],
                 ratio: tuple[float, float], generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Sample ``n`` crop boxes as RandomResizedCrop does, vectorised.

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio). Where torchvision retries
    10 times and then falls back to a centre crop, we clamp width and height to the canvas
    (one draw, no loop): the box stays inside the canvas and the scale range is kept for
    all but the most extreme (area, ratio) draws.

    Returns:
        float32 [n, 4] boxes inside the canvas.
    """
    h_img, w_img = canvas_hw
    area = h_img * w_img
    u = torch.rand(n, 4, generator=generator, device=device)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    w = torch.sqrt(s * area * r).clamp(1.0, w_img)
    h = torch.sqrt(s * area / r).clamp(1.0, h_img)
    x0 = (w_img - w) * u[:, 2]
    y0 = (h_img - h) * u[:, 3]
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)


def box_area(b: torch.Tensor) -> torch.Tensor:
    """[..., 4] -> [...]."""
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of aligned boxes (broadcasting): [..., 4] x [..., 4] -> [...]."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    return inter / (box_area(a) + box_area(b) - inter).clamp(min=1e-12)


def box_separation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gap between aligned boxes in pixels (broadcasting): [..., 4] x [..., 4] -> [...].

    The larger of the horizontal and vertical gaps: >= g means the boxes are at least g px
    apart along one axis; 0 for touching boxes; negative (minus the smaller overlap) for
    overlapping ones.
    """
    gx = torch.maximum(b[..., 0] - a[..., 2], a[..., 0] - b[..., 2])
    gy = torch.maximum(b[..., 1] - a[..., 3], a[..., 1] - b[..., 3])
    return torch.maximum(gx, gy)


def sample_pairs(n: int, canvas_hw: tuple[int, int], scale: tuple[float, float],
                 ratio: tuple[float, float], max_iou: float = 0.0, candidates: int = 64,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 min_gap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n`` exchangeable pairs of boxes (a, b): IoU <= ``max_iou`` and, when
    ``min_gap > 0``, at least ``min_gap`` canvas px apart (``box_separation``).

    Vectorised rejection sampling over *joint* candidates *(our choice)*: ``candidates``
    pairs of independent boxes are drawn per pair at once and the first pair that
    qualifies is kept. Both boxes are redrawn together, and the test is symmetric in a and
    b, so a and b are exchangeable: the kept pair follows the law of two independent boxes
    conditioned on the test (mean ds = 0). (Drawing a once and only redrawing b biases b
    towards small boxes: mean ds was -0.74 std at local scale 0.05-0.4.) Where no
    candidate qualifies, the best one (least IoU, or largest separation with a gap) is
    used and the pair is marked invalid: SP leaves it out of its loss and the trainer logs
    the rate (``sp_fallback_rate``).

    Returns:
        a: float32 [n, 4], b: float32 [n, 4], valid: bool [n] (False for fallbacks), all
        on ``device`` (nothing is read back to the host).
    """
    if min_gap < 0:
        raise ConfigError(f"config key 'sp.min_gap' must be >= 0 (canvas px), got {min_gap}")
    if min_gap > 0 and max_iou > 0:
        raise ConfigError(f"config key 'sp.min_gap' ({min_gap} px) needs disjoint pairs, but sp.max_iou is {max_iou}: "
                         f"set sp.min_gap=0 to let pairs overlap")
    c = max(1, int(candidates))
    cand = sample_boxes(2 * n * c, canvas_hw, scale, ratio, generator, device).view(n, c, 2, 4)
    ca, cb = cand[:, :, 0], cand[:, :, 1]
    if min_gap > 0:
        score = box_separation(ca, cb)  # [n, C], larger is better
        ok = score >= min_gap - 1e-6
    else:
        score = -box_iou(ca, cb)
        ok = -score <= max_iou + 1e-6
    first_ok = torch.where(ok, torch.arange(c, device=device).expand(n, -1), c).min(dim=1).values
    valid = first_ok < c
    pick = torch.where(valid, first_ok, score.argmax(dim=1))
    rows = torch.arange(n, device=device)
    return ca[rows, pick], cb[rows, pick], valid


def sample_disjoint_pairs(n: int, canvas_hw: tuple[int, int], scale: tuple[float, float],
                          ratio: tuple[float, float], max_iou: float = 0.0, candidates: int = 64,
                          generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                          min_gap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sample_pairs`` returning the number of fallbacks (0-dim long tensor) instead of
    the per-pair valid mask: a [n, 4], b [n, 4], fallbacks."""
    a, b, valid = sample_pairs(n, canvas_hw, scale, ratio, max_iou, candidates, generator, device, min_gap)
    return a, b, (~valid).sum()


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror boxes left-right in a canvas of ``width`` pixels: [..., 4] -> [..., 4]."""
    x0 = width - boxes[..., 2]
    x1 = width - boxes[..., 0]
    return torch.stack([x0, boxes[..., 1], x1, boxes[..., 3]], dim=-1)


def sp_targets(a: torch.Tensor, b: torch.Tensor, canvas_hw: tuple[int, int],
               offsets: str = "canvas") -> torch.Tensor:
    """Relative position and scale of box b with respect to reference box a.

    ``dx = (cx_b - cx_a) / W``, ``dy = (cy_b - cy_a) / H`` (``offsets="canvas"``), or in
    units of the two boxes' geometric-mean width and height (``offsets="reference"``:
    ``dx = (cx_b - cx_a) / sqrt(w_a * w_b)``, ``dy = (cy_b - cy_a) / sqrt(h_a * h_b)``, a
    symmetric normaliser *(our choice)*: with a's size alone the targets would not change
    sign when a and b swap, and an antisymmetric head could not fit them);
    ``ds = log(sqrt(area_b / area_a))``. Swapping a and b negates all three exactly, in
    both modes.

    Args:
        a, b: [..., 4] boxes in canvas pixels.
    Returns:
        [..., 3] targets (dx, dy, ds).
    """
    h_img, w_img = canvas_hw
    ca_x, ca_y = (a[..., 0] + a[..., 2]) / 2, (a[..., 1] + a[..., 3]) / 2
    cb_x, cb_y = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2
    if offsets == "canvas":
        dx, dy = (cb_x - ca_x) / w_img, (cb_y - ca_y) / h_img
    elif offsets == "reference":
        dx = (cb_x - ca_x) / torch.sqrt((a[..., 2] - a[..., 0]) * (b[..., 2] - b[..., 0])).clamp(min=1e-12)
        dy = (cb_y - ca_y) / torch.sqrt((a[..., 3] - a[..., 1]) * (b[..., 3] - b[..., 1])).clamp(min=1e-12)
    else:
        raise ValueError(f"offsets must be 'canvas' or 'reference', got {offsets!r}")
    ds = 0.5 * (torch.log(box_area(b).clamp(min=1e-12)) - torch.log(box_area(a).clamp(min=1e-12)))
    return torch.stack([dx, dy, ds], dim=-1)
