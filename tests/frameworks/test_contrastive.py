"""Contrastive losses: MoCo v3's ctr against the paper's pseudocode, and negatives gathered
across processes (2 gloo processes on CPU give the loss of the whole batch)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from spatialssl.frameworks.mocov3 import contrastive_loss


def test_mocov3_ctr_matches_paper_pseudocode():
    """Algorithm 1 of MoCo v3: logits = q k^T / tau over normalised q, k; labels = arange;
    CrossEntropyLoss(logits, labels) * 2 tau."""
    torch.manual_seed(0)
    q, k, tau = torch.randn(6, 8), torch.randn(6, 8), 0.2
    qn, kn = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
    ref = 0.0
    for i in range(6):
        logits = torch.stack([qn[i] @ kn[j] for j in range(6)]) / tau
        ref += -(logits[i] - torch.logsumexp(logits, 0))
    torch.testing.assert_close(contrastive_loss(q, k, tau), ref / 6 * 2 * tau)


def _worker(rank: int, world: int, tmp: str, data: dict) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        n = data["q"].shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        q = data["q"][sl].clone().requires_grad_(True)
        z0 = data["z0"][sl].clone().requires_grad_(True)
        moco = contrastive_loss(q, data["k"][sl], 0.2)
        ntx = NTXentLoss(temperature=0.1, gather_distributed=True)(z0, data["z1"][sl])
        # DDP averages gradients over ranks: the loss to compare is the mean of the rank losses
        (moco + ntx).backward()
        torch.save((moco.item(), ntx.item(), q.grad, z0.grad), f"{tmp}/rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.skipif(not torch_dist.is_available(), reason="torch.distributed not available")
def test_losses_gather_negatives_across_processes(tmp_path):
    torch.manual_seed(0)
    world, n = 2, 4
    data = {k: torch.randn(world * n, 8) for k in ("q", "k", "z0", "z1")}
    mp.spawn(_worker, args=(world, str(tmp_path), data), nprocs=world, join=True)
    result = {r: torch.load(tmp_path / f"rank{r}.pt") for r in range(world)}

    q = data["q"].clone().requires_grad_(True)
    z0 = data["z0"].clone().requires_grad_(True)
    moco = contrastive_loss(q, data["k"], 0.2)
    ntx = NTXentLoss(temperature=0.1)(z0, data["z1"])
    (moco + ntx).backward()
    assert sum(r[0] for r in result.values()) / world == pytest.approx(moco.item(), rel=1e-5)
    assert sum(r[1] for r in result.values()) / world == pytest.approx(ntx.item(), rel=1e-5)
    # DDP averages the ranks' gradients, so the gradient of the whole-batch loss is each
    # rank's gradient / world (for NT-Xent, lightly's GatherLayer sums in the gradient that
    # flows to this rank's embeddings through the other ranks' losses)
    grad_q = torch.cat([result[r][2] for r in range(world)]) / world
    grad_z0 = torch.cat([result[r][3] for r in range(world)]) / world
    torch.testing.assert_close(grad_q, q.grad)
    torch.testing.assert_close(grad_z0, z0.grad)
