"""MoCo v3: momentum contrast for ViTs [0], from lightly's blocks.

Query encoder: backbone + 3-layer projection (BN on every layer, lightly's
``MoCoProjectionHead(num_layers=3, batch_norm=True)``) + 2-layer prediction (BN on the
hidden layer only, which is exactly lightly's ``BYOLPredictionHead``); key encoder: a
momentum copy of backbone + projection (no predictor), EMA momentum on a cosine schedule
``momentum -> momentum_end`` (paper: 0.99 -> 1). Loss: the paper's symmetrised InfoNCE
``ctr(q1, k2) + ctr(q2, k1)``, each the cross-entropy of a query against every key of the
batch, gathered across processes when distributed, at temperature tau, scaled by 2 tau.

With a ViT the patch embedding is frozen at its random init ("random patch projection",
the paper's stability trick; ``framework.stop_grad_patch_embed`` when the config has it).
The query (base) encoder is the one evaluated, as in the paper.

[0]: MoCo v3, 2021, arXiv:2104.02057

Shapes: views.globals [G, B, 3, S, S] (G = 2 in the paper; more views average all
ordered pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils import dist

from ..backbones import Backbone
from .. import schedules
from ..views import Views
from . import register
from .base import Framework, encode, fp32, frozen_copy


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's ``ctr(q, k)``: InfoNCE of each query against all keys, times 2 tau.

    Keys are gathered from every process when ``torch.distributed`` is initialised (the
    positives of this rank's queries sit at offset ``rank * B``); gradients flow through
    the queries only (keys come from the momentum encoder).

    Args:
        q: [B, K] queries, k: [B, K] keys (normalised here).
        temperature: tau.
    Returns:
        scalar loss, computed in fp32 (autocast off).

    >>> contrastive_loss(torch.randn(8, 256), torch.randn(8, 256), 0.2)
    """
    with fp32(q):  # in fp32 under bf16 autocast, the logits' matmul too
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k.float(), dim=1)
        if dist.world_size() > 1:  # guarded: world_size() is 1 unless torch.distributed is initialised
            k = torch.cat(dist.gather(k.contiguous()), dim=0)
        logits = q @ k.t() / temperature  # [B, B * world]
        labels = torch.arange(q.shape[0], device=q.device) + dist.rank() * q.shape[0]
        return F.cross_entropy(logits, labels) * (2 * temperature)


@register("mocov3")
class MoCoV3(Framework):
    uses_local_views = False
    min_global_views = 2
    config_keys = ("hidden_dim", "proj_dim", "temperature", "momentum", "momentum_end", "stop_grad_patch_embed")

    def __init__(self, cfg: dict, backbone: Backbone, total_steps: int) -> None:
        super().__init__(cfg, backbone, total_steps)
        f = self.fcfg
        d, hid, out = backbone.embed_dim, f["hidden_dim"], f["proj_dim"]
        if backbone.kind == "vit" and f.get("stop_grad_patch_embed", True):
            backbone.model.patch_embed.requires_grad_(False)
        self.projection_head = MoCoProjectionHead(d, hid, out, num_layers=3, batch_norm=True)
        self.prediction_head = BYOLPredictionHead(out, hid, out)
        self.momentum_backbone = self.new_backbone()
        self.momentum_projection_head = frozen_copy(lambda: MoCoProjectionHead(d, hid, out, num_layers=3, batch_norm=True), self.projection_head)
        self.temperature = f["temperature"]
        self.momentum = schedules.cosine(f["momentum"], f["momentum_end"], total_steps)

    def forward(self, views: Views, step: int) -> dict[str, torch.Tensor]:
        g, b = views.globals.shape[:2]
        h = encode(self.backbone, views.globals)  # [G, B, D]
        q = self.prediction_head(self.projection_head(h.flatten(0, 1))).view(g, b, -1)
        with torch.no_grad():
            k = self.momentum_projection_head(encode(self.momentum_backbone, views.globals).flatten(0, 1)).view(g, b, -1)
        pairs = [(i, j) for i in range(g) for j in range(g) if i != j]
        # the paper sums ctr(q1, k2) + ctr(q2, k1); with G views, sum over pairs / (G - 1)
        loss = sum(contrastive_loss(q[i], k[j], self.temperature) for i, j in pairs) / (g - 1)
        return {"loss": loss, "emb": h[0].detach()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = float(self.momentum[step])
        update_momentum(self.backbone, self.momentum_backbone, m)
        update_momentum(self.projection_head, self.momentum_projection_head, m)
