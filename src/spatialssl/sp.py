"""Spatial Prediction (SP): the plug-in pretext task.

Given two disentangled (disjoint) local views a and b of one image, SP regresses b's
position and scale relative to a: ``(dx, dy, ds)`` (``geometry.sp_targets``) from the
backbone's pooled embeddings of the two views. It is a plug-in [0]: it takes embeddings
and boxes only and knows nothing of the SSL framework beside it; the trainer adds
``sp.weight * loss`` to the framework's loss.

Only the paper's abstract is public. Every detail here is *our choice*, documented in
docs/sp.md: pairs drawn jointly (exchangeable a and b), disjoint (``max_iou``) and
``min_gap`` canvas px apart, fallback pairs left out of the loss, targets standardised by constants
measured on the sampler's own distribution, an MLP head on ``[z_a, z_b, z_a - z_b,
z_a * z_b]`` of the backbone's pooled embeddings (not the framework's projection head),
optionally antisymmetric, smooth-L1 loss.

[0]: Shen et al., "Learning to Perceive 'Where': Spatial Pretext Tasks for Robust
     Self-Supervised Learning", 2026, arXiv:2605.09963.

>>> sp = SpatialPrediction(embed_dim=192, canvas_hw=(64, 64), local_scale=(0.05, 0.4))
>>> out = sp(emb, boxes, pairs, valid)   # emb [L, B, D], boxes [L, B, 4], pairs [P, 2], valid [P, B]
>>> out["loss"], out["r2_dx"]
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import geometry
from .config import ConfigError, log_once, upsampling_warnings

COMPONENTS = ("dx", "dy", "ds")

# the pair sampler is part of the plug-in's specification; views.py calls it through here
sample_pairs = geometry.sample_pairs

# the resolved config warns when the sampler falls back on more pairs than this
FALLBACK_WARN = 0.05


@functools.lru_cache(maxsize=32)
def target_stats(canvas_hw: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
                 max_iou: float = 0.0, offsets: str = "canvas", n: int = 20000,
                 candidates: int = 64, seed: int = 1234, min_gap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of (dx, dy, ds) under the pair sampler, for standardising targets.

    Fixed constants measured once from the sampler's own distribution (valid pairs only,
    as the loss sees them; a fixed seed, independent of training randomness), so each
    component weighs alike in the loss.

    Returns:
        mean [3], std [3] (float32).
    """
    g = torch.Generator().manual_seed(seed)
    a, b, valid = sample_pairs(n, canvas_hw, scale, ratio, max_iou, candidates, g, min_gap=min_gap)
    if valid.any():
        a, b = a[valid], b[valid]
    t = geometry.sp_targets(a, b, canvas_hw, offsets)
    return t.mean(0), t.std(0).clamp(min=1e-6)  # cached: callers must not modify them in place


@functools.lru_cache(maxsize=64)
def expected_fallback_rate(canvas_hw: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
                           max_iou: float = 0.0, candidates: int = 64, min_gap: float = 0.0,
                           n: int = 4000, seed: int = 4321) -> float:
    """Fraction of pairs the sampler falls back on at these settings (``n`` pairs, fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    _, _, valid = sample_pairs(n, canvas_hw, scale, ratio, max_iou, candidates, g, min_gap=min_gap)
    return 1.0 - float(valid.float().mean())


def config_warnings(cfg: dict) -> list[str]:
    """Warnings about a resolved config's SP settings (``views.MultiCrop.from_config`` logs them;
    ``config.derive`` the torch-free ones):
    the pair sampler's expected fallback rate above ``FALLBACK_WARN`` (fallback pairs are
    left out of the SP loss, so SP then trains on fewer pairs than it seems), and every
    view upsampled from the canvas by more than ``config.UPSAMPLE_WARN``
    (``config.upsampling_warnings``)."""
    v, sp, side = cfg["views"], cfg["sp"], int(cfg["data"]["canvas_size"])
    out = []
    rate = expected_fallback_rate((side, side), tuple(v["local_scale"]), tuple(v["ratio"]), float(sp["max_iou"]),
                                  int(sp["pair_candidates"]), float(sp["min_gap"]))
    if rate > FALLBACK_WARN:
        out.append(f"SP pair sampler: {100 * rate:.1f}% of local-view pairs are expected to be fallbacks (no pair of "
                   f"{sp['pair_candidates']} candidates with IoU <= {sp['max_iou']} and gap >= {sp['min_gap']} px at "
                   f"views.local_scale={list(v['local_scale'])} on a {side} px canvas); they are left out of the SP "
                   f"loss. Lower views.local_scale, or raise sp.pair_candidates or data.canvas_size")
    return out + upsampling_warnings(cfg)


def log_config_warnings(cfg: dict) -> None:
    """Log ``config_warnings(cfg)`` on the "spatialssl" logger, each message once per
    process (``config.log_once``)."""
    log_once(config_warnings(cfg))


class SPHead(nn.Module):
    """MLP on ``[z_a, z_b, z_a - z_b, z_a * z_b]`` -> (dx, dy, ds).

    With ``antisymmetric=True`` the output is ``g(a, b) - g(b, a)``, so swapping a and b
    negates the prediction exactly (as it negates the canvas-offset targets).

    Args:
        embed_dim: D of the pooled embeddings.
        hidden_dim: width of the two hidden layers.
    Shapes:
        z_a, z_b: [N, D] -> [N, 3]
    """

    def __init__(self, embed_dim: int, hidden_dim: int = 256, antisymmetric: bool = True) -> None:
        super().__init__()
        self.antisymmetric = antisymmetric
        self.mlp = nn.Sequential(
            nn.Linear(4 * embed_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, 3),
        )

    def _g(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([za, zb, za - zb, za * zb], dim=-1))

    def forward(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        # fp32 whatever the caller's autocast: the antisymmetric difference of two
        # nearly equal outputs loses its precision in bf16 (rms error 0.02 was measured)
        with torch.autocast(za.device.type, enabled=False):
            return self._forward(za.float(), zb.float())

    def _forward(self, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
        if not self.antisymmetric:
            return self._g(za, zb)
        both = self._g(torch.cat([za, zb]), torch.cat([zb, za]))  # one pass for g(a,b), g(b,a)
        ab, ba = both.chunk(2)
        return ab - ba


def r2_score(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-column coefficient of determination: [N, K] x [N, K] -> [K], over the rows with
    ``weight`` [N] 1 (all rows by default; a weight, not boolean indexing, so the device
    never waits)."""
    w = torch.ones_like(target[:, :1]) if weight is None else weight.to(target.dtype)[:, None]
    mean = (w * target).sum(0) / w.sum().clamp(min=1e-12)
    ss_res = (w * (target - pred) ** 2).sum(0)
    ss_tot = (w * (target - mean) ** 2).sum(0).clamp(min=1e-12)
    return 1 - ss_res / ss_tot


class SpatialPrediction(nn.Module):
    """The SP plug-in: pair targets, standardisation, head and loss.

    Args:
        embed_dim: D of the backbone's pooled embedding.
        canvas_hw: (H, W) of the canvases the boxes refer to.
        local_scale, ratio: the local-view box distribution (for the target constants).
        max_iou: largest IoU allowed between the two views of a pair.
        min_gap: smallest gap between the two boxes of a pair, canvas px (``sp.min_gap``).
        offsets: ``"canvas"`` or ``"reference"`` (see ``geometry.sp_targets``).
        antisymmetric, hidden_dim: head options.
        beta: smooth-L1 beta on standardised targets.
        shuffled: a control (``sp.targets: shuffled``): each step's targets are permuted
            across its pairs, so they carry no information about the pair the head sees,
            while everything else (views, pairs, head, loss weight) is as in SP. It tells
            what SP's effect owes to its targets rather than to forwarding more local views
            through a second loss.

    Forward:
        emb: [L, B, D] pooled embeddings of the local views.
        boxes: [L, B, 4] their boxes (in the frame they were cut from).
        pairs: long [P, 2] indices into L: (reference a, view b).
        valid: optional bool [P, B]: pairs the sampler drew as asked (``Views.sp_valid``);
            fallback pairs are left out of the loss and of the logs.
        n_valid: optional count the summed per-pair loss (and ``loss_zero``) is divided
            by; default this batch's valid pairs (at least 1), i.e. the mean over them.
            With W data-parallel processes whose gradients are averaged, the caller passes
            the global batch's valid pairs / W: the averaged gradient is then that of the
            mean over every valid pair of the global batch, however the fallbacks fall
            across the processes (each process's own mean would weigh a pair of a process
            with fewer valid pairs more). This module does no communication itself.
        returns dict: ``loss`` (scalar), ``r2_dx/dy/ds`` and ``loss_zero`` (the loss of
        predicting zero, the floor to beat), all detached but ``loss``.
    """

    def __init__(self, embed_dim: int, canvas_hw: tuple[int, int], local_scale: tuple[float, float],
                 ratio: tuple[float, float] = (0.75, 4 / 3), max_iou: float = 0.0, offsets: str = "canvas",
                 antisymmetric: bool = True, hidden_dim: int = 256, beta: float = 1.0,
                 candidates: int = 64, min_gap: float = 0.0, shuffled: bool = False) -> None:
        super().__init__()
        self.canvas_hw = tuple(canvas_hw)
        self.shuffled = shuffled
        self.offsets = offsets
        self.beta = beta
        mean, std = target_stats(self.canvas_hw, tuple(local_scale), tuple(ratio), max_iou, offsets,
                                 candidates=candidates, min_gap=min_gap)
        mean, std = mean.clone(), std.clone()
        if antisymmetric:
            # an antisymmetric head predicts zero for a == b: keep targets zero-centred
            mean = torch.zeros_like(mean)
        self.register_buffer("t_mean", mean)
        self.register_buffer("t_std", std)
        self.head = SPHead(embed_dim, hidden_dim, antisymmetric)

    @classmethod
    def from_config(cls, sp: dict, views: dict, embed_dim: int, canvas_hw: tuple[int, int]) -> "SpatialPrediction":
        return cls(embed_dim, canvas_hw, views["local_scale"], views["ratio"], sp["max_iou"], sp["offsets"],
                   sp["antisymmetric"], sp["hidden_dim"], sp["beta"], sp["pair_candidates"], sp["min_gap"],
                   sp["targets"] == "shuffled")

    def targets(self, boxes: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Standardised targets [P*B, 3] for ``pairs`` of ``boxes`` [L, B, 4]."""
        t = geometry.sp_targets(boxes[pairs[:, 0]], boxes[pairs[:, 1]], self.canvas_hw, self.offsets)
        return ((t - self.t_mean) / self.t_std).reshape(-1, 3)

    def forward(self, emb: torch.Tensor, boxes: torch.Tensor, pairs: torch.Tensor,
                valid: torch.Tensor | None = None,
                n_valid: torch.Tensor | float | None = None) -> dict[str, torch.Tensor]:
        if pairs.numel() == 0:
            raise ConfigError("SP needs at least one pair of local views (got none): "
                             "set views.n_local or sp.extra_local_views >= 2")
        d = emb.shape[-1]
        za = emb[pairs[:, 0]].reshape(-1, d)
        zb = emb[pairs[:, 1]].reshape(-1, d)
        target = self.targets(boxes, pairs).to(torch.float32)
        if self.shuffled:  # the control: the same targets, each given to another pair
            target = target[torch.randperm(target.shape[0], device=target.device)]
        pred = self.head(za, zb)  # fp32 (see SPHead.forward)
        w = None if valid is None else valid.reshape(-1).to(torch.float32)  # [P*B]
        per_pair = F.smooth_l1_loss(pred, target, beta=self.beta, reduction="none").mean(1)

        def mean(x: torch.Tensor) -> torch.Tensor:  # over the valid pairs, or by n_valid
            if n_valid is not None:
                return (x if w is None else w * x).sum() / n_valid
            return x.mean() if w is None else (w * x).sum() / w.sum().clamp(min=1.0)

        loss = mean(per_pair)
        with torch.no_grad():
            r2 = r2_score(pred, target, w)
            zero = mean(F.smooth_l1_loss(torch.zeros_like(target), target, beta=self.beta, reduction="none").mean(1))
        out = {"loss": loss, "loss_zero": zero}
        for i, c in enumerate(COMPONENTS):
            out[f"r2_{c}"] = r2[i]
        return out
