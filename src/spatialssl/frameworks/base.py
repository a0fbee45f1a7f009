"""The contract every SSL framework follows.

A framework is a small ``nn.Module`` built on a backbone (``self.backbone``, the
student/online network) and lightly's losses and heads. Its ``forward(views, step)``
(``step``: the trainer passes a 0-d long tensor on the device, so that a compiled forward
is not recompiled each step; an int works too) returns a dict of named terms: ``loss`` (the framework's total, the trainer adds SP to
it) and any scalars to log; optionally ``local_emb`` [L, B, D], the student backbone's
pooled embeddings of ``views.locals`` (SP reuses them instead of encoding the views
again), and ``emb`` [N, D], pooled embeddings for the collapse indicators. The trainer
alone does backward, clipping and the optimiser step; ``after_backward`` and
``after_step`` are the framework's hooks around the step (last-layer freezing, momentum
updates), ``draw`` the hook before it (the framework's own random draws).

Under ``train.compile`` the whole forward (and SP, and the losses) is one compiled
graph: a forward reads per-step values as tensors (``at_step(self.sched, step)``, a
schedule kept as a buffer by ``schedule_buffer``), never ``float()`` / ``.item()`` / ``int(step)``
(each a graph break), and makes no random draw (``draw`` makes them, outside the graph).
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules.center import center_mean, center_momentum
from lightly.models.utils import deactivate_requires_grad

from ..backbones import Backbone, create_backbone
from ..config import ConfigError
from ..views import Views


class Framework(nn.Module):
    """Base class. Subclasses set ``uses_local_views`` and implement ``forward``.

    Args:
        cfg: the resolved run config (whole, so a framework can read ``views``).
        backbone: the student backbone.
        total_steps: length of the run, for schedules precomputed per step.
    """

    name: str = ""
    uses_local_views: bool = False
    # the least views.n_global it trains with (2: it contrasts two global views of each image)
    min_global_views: ClassVar[int] = 1
    # the ``framework.*`` config keys it reads (besides ``name``); the command warns about a
    # key given with --set that the chosen framework does not read (``unused_keys``). None:
    # not declared (a user's framework), nothing checked
    config_keys: ClassVar[tuple[str, ...] | None] = None
    # the trainer sets this True on logging steps only: diagnostics that cost a pass over
    # the outputs (e.g. DINO's teacher entropies) are computed then and skipped otherwise
    collect_logs: bool = True

    def __init__(self, cfg: dict, backbone: Backbone, total_steps: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.fcfg = cfg["framework"]
        self.backbone = backbone
        self.total_steps = total_steps

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """The framework's own requirements on a resolved config (``ConfigError`` naming the
        key); ``pretrain`` checks them before it sets anything up (``config.resolve``, torch-free,
        cannot read the framework classes)."""
        n = cfg["views"]["n_global"]
        if n < cls.min_global_views:
            raise ConfigError(f"config key 'views.n_global' must be >= {cls.min_global_views} for framework "
                              f"'{cls.name}' ({cls.__name__} contrasts {cls.min_global_views} global views of each "
                              f"image), got {n}")

    def collapse_warnings(self, values: dict[str, float]) -> list[str]:
        """Warnings that this logging step's ``values`` (the logged terms) show a collapse
        particular to this framework; the trainer logs them beside its own (embedding std,
        RankMe). None by default."""
        return []

    def new_backbone(self) -> Backbone:
        """A teacher / momentum backbone: same architecture, the student's weights, no gradients."""
        return frozen_copy(lambda: create_backbone(self.cfg["backbone"]), self.backbone)

    def eval_backbone(self) -> Backbone:
        """The backbone to evaluate and export (the teacher for DINO-like methods)."""
        return self.backbone

    def schedule_buffer(self, name: str, values: torch.Tensor) -> None:
        """Keep a per-step schedule as a buffer (on the module's device, not in its
        state dict), so that ``forward`` indexes it with the step tensor on the device."""
        self.register_buffer(name, values, persistent=False)

    def draw(self, views: Views, step: int) -> Views:
        """The framework's own random draws for ``step``, made before the forward (outside
        the compiled graph) and attached to the views it returns (``Views.draws``). None by
        default; iBOT draws its block masks."""
        return views

    def forward(self, views: Views, step: torch.Tensor | int) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def after_backward(self, step: int) -> None:
        """Called after backward, before clipping and the optimiser step."""

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Called after the optimiser step (momentum updates)."""


def at_step(schedule: torch.Tensor, step: torch.Tensor | int) -> torch.Tensor:
    """``schedule[step]`` (0-d) for an int step or a 0-d tensor one. The tensor indexes as a
    one-element index: ``schedule[t]`` with a 0-d tensor ``t`` reads t's value on the host
    (``.item()``), which a compiled graph cannot (AOTAutograd fails on it)."""
    if not torch.is_tensor(step):
        return schedule[step]
    return schedule.index_select(0, step.reshape(1)).reshape(())


def frozen_copy(make: Callable[[], nn.Module], source: nn.Module) -> nn.Module:
    """``make()`` loaded with ``source``'s weights, on its device, with gradients off: a
    teacher or momentum copy. Built anew because ``copy.deepcopy`` fails on weight-normed
    heads (lightly's DINOProjectionHead) on current torch."""
    copy = make()
    copy.load_state_dict(source.state_dict())
    deactivate_requires_grad(copy)
    return copy.to(next(source.parameters()).device)


def fp32(x: torch.Tensor):
    """Autocast off on ``x``'s device: a loss written to run in fp32 does. Under bf16 autocast
    ``.float()`` on a loss's inputs is not enough: the matmuls and einsums inside it (lightly's
    DINO and NT-Xent losses) would be cast back to bf16.

    >>> with fp32(z):
    ...     loss = criterion(z.float(), ...)
    """
    return torch.autocast(x.device.type, enabled=False)


def encode(backbone: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """One backbone pass over all views of one size: [V, B, 3, S, S] -> [V, B, D]."""
    v, b = views.shape[:2]
    return backbone(views.flatten(0, 1)).view(v, b, -1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) along the last dim of probabilities p."""
    return -(p * torch.log(p.clamp(min=1e-12))).sum(-1)


def dino_loss(criterion: DINOLoss, teacher_out: torch.Tensor, student_out: torch.Tensor,
              teacher_temp: torch.Tensor) -> torch.Tensor:
    """lightly's ``DINOLoss.forward`` on stacked outputs [T, B, K], [S, B, K] with the
    teacher temperature a tensor (lightly's wraps a float in ``torch.tensor``: a graph
    break or a recompile per step under ``torch.compile``); the same operations, so the
    same bits. Updates the criterion's centre in place, as lightly's does."""
    t_out = F.softmax((teacher_out - criterion.center) / teacher_temp, dim=-1)
    s_out = F.log_softmax(student_out / criterion.student_temp, dim=-1)
    loss = -torch.einsum("tbd,sbd->ts", t_out, s_out)
    loss.fill_diagonal_(0)
    n_terms = loss.numel() - loss.diagonal().numel()
    if n_terms == 0:
        raise ValueError(f"DINOLoss needs two views in all (the pairs of one view index are skipped), got "
                         f"{teacher_out.shape[0]} teacher and {student_out.shape[0]} student view(s)")
    loss = loss.sum() / (n_terms * teacher_out.shape[1])
    with torch.no_grad():
        criterion.center.copy_(center_momentum(criterion.center, center_mean(teacher_out, dim=(0, 1)),
                                               criterion.center_momentum))
    return loss


@torch.no_grad()
def teacher_entropies(t_out: torch.Tensor, center: torch.Tensor, temp: torch.Tensor | float) -> dict[str, torch.Tensor]:
    """DINO-style collapse indicators of teacher outputs [G, B, K] (centred, sharpened as the
    loss does; call before the loss updates the centre): ``teacher_entropy``, the mean
    per-image entropy (log K: uniform collapse), and ``teacher_mean_entropy``, the entropy
    of the batch-mean distribution (small: few prototypes in use)."""
    p = torch.softmax((t_out.float() - center) / temp, dim=-1)
    return {"teacher_entropy": entropy(p).mean(), "teacher_mean_entropy": entropy(p.mean(dim=(0, 1)))}


def teacher_collapse_warnings(values: dict[str, float], fcfg: dict) -> list[str]:
    """DINO / iBOT collapse seen in ``teacher_entropies`` (as logged): few prototypes in use
    (batch-mean entropy under half of log K), or uniform outputs (per-image entropy at log K),
    with the setting that keeps a small CNN off the latter (``framework.head_batch_norm``)."""
    if "teacher_mean_entropy" not in values:  # not a logging step's values
        return []
    out, max_ent = [], math.log(fcfg["out_dim"])
    if values["teacher_mean_entropy"] < 0.5 * max_ent:
        out.append(f"collapse warning: batch-mean teacher entropy {values['teacher_mean_entropy']:.2f} nats < half "
                   f"of its maximum {max_ent:.2f} (few prototypes in use)")
    if values.get("teacher_entropy", 0.0) > 0.98 * max_ent:
        out.append(f"collapse warning: per-sample teacher entropy {values['teacher_entropy']:.2f} nats is at its "
                   f"maximum {max_ent:.2f} (uniform outputs: the DINO loss gives no signal)"
                   + ("" if fcfg["head_batch_norm"] else
                      "; on small CNNs framework.head_batch_norm=true keeps DINO off this (configs/demo_dino.yaml)"))
    return out
