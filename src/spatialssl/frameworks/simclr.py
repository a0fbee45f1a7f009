"""SimCLR: contrastive learning of visual representations [0], from lightly's blocks.

Backbone + ``SimCLRProjectionHead`` (2 layers, BN, the paper's v1 head) and lightly's
``NTXentLoss`` (normalised temperature-scaled cross-entropy over the 2N - 2 negatives of
the batch, gathered from every process when distributed: ``gather_distributed=True``).

[0]: SimCLR, 2020, arXiv:2002.05709

Shapes: views.globals [G, B, 3, S, S] (G = 2 in the paper; more views average all pairs).
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from ..backbones import Backbone
from ..views import Views
from . import register
from .base import Framework, encode, fp32


@register("simclr")
class SimCLR(Framework):
    uses_local_views = False
    min_global_views = 2
    config_keys = ("hidden_dim", "proj_dim", "temperature")

    def __init__(self, cfg: dict, backbone: Backbone, total_steps: int) -> None:
        super().__init__(cfg, backbone, total_steps)
        f = self.fcfg
        self.projection_head = SimCLRProjectionHead(backbone.embed_dim, f["hidden_dim"], f["proj_dim"],
                                                    num_layers=2, batch_norm=True)
        self.criterion = NTXentLoss(temperature=f["temperature"], gather_distributed=True)

    def forward(self, views: Views, step: int) -> dict[str, torch.Tensor]:
        g, b = views.globals.shape[:2]
        h = encode(self.backbone, views.globals)  # [G, B, D]
        z = self.projection_head(h.flatten(0, 1)).view(g, b, -1)
        pairs = [(i, j) for i in range(g) for j in range(i + 1, g)]
        with fp32(z):  # the loss in fp32 under bf16 autocast (logits at 1 / temperature), its matmul too
            z = z.float()
            loss = sum(self.criterion(z[i], z[j]) for i, j in pairs) / len(pairs)
        return {"loss": loss, "emb": h[0].detach()}
