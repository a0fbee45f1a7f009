"""Boxes, crop-box sampling and SP targets: pure, vectorised tensor code.

A box is ``(x0, y0, x1, y1)`` in canvas pixels (float), x to the right, y down; pixel i
covers [i, i+1). Shapes in docstrings: ``[..., 4]`` means any leading dims.
"""

from __future__ import annotations

import math

import torch


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


def sample_disjoint_pairs(n: int, canvas_hw: tuple[int, int], scale: tuple[float, float],
                          ratio: tuple[float, float], max_iou: float = 0.0, candidates: int = 16,
                          generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``n`` pairs of boxes (a, b) whose IoU is at most ``max_iou``.

    Vectorised rejection sampling *(our choice)*: box a is drawn once; ``candidates``
    boxes b are drawn for every pair at once and the first one with IoU <= max_iou is
    kept. Where none qualifies, the least-overlapping candidate is used and the pair is
    counted as a fallback.

    Returns:
        a: float32 [n, 4], b: float32 [n, 4], number of fallbacks (0-dim long tensor on the
        boxes' device, so the training loop never waits for it).
    """
    a = sample_boxes(n, canvas_hw, scale, ratio, generator, device)
    cand = sample_boxes(n * candidates, canvas_hw, scale, ratio, generator, device).view(n, candidates, 4)
    iou = box_iou(a[:, None, :], cand)  # [n, C]
    ok = iou <= max_iou + 1e-6
    # first qualifying candidate, else the least overlapping one
    first_ok = torch.where(ok, torch.arange(candidates, device=device).expand(n, -1), candidates).min(dim=1).values
    least = iou.argmin(dim=1)
    has_ok = first_ok < candidates
    pick = torch.where(has_ok, first_ok, least)
    b = cand[torch.arange(n, device=device), pick]
    return a, b, (~has_ok).sum()


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror boxes left-right in a canvas of ``width`` pixels: [..., 4] -> [..., 4]."""
    x0 = width - boxes[..., 2]
    x1 = width - boxes[..., 0]
    return torch.stack([x0, boxes[..., 1], x1, boxes[..., 3]], dim=-1)


def sp_targets(a: torch.Tensor, b: torch.Tensor, canvas_hw: tuple[int, int],
               offsets: str = "canvas") -> torch.Tensor:
    """Relative position and scale of box b with respect to reference box a.

    ``dx = (cx_b - cx_a) / W``, ``dy = (cy_b - cy_a) / H`` (``offsets="canvas"``), or in
    units of a's width and height (``offsets="reference"``); ``ds = log(sqrt(area_b /
    area_a))``. Swapping a and b negates canvas offsets and ds exactly.

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
        dx = (cb_x - ca_x) / (a[..., 2] - a[..., 0])
        dy = (cb_y - ca_y) / (a[..., 3] - a[..., 1])
    else:
        raise ValueError(f"offsets must be 'canvas' or 'reference', got {offsets!r}")
    ds = 0.5 * (torch.log(box_area(b).clamp(min=1e-12)) - torch.log(box_area(a).clamp(min=1e-12)))
    return torch.stack([dx, dy, ds], dim=-1)
