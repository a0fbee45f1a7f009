"""iBOT: masked image modelling with an online tokenizer [0], from lightly's blocks.

DINO's CLS self-distillation plus a patch term: the student sees its global views with
block-masked patches (a learnable mask token replaces the masked patch embeddings before
the transformer blocks) and predicts, at the masked positions, the teacher's output for
the same patches of the unmasked view (lightly's ``IBOTPatchLoss``, centred and
sharpened like ``DINOLoss``). ``loss = cls_loss + patch_loss_weight * patch_loss``.

Heads: ``shared_head: true`` projects CLS and patch tokens with one ``DINOProjectionHead``
(the paper's ViT-S/16 setting; patch outputs then have ``out_dim`` dims and
``patch_out_dim`` is unused); ``false`` gives patch tokens their own head of
``patch_out_dim`` (as DINOv2's ``ibot_separate_head``). Masks (lightly's
``random_block_mask``): a fraction ``mask_prob`` of the images of each global view is
masked, each with a ratio in ``mask_ratio`` (iBOT's ``pred_ratio 0 0.3 ±0.2``).
The teacher temperature schedule serves both terms (iBOT ViT-S uses 0.07 for both).

Data parallelism: the masks are keyed by the sample, like the views (``views.BatchPart``):
every process draws them for the global batch (``Views.part``) and keeps its rows, and the
patch centre is the mean over the masked tokens of all processes (one all-reduce of their
sum and count), so W processes train as one process with the global batch does.

iBOT needs patch tokens and a mask token inside the ViT; on a CNN it raises ValueError.

[0]: iBOT, 2021, arXiv:2111.07832

Shapes: views.globals [G, B, 3, S, S], views.locals [L, B, 3, s, s]; masks [G*B, h, w].
"""

from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn as nn
from lightly.loss import DINOLoss, IBOTPatchLoss
from lightly.models.modules.center import center_mean, center_momentum
from lightly.models.utils import random_block_mask, update_momentum
from lightly.utils import dist

from ..backbones import Backbone
from .. import config, schedules
from ..views import BatchPart, Views
from . import register
from .base import Framework, at_step, dino_loss, encode, teacher_collapse_warnings, teacher_entropies
from .dino import DINO, make_dino_heads
from ..config import ConfigError


def vit_tokens(backbone: Backbone, x: torch.Tensor, mask: torch.Tensor | None = None,
               mask_token: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A timm ViT pass that can replace masked patch embeddings by ``mask_token``.

    Follows ``VisionTransformer.forward_features`` step by step, with the mask applied
    after the patch embedding and before the position embedding (as iBOT does).

    Args:
        backbone: a ViT ``Backbone``.
        x: [B, 3, H, W].
        mask: bool [B, h, w] (h = H / patch), True = masked; None = no masking.
        mask_token: [D] learnable embedding put where ``mask`` is True.
    Returns:
        cls [B, D], patch tokens [B, h*w, D] (after the final norm).
    """
    m = backbone.model
    t = m.patch_embed(x)  # [B, h, w, D] with dynamic_img_size, else [B, h*w, D]
    if mask is not None:
        mk = mask[..., None] if t.ndim == 4 else mask.flatten(1)[..., None]
        t = torch.where(mk, mask_token.to(t.dtype), t)
    t = m._pos_embed(t)
    t = m.patch_drop(t)
    t = m.norm_pre(t)
    t = m.blocks(t)
    t = m.norm(t)
    return t[:, 0], t[:, m.num_prefix_tokens:]


def block_masks(n: int, grid: tuple[int, int], mask_prob: float, ratio: tuple[float, float],
                device: torch.device, seed: int) -> torch.Tensor:
    """iBOT block masks for ``n`` images: bool [n, h, w], a function of ``seed`` alone.

    ``int(n * mask_prob)`` images get block masks covering ``ratio`` of their patches
    (lightly's ``random_block_mask``); blocks are at least 4 patches, fewer on grids too
    small for that. lightly draws from Python's global ``random``: it is seeded with
    ``seed`` here and restored afterwards, so masks are keyed by the step like every other
    random draw of a run (a resumed run masks exactly as an uninterrupted one). At least
    one patch of the ``n`` images is always masked (``step_masks`` draws for the global
    batch: a process's rows may have none; the patch loss then adds 0 there).
    """
    h, w = grid
    lo = max(ratio[0], (1 + 1e-6) / (h * w))  # a masked image has >= 1 masked patch
    hi = max(ratio[1], lo)
    min_block = min(4, int(h * w * lo))  # <= the patches of any masked image (lightly asserts it)
    state = random.getstate()
    random.seed(seed)
    try:
        # drawn on the CPU: lightly's loop reads each block back (.item()), a sync per block on a GPU
        masks = random_block_mask((n, h, w), batch_mask_ratio=mask_prob, min_image_mask_ratio=lo,
                                  max_image_mask_ratio=hi, min_num_masks_per_block=min_block, device="cpu")
        if not masks.any():
            masks[random.randrange(n), random.randrange(h), random.randrange(w)] = True
    finally:
        random.setstate(state)
    return masks.to(device, non_blocking=True)


def mask_seed(seed: int, step: int) -> int:
    """The block masks' seed at ``step``: the same on every process (they are drawn for the
    global batch). It is the one-process seed of old, when the rank (0) was added to it."""
    return (seed * 1_000_003 + step) * 1024


def step_masks(g: int, b: int, part: BatchPart | None, grid: tuple[int, int], mask_prob: float,
               ratio: tuple[float, float], seed: int) -> torch.Tensor:
    """The block masks of this process's global views at one step: bool [G*b, h, w] on the
    host, view major (row ``v * b + i``, as ``views.globals.flatten(0, 1)``).

    Keyed by the sample, not the process: drawn for the ``G * part.total`` global views of
    the whole global batch (``block_masks``, one ``seed`` on every process) and sliced to
    ``part.rows``, so image i gets the same mask whether one process or rank r of W
    trains on it. ``part`` None (one process): the ``G * b`` masks of the batch, the draws
    of a whole part. The price: every process runs lightly's Python loop over all global
    views of the batch, ~0.04 ms each (0.35 s for 8,192, measured on a loaded 2-core CPU),
    where it drew its own G * b before.
    """
    total, rows = (b, slice(0, b)) if part is None else (part.total, part.rows)
    masks = block_masks(g * total, grid, mask_prob, ratio, torch.device("cpu"), seed)
    if total == b:
        return masks
    return masks.view(g, total, *grid)[:, rows].reshape(g * b, *grid)


@torch.no_grad()
def update_patch_center(criterion: IBOTPatchLoss, t_out: torch.Tensor) -> None:
    """Moving-average update of the patch centre with the mean of the teacher's outputs
    [M, K] at the masked tokens of *all* processes.

    lightly's ``Center.update`` averages the processes' means, which weighs a token by
    1 / (its process's M): unequal when the processes mask different numbers of tokens (a
    process may mask none). Distributed, this sums tokens and counts them in one
    all-reduce instead; with one process it is lightly's update, unchanged (written into
    the centre buffer in place, which ``torch.compile`` traces)."""
    c = criterion.center
    if dist.world_size() == 1:
        c.center.copy_(center_momentum(center=c.center, batch_center=center_mean(t_out, c.dim), momentum=c.momentum))
        return
    k = t_out.shape[-1]
    buf = torch.cat([t_out.float().sum(0), t_out.new_full((1,), t_out.shape[0], dtype=torch.float32)])
    torch.distributed.all_reduce(buf)
    batch_center = (buf[:k] / buf[k].clamp(min=1)).view(1, k)
    c.center = center_momentum(center=c.center, batch_center=batch_center, momentum=c.momentum)


def masked_positions(masks: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the masked tokens and their per-token weights (1 / masked tokens of
    the image), computed on the host from host masks [n, h, w] and sent to ``device`` with
    the masks' other copies: indexing device tensors with a device boolean mask instead
    (``t[mask]``, as lightly's ``IBOTPatchLoss`` does) makes the host wait for the device
    to count the True entries, twice per step.

    Returns:
        idx: long [M] into the flattened [n * h * w] tokens; weight: float [M].
    """
    flat = masks.flatten(1)
    per_image = flat.sum(1).clamp(min=1)  # [n]
    idx = flat.flatten().nonzero().squeeze(1)
    weight = (1.0 / per_image.float()).repeat_interleave(flat.shape[1])[idx]
    pin = device.type == "cuda"
    return ((idx.pin_memory() if pin else idx).to(device, non_blocking=True),
            (weight.pin_memory() if pin else weight).to(device, non_blocking=True))


def patch_loss(criterion: IBOTPatchLoss, t_out: torch.Tensor, s_out: torch.Tensor, weight: torch.Tensor,
               n_images: int, teacher_temp: torch.Tensor | float) -> torch.Tensor:
    """lightly's ``IBOTPatchLoss.forward`` with the per-token weights given (see
    ``masked_positions``) instead of derived from a device mask: per image, the mean over
    its masked tokens of the cross-entropy between the centred, sharpened teacher and the
    student, averaged over all ``n_images``; updates the criterion's centre as it does
    (over every process's masked tokens: ``update_patch_center``). With W processes of
    ``n_images`` each, the average of their losses is the global batch's.
    t_out, s_out: [M, K] (M may be 0 on a process); weight: [M]."""
    t = torch.softmax((t_out - criterion.center.value) / teacher_temp, dim=-1)
    loss = -(t * torch.log_softmax(s_out / criterion.student_temp, dim=-1)).sum(-1)
    loss = (loss * weight).sum() / n_images
    update_patch_center(criterion, t_out)
    return loss


@register("ibot")
class IBOT(Framework):
    uses_local_views = True
    config_keys = (*DINO.config_keys, "patch_out_dim", "shared_head", "mask_ratio", "mask_prob", "patch_loss_weight")

    def collapse_warnings(self, values: dict[str, float]) -> list[str]:
        return teacher_collapse_warnings(values, self.fcfg)

    def __init__(self, cfg: dict, backbone: Backbone, total_steps: int) -> None:
        super().__init__(cfg, backbone, total_steps)
        if backbone.kind != "vit":
            raise ConfigError(f"iBOT needs a ViT backbone (masked patch tokens); got '{cfg['backbone']['name']}'")
        f, lengths = self.fcfg, config.schedule_steps(cfg, total_steps)
        d = backbone.embed_dim
        freeze = lengths["framework.freeze_last_layer_steps"]
        self.head, self.teacher_head = make_dino_heads(d, f, freeze)
        self.patch_head: nn.Module | None = None
        self.teacher_patch_head: nn.Module | None = None
        patch_dim = f["out_dim"]
        if not f["shared_head"]:
            patch_dim = f["patch_out_dim"]
            self.patch_head, self.teacher_patch_head = make_dino_heads(d, {**f, "out_dim": patch_dim}, freeze)
        self.mask_token = nn.Parameter(torch.zeros(d))  # iBOT initialises it to zero
        self.teacher_backbone = self.new_backbone()
        self.criterion = DINOLoss(output_dim=f["out_dim"], teacher_temp=f["teacher_temp"],
                                  student_temp=f["student_temp"], center_momentum=f["center_momentum"])
        self.patch_criterion = IBOTPatchLoss(output_dim=patch_dim, teacher_temp=f["teacher_temp"],
                                             student_temp=f["student_temp"], center_momentum=f["center_momentum"])
        warm = lengths[config.TEACHER_TEMP_WARMUP]
        self.schedule_buffer("teacher_temp", schedules.linear_then_constant(f["warmup_teacher_temp"], f["teacher_temp"],
                                                                            warm, total_steps))
        self.momentum = schedules.cosine(f["momentum"], f["momentum_end"], total_steps)

    def _patch_heads(self) -> tuple[nn.Module, nn.Module]:
        if self.patch_head is None:
            return self.head, self.teacher_head
        return self.patch_head, self.teacher_patch_head

    def draw(self, views: Views, step: int) -> Views:
        """The step's block masks (drawn on the host, keyed by the step and the sample), their
        masked positions and weights (``masked_positions``), on the device, as ``views.draws``
        (``masks``, ``mask_idx``, ``mask_weight``); none when the patch loss is off. Their
        number of masked tokens changes from step to step: under ``torch.compile`` it is a
        dynamic size (``torch._dynamo.maybe_mark_dynamic``), one graph for every step."""
        f = self.fcfg
        if f["patch_loss_weight"] <= 0:
            return views
        g, b = views.globals.shape[:2]
        p = self.backbone.model.patch_embed.patch_size
        grid = (views.globals.shape[-2] // p[0], views.globals.shape[-1] // p[1])
        device = views.globals.device
        host_masks = step_masks(g, b, views.part, grid, f["mask_prob"], tuple(f["mask_ratio"]),
                                mask_seed(self.cfg["seed"], step))
        idx, weight = masked_positions(host_masks, device)
        masks = (host_masks.pin_memory() if device.type == "cuda" else host_masks).to(device, non_blocking=True)
        torch._dynamo.maybe_mark_dynamic(idx, 0)
        torch._dynamo.maybe_mark_dynamic(weight, 0)
        return dataclasses.replace(views, draws={**views.draws, "masks": masks, "mask_idx": idx, "mask_weight": weight})

    def forward(self, views: Views, step: torch.Tensor | int) -> dict[str, torch.Tensor]:
        f = self.fcfg
        g, b = views.globals.shape[:2]
        l = views.locals.shape[0]
        x = views.globals.flatten(0, 1)  # [G*B, 3, S, S]
        if f["patch_loss_weight"] > 0 and "masks" not in views.draws:  # called without the trainer's draw
            views = self.draw(views, int(step))
        masks, idx, weight = (views.draws.get(k) for k in ("masks", "mask_idx", "mask_weight"))
        temp = at_step(self.teacher_temp, step).float()  # 0-d, on the device (fp32, as lightly's loss had it)
        head, t_head = self._patch_heads()

        with torch.no_grad():
            t_cls, t_patch = vit_tokens(self.teacher_backbone, x)  # [G*B, D], [G*B, N, D]
            t_out = self.teacher_head(t_cls).view(g, b, -1)  # [G, B, K]
        s_cls, s_patch = vit_tokens(self.backbone, x, masks, self.mask_token)
        s_glob = s_cls.view(g, b, -1)
        s_emb = [s_glob]
        s_loc = None
        if l:
            s_loc = encode(self.backbone, views.locals)  # [L, B, D]
            s_emb.append(s_loc)
        s_out = self.head(torch.cat(s_emb))  # [G + L, B, K]

        out = {"emb": s_glob[0].detach(), "teacher_temp": temp}
        if self.collect_logs:  # collapse indicators, before the loss updates the centre
            out.update(teacher_entropies(t_out, self.criterion.center, temp))
        cls_loss = dino_loss(self.criterion, t_out, s_out, temp)
        out["cls_loss"] = cls_loss.detach()
        loss = cls_loss
        if masks is not None:
            with torch.no_grad():  # the masked positions only: [M, K']
                t_pout = t_head(t_patch.flatten(0, 1).index_select(0, idx))
            s_pout = head(s_patch.flatten(0, 1).index_select(0, idx))
            p_loss = patch_loss(self.patch_criterion, t_pout, s_pout, weight, g * b, temp)
            loss = loss + f["patch_loss_weight"] * p_loss
            out["patch_loss"] = p_loss.detach()
            out["mask_ratio"] = masks.float().mean()
        out["loss"] = loss
        if s_loc is not None:
            out["local_emb"] = s_loc
        return out

    def eval_backbone(self) -> Backbone:
        return self.teacher_backbone

    def after_backward(self, step: int) -> None:
        self.head.cancel_last_layer_gradients(step)
        if self.patch_head is not None:
            self.patch_head.cancel_last_layer_gradients(step)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = float(self.momentum[step])
        update_momentum(self.backbone, self.teacher_backbone, m)
        update_momentum(self.head, self.teacher_head, m)
        if self.patch_head is not None:
            update_momentum(self.patch_head, self.teacher_patch_head, m)
