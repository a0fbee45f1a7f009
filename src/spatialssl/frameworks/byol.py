"""BYOL: bootstrap your own latent [0], from lightly's blocks.

Online network: backbone + ``BYOLProjectionHead`` + ``BYOLPredictionHead`` (hidden
``hidden_dim``, output ``proj_dim``; paper: 4096 / 256); target network: a momentum copy
of backbone + projection, EMA momentum on a cosine schedule ``momentum -> momentum_end``
(paper: 0.996 -> 1). Loss: lightly's ``NegativeCosineSimilarity`` between the online
prediction of one view and the target projection of the other, symmetrised and averaged
(the paper's ``2 - 2 cos`` summed over both directions, up to an affine rescaling).
The online encoder is the one evaluated.

[0]: BYOL, 2020, arXiv:2006.07733

Shapes: views.globals [G, B, 3, S, S] (G = 2 in the paper; more views average all
ordered pairs).
"""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import update_momentum

from ..backbones import Backbone
from .. import schedules
from ..views import Views
from . import register
from .base import Framework, encode, fp32, frozen_copy


@register("byol")
class BYOL(Framework):
    uses_local_views = False
    min_global_views = 2
    config_keys = ("hidden_dim", "proj_dim", "momentum", "momentum_end")

    def __init__(self, cfg: dict, backbone: Backbone, total_steps: int) -> None:
        super().__init__(cfg, backbone, total_steps)
        f = self.fcfg
        d, hid, out = backbone.embed_dim, f["hidden_dim"], f["proj_dim"]
        self.projection_head = BYOLProjectionHead(d, hid, out)
        self.prediction_head = BYOLPredictionHead(out, hid, out)
        self.momentum_backbone = self.new_backbone()
        self.momentum_projection_head = frozen_copy(lambda: BYOLProjectionHead(d, hid, out), self.projection_head)
        self.criterion = NegativeCosineSimilarity()
        self.momentum = schedules.cosine(f["momentum"], f["momentum_end"], total_steps)

    def forward(self, views: Views, step: int) -> dict[str, torch.Tensor]:
        g, b = views.globals.shape[:2]
        h = encode(self.backbone, views.globals)  # [G, B, D]
        p = self.prediction_head(self.projection_head(h.flatten(0, 1))).view(g, b, -1)
        with torch.no_grad():
            z = self.momentum_projection_head(encode(self.momentum_backbone, views.globals).flatten(0, 1)).view(g, b, -1)
        pairs = [(i, j) for i in range(g) for j in range(g) if i != j]
        with fp32(p):  # the loss in fp32 under bf16 autocast
            p, z = p.float(), z.float()
            loss = sum(self.criterion(p[i], z[j]) for i, j in pairs) / len(pairs)
        return {"loss": loss, "emb": h[0].detach()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = float(self.momentum[step])
        update_momentum(self.backbone, self.momentum_backbone, m)
        update_momentum(self.projection_head, self.momentum_projection_head, m)
