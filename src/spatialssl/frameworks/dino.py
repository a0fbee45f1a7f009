"""DINO: self-distillation with no labels [0], from lightly's blocks.

Student and EMA teacher (backbone + ``DINOProjectionHead``); the teacher sees the global
views, the student all views; lightly's ``DINOLoss`` (centering, sharpening, cross-entropy
over all teacher/student pairs of different views). The teacher's head is built anew
and loaded with the student's state dict: ``copy.deepcopy`` of a weight-normed head fails
on current torch. The student's outputs list starts with the global views in the
teacher's order, because ``DINOLoss`` skips pairs with the same index.

Schedules (per step): teacher temperature warmup, EMA momentum cosine
``momentum -> momentum_end``; the last layer is frozen for ``freeze_last_layer_steps``
(lengths in steps as ``config.schedule_steps`` resolves them: steps or fractions of the run).

[0]: DINO, 2021, arXiv:2104.14294

Shapes: views.globals [G, B, 3, S, S], views.locals [L, B, 3, s, s].
"""

from __future__ import annotations

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import update_momentum

from .. import config, schedules
from ..views import Views
from . import register
from .base import Framework, at_step, dino_loss, encode, fp32, frozen_copy, teacher_collapse_warnings, teacher_entropies


def make_dino_heads(in_dim: int, f: dict, freeze_last_layer: int = 0) -> tuple[DINOProjectionHead, DINOProjectionHead]:
    """Student head (its last layer frozen for the first ``freeze_last_layer`` steps) and a
    teacher head built anew with the student's weights."""
    kw = dict(input_dim=in_dim, hidden_dim=f["hidden_dim"], bottleneck_dim=f["bottleneck_dim"],
              output_dim=f["out_dim"], norm_last_layer=f["norm_last_layer"],
              batch_norm=f.get("head_batch_norm", False))
    student = DINOProjectionHead(freeze_last_layer=freeze_last_layer, **kw)
    return student, frozen_copy(lambda: DINOProjectionHead(**kw), student)


@register("dino")
class DINO(Framework):
    uses_local_views = True
    config_keys = ("hidden_dim", "bottleneck_dim", "out_dim", "norm_last_layer", "head_batch_norm",
                   "freeze_last_layer_steps", "teacher_temp", "warmup_teacher_temp", "warmup_teacher_temp_frac",
                   "student_temp", "center_momentum", "momentum", "momentum_end")

    def collapse_warnings(self, values: dict[str, float]) -> list[str]:
        return teacher_collapse_warnings(values, self.fcfg)

    def __init__(self, cfg: dict, backbone, total_steps: int) -> None:
        super().__init__(cfg, backbone, total_steps)
        f, lengths = self.fcfg, config.schedule_steps(cfg, total_steps)
        self.head, self.teacher_head = make_dino_heads(backbone.embed_dim, f,
                                                       lengths["framework.freeze_last_layer_steps"])
        self.teacher_backbone = self.new_backbone()
        self.criterion = DINOLoss(output_dim=f["out_dim"], teacher_temp=f["teacher_temp"],
                                  student_temp=f["student_temp"], center_momentum=f["center_momentum"])
        warm = lengths[config.TEACHER_TEMP_WARMUP]
        self.schedule_buffer("teacher_temp", schedules.linear_then_constant(f["warmup_teacher_temp"], f["teacher_temp"],
                                                                            warm, total_steps))
        self.momentum = schedules.cosine(f["momentum"], f["momentum_end"], total_steps)

    def forward(self, views: Views, step: torch.Tensor | int) -> dict[str, torch.Tensor]:
        g, l = views.globals.shape[0], views.locals.shape[0]
        with torch.no_grad():
            t_emb = encode(self.teacher_backbone, views.globals)
            t_out = self.teacher_head(t_emb.flatten(0, 1)).view(g, t_emb.shape[1], -1)  # [G, B, K]
        s_glob = encode(self.backbone, views.globals)  # [G, B, D]
        s_emb = [s_glob]
        s_loc = None
        if l:
            s_loc = encode(self.backbone, views.locals)  # [L, B, D]
            s_emb.append(s_loc)
        s_all = torch.cat(s_emb)  # [G + L, B, D]
        s_out = self.head(s_all.flatten(0, 1)).view(g + l, s_all.shape[1], -1)  # [G + L, B, K]
        temp = at_step(self.teacher_temp, step).float()  # 0-d, on the device (fp32, as lightly's loss had it)
        out = {"emb": s_glob[0].detach(), "teacher_temp": temp}
        if self.collect_logs:  # collapse indicators, before the loss updates the centre
            out.update(teacher_entropies(t_out, self.criterion.center, temp))
        # the loss in fp32 (under bf16 autocast the heads' outputs are bf16, and the loss's einsum would be)
        with fp32(s_out):
            out["loss"] = dino_loss(self.criterion, t_out.float(), s_out.float(), temp)
        if s_loc is not None:
            out["local_emb"] = s_loc
        return out

    def eval_backbone(self):
        return self.teacher_backbone

    def after_backward(self, step: int) -> None:
        self.head.cancel_last_layer_gradients(step)

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = float(self.momentum[step])
        update_momentum(self.backbone, self.teacher_backbone, m)
        update_momentum(self.head, self.teacher_head, m)
