"""Probes trained on frozen features, shared by the protocols.

``train_linear`` trains a grid of linear classifiers (one per learning rate) in one pass
over cached features, as DINOv2's linear eval does, and picks the best on a held-out part
of the probe-train set (never on the test set).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def feature_stats(x: torch.Tensor, dim: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and scale (std) of probe-train features over ``dim`` (kept), for ``(x - mean) / scale``.

    Features that are (nearly) constant on probe-train get an infinite scale, so they
    standardise to 0 on every split: a random-init CNN has dead ReLU units that are 0 on
    every probe-train image but not on every test image, and dividing those by a clamped
    ~0 std made test inputs of 1e3-1e4 (a patch-pair floor of R^2 = -6 on one seed).
    """
    mean, std = x.mean(dim, keepdim=True), x.std(dim, keepdim=True)
    dead = std <= 1e-4 * std.median() + 1e-12
    return mean, torch.where(dead, torch.full_like(std, float("inf")), std)


def knn_votes(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, num_classes: int,
              k: int = 20, t: float = 0.07, chunk: int = 1024, bank_chunk: int = 16384) -> torch.Tensor:
    """Class votes of weighted k-NN (DINO's protocol, Caron et al. 2021, arXiv:2104.14294).

    Features are L2-normalised; each of the k most similar probe-train features votes for
    its class with weight exp(cos / t). The top-k is chunked over the queries (``chunk``) and
    over the bank (``bank_chunk``), merging the running top-k with each bank chunk's, so the
    memory beyond the bank is O(chunk x bank_chunk + bank_chunk x D), whatever N (the bank is
    normalised chunk by chunk, never copied whole). Runs on ``train``'s device.

    Args:
        train: [N, D] bank, train_y: [N] labels, test: [M, D] queries.
    Returns:
        float votes [M, num_classes] on the CPU.
    """
    dev = train.device
    train_y = train_y.to(dev)
    k = min(k, len(train))
    out = []
    for i in range(0, len(test), chunk):
        q = F.normalize(test[i:i + chunk].to(dev).float(), dim=1)
        best_s = torch.full((len(q), 0), float("-inf"), device=dev)
        best_i = torch.zeros((len(q), 0), dtype=torch.long, device=dev)
        for j in range(0, len(train), bank_chunk):
            # normalised per chunk (O(N D) per query chunk, against O(chunk N D) for the products):
            # a normalised copy of the whole bank would double its memory
            sim = q @ F.normalize(train[j:j + bank_chunk].float(), dim=1).T  # [m, b]
            s, idx = sim.topk(min(k, sim.shape[1]), dim=1)
            del sim  # freed before the next chunk's product is allocated
            best_s, pos = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
            best_i = torch.cat([best_i, idx + j], 1).gather(1, pos)
        w = (best_s / t).exp()
        votes = torch.zeros(len(q), num_classes, device=dev).scatter_add_(1, train_y[best_i], w)
        out.append(votes.cpu())
    return torch.cat(out)


def knn_predict(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, num_classes: int,
                k: int = 20, t: float = 0.07, chunk: int = 1024, bank_chunk: int = 16384) -> torch.Tensor:
    """Weighted k-NN labels [M] (see ``knn_votes``)."""
    return knn_votes(train, train_y, test, num_classes, k, t, chunk, bank_chunk).argmax(1)


def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, lrs: list[float], epochs: int = 100,
                 seed: int = 0, batch_size: int = 256, val_frac: float = 0.1,
                 weight_decay: float = 0.0) -> tuple[torch.nn.Linear, dict]:
    """A grid of linear classifiers over standardised features, best picked on a held-out split.

    Args:
        x: [N, D] features (standardise them first), y: [N] labels.
    Returns:
        the chosen ``nn.Linear`` (refit on all of x) and a dict of val accuracy per lr.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    perm = torch.randperm(n, generator=g).to(x.device)
    n_val = max(1, int(val_frac * n)) if n >= 20 else 0
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    heads = _fit_grid(x[tr_idx], y[tr_idx], num_classes, lrs, epochs, g, batch_size, weight_decay)
    if n_val:
        with torch.no_grad():
            accs = [(h(x[val_idx]).argmax(1) == y[val_idx]).float().mean().item() for h in heads]
    else:
        accs = [0.0] * len(lrs)
    best = max(range(len(lrs)), key=lambda i: accs[i])
    head = _fit_grid(x, y, num_classes, [lrs[best]], epochs, g, batch_size, weight_decay)[0]
    return head, {"val_acc_by_lr": dict(zip(map(str, lrs), accs)), "best_lr": lrs[best]}


def _fit_grid(x, y, num_classes, lrs, epochs, g, batch_size, weight_decay) -> list[torch.nn.Linear]:
    """One SGD pass trains ``len(lrs)`` linear heads at once (on ``x``'s device)."""
    d, dev = x.shape[1], x.device
    k = len(lrs)
    w = torch.zeros(k, d, num_classes, requires_grad=True, device=dev)
    b = torch.zeros(k, num_classes, requires_grad=True, device=dev)
    lr_t = torch.tensor(lrs, device=dev).view(k, 1, 1)
    opt = torch.optim.SGD([w, b], lr=1.0, momentum=0.9)  # per-head lr applied to the gradients
    steps_per_epoch = max(1, (len(x) + batch_size - 1) // batch_size)
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g).to(dev)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            logits = torch.einsum("nd,kdc->knc", x[idx], w) + b[:, None, :]
            loss = F.cross_entropy(logits.reshape(-1, num_classes), y[idx].repeat(k), reduction="sum") / len(idx)
            opt.zero_grad()
            loss.backward()
            cos = 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.no_grad():
                w.grad.add_(w, alpha=weight_decay).mul_(lr_t * cos)
                b.grad.mul_(lr_t[:, :, 0] * cos)
            opt.step()
            step += 1
    heads = []
    for i in range(k):
        h = torch.nn.Linear(d, num_classes).to(dev)
        with torch.no_grad():
            h.weight.copy_(w[i].T)
            h.bias.copy_(b[i])
        heads.append(h)
    return heads


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred.cpu() == y.cpu()).float().mean())


def correct(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """0/1 float [N] per test item (the per-item outcome of a top-1)."""
    return (pred.cpu() == y.cpu()).float()
