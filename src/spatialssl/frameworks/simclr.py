"""SimCLR: contrastive learning of visual representations [0], from lightly's blocks.

Backbone + ``SimCLRProjectionHead`` (2 layers, BN, the paper's v1 head) and lightly's
``NTXentLoss`` (normalised temperature-scaled cross-entropy over the 2N - 2 negatives of
the batch, gathered from every process when distributed: ``gather_distributed=True``),
computed by ``nt_xent``: its operations, but the diagonal left out with an index of static
size where lightly's boolean mask (a data-dependent size) breaks a compiled graph.

[0]: SimCLR, 2020, arXiv:2002.05709

Shapes: views.globals [G, B, 3, S, S] (G = 2 in the paper; more views average all pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.utils import dist

from ..backbones import Backbone
from ..views import Views
from . import register
from .base import Framework, encode, fp32


def off_diagonal(x: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """[N, M] -> [N, M - 1]: row i without its column ``offset + i``, as ``x[~eye].view(N, -1)``
    (same values, same order) without a boolean mask (whose result size the mask's values set)."""
    n, m = x.shape
    k = torch.arange(m - 1, device=x.device)[None]  # [1, M - 1]
    diag = torch.arange(n, device=x.device)[:, None] + offset  # [N, 1]
    return x.gather(1, k + (k >= diag).long())


def nt_xent(criterion: NTXentLoss, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
    """lightly's ``NTXentLoss.forward`` (no memory bank): the same operations, so the same
    bits, with the diagonal dropped by ``off_diagonal``."""
    b = out0.shape[0]
    out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    out0_large, out1_large, offset = out0, out1, 0
    if criterion.gather_distributed and dist.world_size() > 1:
        out0_large, out1_large = torch.cat(dist.gather(out0), 0), torch.cat(dist.gather(out1), 0)
        offset = dist.rank() * b
    t = criterion.temperature
    logits_00 = torch.einsum("nc,mc->nm", out0, out0_large) / t
    logits_01 = torch.einsum("nc,mc->nm", out0, out1_large) / t
    logits_10 = torch.einsum("nc,mc->nm", out1, out0_large) / t
    logits_11 = torch.einsum("nc,mc->nm", out1, out1_large) / t
    logits = torch.cat([torch.cat([logits_01, off_diagonal(logits_00, offset)], dim=1),
                        torch.cat([logits_10, off_diagonal(logits_11, offset)], dim=1)], dim=0)
    labels = (torch.arange(b, device=out0.device, dtype=torch.long) + offset).repeat(2)
    return criterion.cross_entropy(logits, labels)


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
            loss = sum(nt_xent(self.criterion, z[i], z[j]) for i, j in pairs) / len(pairs)
        return {"loss": loss, "emb": h[0].detach()}
