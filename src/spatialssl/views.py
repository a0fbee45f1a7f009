"""Multi-crop views cut from uint8 canvases on the training device, with exact boxes.

Every view of a batch is cut by ``cut`` (antialiased bilinear resampling, two batched
matmuls for all views of a size), so the box of each view is known exactly (SP needs it) and
augmentation costs no CPU workers. Photometric augmentation (colour jitter, grayscale, blur, solarisation) is
batched on the device too, with per-sample random parameters. The same code runs on CPU.

Random draws are keyed by the sample, not by the process: with data parallelism each
process passes ``part`` (its rows of the global batch) and every draw is made for the
whole global batch from a generator seeded alike on all processes, then sliced, so
sample i gets the same boxes, flips and photometric parameters whether one process cuts
the batch or rank r of W (``BatchPart``; ``tests/engine/test_distributed.py``).

Flips follow ``views.local_flip`` (see docs/sp.md): ``per_image`` mirrors the whole canvas
of an image before its local views are cut (boxes and SP targets live in the flipped
frame), ``per_view`` mirrors each local view alone (its box then no longer describes its
content left-right), ``none`` never flips local views. Global views always use per-view
flips when ``views.global_flip`` is on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import geometry
from .sp import log_config_warnings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Views:
    """The views of one batch.

    Attributes:
        globals: float [G, B, 3, S, S], normalised.
        locals: float [L, B, 3, s, s], normalised (L may be 0).
        global_boxes: float32 [G, B, 4] canvas-pixel boxes.
        local_boxes: float32 [L, B, 4] boxes in the frame the local views were cut from
            (the flipped canvas for images flipped ``per_image``).
        sp_pairs: long [P, 2] indices into the local views: pairs drawn disjoint for SP.
        canvas_hw: (H, W) of the canvases.
        fallbacks: pairs whose rejection sampling found no pair of boxes under ``max_iou``
            and ``min_gap`` (0-dim tensor): ``(~sp_valid).sum()``.
        sp_valid: bool [P, B], False for those fallback pairs (SP leaves them out of its
            loss); None when views are made elsewhere (every pair then counts).
        local_flipped: bool [B], the images whose local views were cut from the mirrored
            canvas (``per_image`` flips; all False otherwise); None when unknown.
        part: the rows of the global batch these views are of (``BatchPart``, data
            parallelism), so a framework can key its own draws by the sample (iBOT's block
            masks); None: the batch is whole.
        sp_valid_total: valid SP pairs (0-dim long) in the whole global batch, all
            processes' rows (known without communication: the pairs are drawn for the global
            batch); ``sp_valid.sum()`` for a whole batch; None when views are made elsewhere.
        draws: the framework's own random draws for this batch (``Framework.draw``, made
            outside a compiled forward; iBOT's block masks), by name; empty by default.
    """

    globals: torch.Tensor
    locals: torch.Tensor
    global_boxes: torch.Tensor
    local_boxes: torch.Tensor
    sp_pairs: torch.Tensor
    canvas_hw: tuple[int, int]
    fallbacks: torch.Tensor | int = 0
    sp_valid: torch.Tensor | None = None
    local_flipped: torch.Tensor | None = field(default=None)
    part: BatchPart | None = None
    sp_valid_total: torch.Tensor | None = None
    draws: dict[str, torch.Tensor] = field(default_factory=dict)


def _aa_weights(lo: torch.Tensor, hi: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """Antialiased bilinear resampling weights along one axis: [K] box edges -> [K, size, length].

    Output pixel j of a box [lo, hi) sits at ``c_j = lo + (j + 0.5) f`` with ``f = (hi - lo) /
    size`` canvas px per output px; canvas pixel i (centre i + 0.5) gets the triangle weight
    ``max(0, 1 - |i + 0.5 - c_j| / max(f, 1))``, i.e. a kernel of fixed width in *output*
    pixels when shrinking (PIL's and torchvision's ``antialias=True``; plain bilinear when
    enlarging). Only pixels whose centre lies inside the box count (plus the one under
    ``c_j``, so a row is never empty), and each row is normalised, as torchvision's
    crop-then-resize does: a view never reads a pixel of its neighbour across a gap.
    """
    dev, dt = lo.device, lo.dtype
    f = (hi - lo) / size
    s = f.clamp(min=1.0)
    c = lo[:, None] + (torch.arange(size, device=dev, dtype=dt) + 0.5)[None] * f[:, None]  # [K, size]
    centre = torch.arange(length, device=dev, dtype=dt) + 0.5  # [length]
    w = (1 - (centre[None, None] - c[..., None]).abs() / s[:, None, None]).clamp(min=0)
    inside = (centre[None] >= lo[:, None]) & (centre[None] < hi[:, None])  # [K, length]
    under = torch.arange(length, device=dev)[None, None] == c.floor().long().clamp(0, length - 1)[..., None]
    w = w * (inside[:, None] | under)
    return w / w.sum(-1, keepdim=True)


def cut(canvases: torch.Tensor, boxes: torch.Tensor, size: int,
        index: torch.Tensor | None = None, flip: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """Cut and resize boxes of canvases with antialiased bilinear resampling.

    On integer boxes this equals torchvision's ``resized_crop(..., antialias=True)`` (PIL's
    bilinear resize of the crop, as the SSL reference recipes use), for any box size, and
    reads nothing outside the box. Boxes may be fractional. Why not one
    ``torchvision.ops.roi_align`` call, as before *(measured, docs/sp.md "Resampling")*: its
    adaptive sampling averages ceil(box / size) samples per output pixel, a filter whose
    strength steps with the box size, so on pink noise per-view statistics told a view's
    box size (SP's ds: R^2 0.3-0.8, even with no view enlarged); antialiased resampling
    with no view enlarged leaves R^2 ~0. And why not torchvision itself: it resizes one
    crop size per call; views of a batch all differ. Here all V views of a batch are two
    batched matmuls with separable weight matrices (``_aa_weights``), on the training
    device: ``[B, V*size, W] @ canvas^T`` (the canvas read once, transposed in the BLAS
    call, not copied), then ``[B*V, size*C, H] @ wy^T``; no weight matrix is broadcast
    into a copy (``benchmarks/cut_speed.py``).

    Args:
        canvases: [B, C, H, W] float (any scale) or uint8.
        boxes: [K, 4] float boxes (x0, y0, x1, y1) in pixels, box k cut from canvas
            ``index[k]`` (default k); or [V, B, 4], V boxes per canvas (``index`` unused).
        size: output side.
        index: long [K], the canvas of each box for [K, 4] boxes.
        flip: bool [B] ([V, B, 4] boxes only): cut these canvases' boxes from their mirror
            image (boxes in the mirrored frame), by mirroring the x-axis weights instead of
            copying the canvas.
        scale: multiplies the output (folded into the weights: ``1 / 255`` turns uint8
            canvases into [0, 1] views without a scaled copy of the canvases).
    Returns:
        float [K, C, size, size] (or [V, B, C, size, size]) in the canvases' scale x ``scale``.
    """
    x = canvases if canvases.is_floating_point() else canvases.float()
    if boxes.dim() == 2:  # box k of canvas index[k]: gathered 256 canvases at a time
        if index is None:
            return cut(x, boxes[None], size, scale=scale)[0]
        chunks = [cut(x[index[i:i + 256]], boxes[i:i + 256][None], size, scale=scale)[0]
                  for i in range(0, boxes.shape[0], 256)]
        return torch.cat(chunks) if chunks else x.new_zeros(0, x.shape[1], size, size)
    b, c, h, w = x.shape
    v = boxes.shape[0]
    boxes = boxes.to(x.dtype).transpose(0, 1).reshape(b * v, 4)  # [B * V, 4], canvas major
    wx = _aa_weights(boxes[:, 0], boxes[:, 2], size, w)  # [B*V, size, W]
    wy = _aa_weights(boxes[:, 1], boxes[:, 3], size, h)  # [B*V, size, H]
    if flip is not None:  # a box of the mirrored canvas reads the mirrored columns of the canvas
        wx = torch.where(flip.repeat_interleave(v).view(b * v, 1, 1), wx.flip(-1), wx)
    if scale != 1.0:
        wy = wy * scale
    # x-axis: [B, V*size, W] @ [B, W, C*H] (the canvas transposed by the BLAS call) -> [B, V*size, C*H]
    t = torch.matmul(wx.view(b, v * size, w), x.reshape(b, c * h, w).transpose(1, 2))
    # y-axis: [B*V, size_x*C, H] @ [B*V, H, size_y] -> [B*V, size_x, C, size_y]
    out = torch.matmul(t.view(b * v, size * c, h), wy.transpose(1, 2)).view(b, v, size, c, size)
    return out.permute(1, 0, 3, 4, 2).contiguous()  # [V, B, C, size_y, size_x]


@dataclass(frozen=True)
class BatchPart:
    """The rows ``start .. start + size`` of a global batch of ``total`` samples: the part
    one data-parallel process cuts views for (``MultiCrop(..., part=...)``).

    Draws are made for all ``total`` samples and this part's columns kept, so the random
    numbers of a sample do not depend on how the batch is split. ``None`` (one process)
    draws for the batch it is given, the same stream as a whole part.
    """

    start: int
    size: int
    total: int

    def __post_init__(self) -> None:
        if not (0 <= self.start and self.size > 0 and self.start + self.size <= self.total):
            raise ValueError(f"batch part {self.start}..{self.start + self.size} is not inside a batch of {self.total}")

    @property
    def rows(self) -> slice:
        return slice(self.start, self.start + self.size)


def _rand(n: int, g: torch.Generator | None, device, part: BatchPart | None = None) -> torch.Tensor:
    """``n`` uniforms; with ``part``, ``n = k * part.size`` draws laid out [k, part] (view
    major, as the views of a batch are), cut from the [k, part.total] draws of the whole
    global batch: the same numbers for a sample on any process. Drawn flat, so the stream
    equals the one-process one (``torch.rand(k * total)``)."""
    if part is None or part.size == part.total:
        return torch.rand(n, generator=g, device=device)
    k = n // part.size
    return torch.rand(k * part.total, generator=g, device=device).view(k, part.total)[:, part.rows].reshape(n)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma (ITU-R 601, as torchvision's rgb_to_grayscale)."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


@functools.lru_cache(maxsize=64)
def _constant(name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A fixed tensor on ``device`` in ``dtype``, made once per (device, dtype): built in
    every call, each would be a small host-to-device copy that stalls a CUDA stream (~12
    per step were counted). Callers must not modify it in place."""
    value = {"mean": torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1),
             "std": torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1),
             "to_yiq": _TO_YIQ, "from_yiq": _FROM_YIQ}[name]
    return value.to(device=device, dtype=dtype)


def color_jitter(x: torch.Tensor, p: float, strength: list[float], g, part: BatchPart | None = None) -> torch.Tensor:
    """Batched brightness, contrast, saturation, hue jitter on [B, 3, H, W] in [0, 1].

    Applied in that fixed order (torchvision draws a random order per call; one fixed
    order keeps the batch vectorised). Hue is rotated in YIQ space, a cheap linear
    stand-in for torchvision's HSV round trip *(our choice)*. ``part``: see ``_rand``.
    """
    b, dev = x.shape[0], x.device
    on = (_rand(b, g, dev, part) < p).float().view(b, 1, 1, 1)
    br, co, sa, hu = strength
    f_b = 1 + br * (2 * _rand(b, g, dev, part) - 1)
    f_c = 1 + co * (2 * _rand(b, g, dev, part) - 1)
    f_s = 1 + sa * (2 * _rand(b, g, dev, part) - 1)
    f_h = hu * (2 * _rand(b, g, dev, part) - 1)
    y = x * f_b.view(b, 1, 1, 1)
    y = y.clamp(0, 1)
    mean = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = (mean + f_c.view(b, 1, 1, 1) * (y - mean)).clamp(0, 1)
    gray = _gray(y)
    y = (gray + f_s.view(b, 1, 1, 1) * (y - gray)).clamp(0, 1)
    # hue: rotate the chroma (I, Q) plane by 2*pi*f_h
    to_yiq = _constant("to_yiq", dev, x.dtype)
    from_yiq = _constant("from_yiq", dev, x.dtype)
    theta = 2 * torch.pi * f_h
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(b, 3, 3, device=dev, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = from_yiq @ rot @ to_yiq  # [B, 3, 3]
    y = torch.einsum("bij,bjhw->bihw", m, y).clamp(0, 1)
    return on * y + (1 - on) * x


def gaussian_blur(x: torch.Tensor, p: float, g, sigma: tuple[float, float] = (0.1, 2.0),
                  ref_size: int = 224, part: BatchPart | None = None) -> torch.Tensor:
    """Per-sample Gaussian blur with probability ``p`` on [B, 3, H, W].

    Sigma ~ U(0.1, 2.0) as in SimCLR/DINO at 224 px, scaled by H / ``ref_size`` so a
    small view is blurred alike relative to its size *(our choice)*. One grouped,
    separable convolution blurs the whole batch. ``part``: see ``_rand``.
    """
    b, c, h, w = x.shape
    dev = x.device
    on = _rand(b, g, dev, part) < p
    scale = h / ref_size
    s = (sigma[0] + (sigma[1] - sigma[0]) * _rand(b, g, dev, part)) * scale
    s = s.clamp(min=1e-3)
    radius = max(1, int(round(3 * sigma[1] * scale)))
    t = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None, :] / s[:, None]) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    ident = torch.zeros_like(k)
    ident[:, radius] = 1
    k = torch.where(on[:, None], k, ident)
    k = k.repeat_interleave(c, dim=0)  # [B*C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect" if w > radius else "replicate"),
                 k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect" if h > radius else "replicate"),
                 k[:, None, :, None], groups=b * c)
    return y.view(b, c, h, w)


def photometric(x: torch.Tensor, cfg: dict, g, blur_p: float, solarize_p: float,
                part: BatchPart | None = None) -> torch.Tensor:
    """Colour jitter, grayscale, blur, solarisation on [B, 3, H, W] in [0, 1] (with
    ``part``, B = k x part.size rows laid out view major: see ``_rand``)."""
    b, dev = x.shape[0], x.device
    x = color_jitter(x, cfg["color_jitter"], cfg["jitter_strength"], g, part)
    gray_on = (_rand(b, g, dev, part) < cfg["grayscale"]).view(b, 1, 1, 1)
    x = torch.where(gray_on, _gray(x).expand_as(x), x)
    if blur_p > 0:
        x = gaussian_blur(x, blur_p, g, part=part)
    if solarize_p > 0:
        sol_on = (_rand(b, g, dev, part) < solarize_p).view(b, 1, 1, 1)
        x = torch.where(sol_on & (x >= 0.5), 1 - x, x)
    return x


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> ImageNet-normalised."""
    return (x - _constant("mean", x.device, x.dtype)) / _constant("std", x.device, x.dtype)


def to_input(images_u8: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float [B, 3, size, size] (whole image, no crop)."""
    x = images_u8.float() / 255.0
    if size is not None and (x.shape[-2], x.shape[-1]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x)


class MultiCrop:
    """n global + m local views of a batch of canvases, with boxes and SP pairs.

    Local boxes are drawn in exchangeable pairs (``geometry.sample_pairs``) that overlap
    by at most ``max_iou`` and lie ``min_gap`` canvas px apart (pairs (0,1), (2,3), ...),
    so every image yields ``m // 2`` SP pairs, not left to chance; an odd last local view
    is drawn freely. Pairs the sampler fell back on are marked in ``Views.sp_valid``.

    Args:
        views: the ``views`` config section.
        n_local: number of local views (overrides ``views.n_local``; e.g. SP's extra views).
        max_iou, candidates, min_gap: SP pair sampling (``sp.max_iou``,
            ``sp.pair_candidates``, ``sp.min_gap``).
        pair_locals: draw local boxes as pairs (the trainer keeps it on with and without
            SP, so both arms of a comparison see the same views).

    >>> mc = MultiCrop(cfg["views"], n_local=4)
    >>> v = mc(canvases_u8, torch.Generator().manual_seed(0))
    >>> v.globals.shape, v.locals.shape, v.sp_pairs.tolist()
    (torch.Size([2, B, 3, 224, 224]), torch.Size([4, B, 3, 96, 96]), [[0, 1], [2, 3]])
    """

    def __init__(self, views: dict, n_local: int | None = None, max_iou: float = 0.0,
                 candidates: int = 64, pair_locals: bool = True, min_gap: float = 0.0) -> None:
        self.cfg = views
        self.n_global = views["n_global"]
        self.n_local = views["n_local"] if n_local is None else n_local
        self.max_iou = max_iou
        self.candidates = candidates
        self.min_gap = min_gap
        self.pair_locals = pair_locals
        self.local_flip = views["local_flip"]
        if self.local_flip == "auto":
            raise ValueError("views.local_flip 'auto' must be resolved by config.derive first")

    @classmethod
    def from_config(cls, cfg: dict, n_local: int | None = None) -> "MultiCrop":
        """The multi-crop a run of ``cfg`` (a resolved config) trains on: the ``views``
        section, local boxes drawn as pairs by SP's sampler settings (``sp.max_iou``,
        ``sp.pair_candidates``, ``sp.min_gap``), with or without SP (both arms of a
        comparison see the same views). The trainer and a user's own loop
        (docs/plugin.md) build it this way; the constructor's defaults (``min_gap=0``)
        let pairs touch.

        >>> mc = MultiCrop.from_config(config.resolve(["demo"], ["sp.enabled=true"]))
        >>> v = mc(canvases_u8)   # v.sp_valid: pairs the sampler drew as asked, for SP's loss
        """
        log_config_warnings(cfg)  # SP's pair fallback rate (its sampler) and upsampled views, once
        sp = cfg["sp"]
        return cls(cfg["views"], n_local=n_local, max_iou=sp["max_iou"], candidates=sp["pair_candidates"],
                   pair_locals=True, min_gap=sp["min_gap"])

    def __call__(self, canvases: torch.Tensor, g: torch.Generator | None = None,
                 part: BatchPart | None = None) -> Views:
        """canvases: uint8 [B, 3, H, W] on the training device.

        ``part``: these B canvases are rows ``part.rows`` of a global batch of
        ``part.total`` (data parallelism); every random draw is made for the global batch
        and sliced, so the views of a sample do not depend on the process that cuts them.
        Boxes and pair rejection sampling cost O(total) (small tensors); images are cut
        for the B rows only. ``None``: the batch is whole (the same draws as a whole part).
        """
        cfg = self.cfg
        b, _, h, w = canvases.shape
        dev = canvases.device
        if part is not None and part.size != b:
            raise ValueError(f"batch part of {part.size} rows given with {b} canvases")
        total, rows = (b, slice(0, b)) if part is None else (part.total, part.rows)
        x = canvases.float()  # [0, 255]: cut scales by 1 / 255 in its weights (no scaled copy)

        # global views: boxes, cut [G, B, 3, S, S], per-view flips, photometric
        gboxes = geometry.sample_boxes(self.n_global * total, (h, w), cfg["global_scale"], cfg["ratio"], g, dev)
        gboxes = gboxes.view(self.n_global, total, 4)[:, rows].contiguous()
        gall = cut(x, gboxes, cfg["global_size"], scale=1 / 255)
        globals_ = []
        for i in range(self.n_global):
            v = gall[i]
            if cfg["global_flip"]:
                flip = (_rand(b, g, dev, part) < 0.5).view(b, 1, 1, 1)
                v = torch.where(flip, v.flip(-1), v)
            blur_p = cfg["blur"][min(i, len(cfg["blur"]) - 1)]
            sol_p = cfg["solarize"] if i == 1 else 0.0
            globals_.append(normalize(photometric(v, cfg, g, blur_p, sol_p, part)))

        # local views: boxes drawn as exchangeable disjoint pairs, flips by policy
        m = self.n_local
        n_pairs = m // 2 if self.pair_locals else 0
        valid = torch.ones(n_pairs, b, dtype=torch.bool, device=dev)
        valid_total = torch.zeros((), dtype=torch.long, device=dev)  # over the global batch
        flip_img = torch.zeros(b, dtype=torch.bool, device=dev)
        if m > 0:
            boxes = []
            for i in range(n_pairs):
                a, bb, ok = geometry.sample_pairs(total, (h, w), cfg["local_scale"], cfg["ratio"], self.max_iou,
                                                  self.candidates, g, dev, self.min_gap)
                boxes += [a[rows], bb[rows]]
                valid[i] = ok[rows]
                valid_total += ok.sum()
            for _ in range(m - 2 * n_pairs):
                boxes.append(geometry.sample_boxes(total, (h, w), cfg["local_scale"], cfg["ratio"], g, dev)[rows])
            lboxes = torch.stack(boxes)  # [L, B, 4]
            if self.local_flip == "per_image":
                # boxes are drawn in the mirrored frame of a flipped image (the box law is
                # mirror-symmetric), so boxes and targets describe what the views show; cut
                # reads the mirror through its weights, no flipped copy of the canvases
                flip_img = _rand(b, g, dev, part) < 0.5
            # all local views (one size): [L, B, 3, s, s] -> [L * B, 3, s, s]
            flat = cut(x, lboxes, cfg["local_size"], flip=flip_img if self.local_flip == "per_image" else None,
                       scale=1 / 255).flatten(0, 1)
            if self.local_flip == "per_view":
                flip = (_rand(m * b, g, dev, part) < 0.5).view(m * b, 1, 1, 1)
                flat = torch.where(flip, flat.flip(-1), flat)
            flat = normalize(photometric(flat, cfg, g, cfg["local_blur"], 0.0, part))
            locals_ = flat.view(m, b, 3, cfg["local_size"], cfg["local_size"])
        else:
            lboxes = torch.zeros(0, b, 4, device=dev)
            locals_ = torch.zeros(0, b, 3, cfg["local_size"], cfg["local_size"], device=dev)
        pairs = torch.arange(2 * n_pairs, device=dev).view(n_pairs, 2)
        return Views(torch.stack(globals_), locals_, gboxes, lboxes, pairs, (h, w), (~valid).sum(), valid, flip_img,
                     part, valid_total)


