"""``jigsaw``: solve n x n jigsaw puzzles from frozen tile embeddings; recognise the result.

Puzzles after Noroozi & Favaro (2016, arXiv:1603.09246), here as a *probe* on a frozen
backbone rather than a pretext task. Each image (canvas cropped to ``n * t`` px,
``t = H // n``) is cut into n x n tiles; each tile is resized to ``eval.jigsaw_tile_size``
(default: the local view size) and embedded alone by the frozen backbone (pooled
embedding), so a tile's embedding never sees where it came from. A probe (MLP of width
``eval.jigsaw_hidden``, or linear when 0) reads ``[z_tile, mean of the image's tile
embeddings]`` (standardised) and scores each of the n^2 slots; it is trained on the
probe-train images' tiles (early-stopped on 10% of those images) and tested on shuffled
test images: the permutation is decoded per image with the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment`` on the slot log-probabilities), so every slot
gets exactly one tile.

Values: ``tile_acc`` (tiles put in their true slot), ``puzzle_acc`` (every tile right),
``tile_acc_greedy`` (each tile's argmax slot, no assignment), chance levels
(1/n^2 and 1/(n^2)!), and, from the ``linear`` probe ("recognition after
reconstruction"): ``top1_original``, ``top1_shuffled`` (tiles in shuffled order) and
``top1_reconstructed`` (tiles where the jigsaw probe put them). The random-init floor
(``random_*``, from ``evals.run_task``) is not chance when tile content gives position
away (sky at the top, ground below). Probe-train and test images are seeded, stratified
samples; the eval seed draws them, the test permutations and the probe.
Per-image outcomes (``mean``): tile accuracy, puzzle solved (0/1), top-1 of each view, each
with ``group``, the test image (one item per image: the n^2 tiles of an image are scored,
and resampled, together).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .features import EvalContext, extract
from . import linear
from .probes import correct, feature_stats
from .robustness import linear_probe
from .segmentation import example_index, save_examples
from ..config import ConfigError
from ..errors import UserError


def cut_tiles(images: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> tiles [N, n*n, 3, t, t] in raster order (t = min(H, W) // n)."""
    t = min(images.shape[-2:]) // n
    if t < 1:
        raise UserError(f"jigsaw: images of {tuple(images.shape[-2:])} px cannot be cut into {n} x {n} tiles")
    x = images[..., :n * t, :n * t]
    x = x.reshape(len(x), 3, n, t, n, t).permute(0, 2, 4, 1, 3, 5)  # [N, n, n, 3, t, t]
    return x.reshape(len(x), n * n, 3, t, t)


def assemble(tiles: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Place ``tiles[:, j]`` at raster slot ``slots[:, j]``: [N, K, 3, t, t] -> [N, 3, n*t, n*t]."""
    nb, k, c, t, _ = tiles.shape
    n = math.isqrt(k)
    inv = slots.argsort(1)  # inv[:, s] = the tile that goes to slot s
    x = tiles[torch.arange(nb)[:, None], inv]
    return x.reshape(nb, n, n, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(nb, c, n * t, n * t)


def decode(logp: torch.Tensor) -> torch.Tensor:
    """Hungarian decoding: log-probs [N, K tiles, K slots] -> slot of each tile [N, K]."""
    out = torch.empty(logp.shape[:2], dtype=torch.long)
    for i, lp in enumerate(logp.detach().double().cpu().numpy()):
        rows, cols = linear_sum_assignment(-lp)
        out[i, torch.as_tensor(rows)] = torch.as_tensor(cols)
    return out


def embed_tiles(ctx: EvalContext, backbone, tiles: torch.Tensor) -> torch.Tensor:
    """Pooled embeddings of every tile: [N, K, 3, t, t] uint8 -> [N, K, D]."""
    size = ctx.ecfg["jigsaw_tile_size"] or ctx.cfg["views"]["local_size"]
    nb, k = tiles.shape[:2]
    z, _ = extract(backbone, tiles.flatten(0, 1), size, ctx.ecfg["batch_size"], ctx.device, desc="tile features",
                   progress=ctx.progress)
    return z.view(nb, k, -1)


def probe_inputs(z: torch.Tensor) -> torch.Tensor:
    """[N, K, D] -> [N, K, 2D]: each tile's embedding beside the mean of its image's tiles."""
    return torch.cat([z, z.mean(1, keepdim=True).expand_as(z)], -1)


def fit_probe(x: torch.Tensor, hidden: int, epochs: int, seed: int, batch_size: int = 256) -> nn.Module:
    """Slot classifier on [N, K, F] inputs (tile j of every image belongs in slot j).

    AdamW, early-stopped on the tiles of the last 10% of the images (checked every epoch).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    dev = x.device
    nb, k, f = x.shape
    n_val = nb // 10 if nb >= 10 else 0
    x_tr, x_va = x[:nb - n_val].reshape(-1, f), x[nb - n_val:].reshape(-1, f)
    y_tr, y_va = torch.arange(k, device=dev).repeat(nb - n_val), torch.arange(k, device=dev).repeat(n_val)
    probe = (nn.Sequential(nn.Linear(f, hidden), nn.GELU(), nn.Linear(hidden, k)) if hidden
             else nn.Linear(f, k)).to(dev)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
    best, best_state = float("inf"), None
    for _ in range(epochs):
        perm = torch.randperm(len(x_tr), generator=g).to(dev)
        for i in range(0, len(x_tr), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(probe(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if n_val:
            with torch.no_grad():
                val = F.cross_entropy(probe(x_va), y_va).item()
            if val < best:
                best, best_state = val, {kk: v.clone() for kk, v in probe.state_dict().items()}
    if best_state is not None:
        probe.load_state_dict(best_state)
    return probe.eval()


def solve(ctx: EvalContext, backbone, tr_tiles: torch.Tensor, te_tiles: torch.Tensor,
          perm: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Train the probe on ``tr_tiles``; solve the test puzzles shuffled by ``perm`` [N, K].

    Returns the scores and the predicted slot of each shuffled tile [N, K] (Hungarian), and
    records per-image outcomes (``tile_acc``, ``puzzle_acc``, ``tile_acc_greedy``).
    """
    e = ctx.ecfg
    z_tr = embed_tiles(ctx, backbone, tr_tiles).to(ctx.device)
    z_te = embed_tiles(ctx, backbone, te_tiles).to(ctx.device)
    if not (torch.isfinite(z_tr).all() and torch.isfinite(z_te).all()):
        raise ctx.fail("non-finite tile embeddings")
    mean, std = feature_stats(z_tr, (0, 1))
    x_tr, x_te = probe_inputs((z_tr - mean) / std), probe_inputs((z_te - mean) / std)
    probe = fit_probe(x_tr, e["jigsaw_hidden"], e["jigsaw_epochs"], ctx.seed)
    x_sh = x_te[torch.arange(len(perm), device=ctx.device)[:, None], perm.to(ctx.device)]  # position j holds tile perm[j]
    with torch.no_grad():
        logp = probe(x_sh).log_softmax(-1).cpu()  # [N, K tiles, K slots]
    slots = decode(logp)
    right = (slots == perm).float()
    greedy = (logp.argmax(-1) == perm).float()
    image = torch.arange(len(perm))  # items are images already (tiles of one image are scored together)
    ctx.record("tile_acc", "mean", x=right.mean(1), group=image)
    ctx.record("puzzle_acc", "mean", x=right.min(1).values, group=image)
    ctx.record("tile_acc_greedy", "mean", x=greedy.mean(1), group=image)
    k = perm.shape[1]
    return {"tile_acc": float(right.mean()), "puzzle_acc": float(right.min(1).values.mean()),
            "tile_acc_greedy": float(greedy.mean()),
            "chance_tile": 1.0 / k, "chance_puzzle": 1.0 / math.factorial(k)}, slots


def subsets(ctx: EvalContext):
    """The jigsaw probe-train and test images: seeded, stratified samples of the probe-train
    and test subsets (``eval.jigsaw_n_train`` / ``eval.jigsaw_n_test``; 0 = all)."""
    e = ctx.ecfg
    tr = ctx.sample(ctx.split(e["split_train"]), e["jigsaw_n_train"], "jigsaw:train")
    te = ctx.sample(ctx.split(e["split_test"]), e["jigsaw_n_test"], "jigsaw:test")
    return tr, te


def run(ctx: EvalContext) -> dict:
    e = ctx.ecfg
    n = e["jigsaw_n"]
    if n < 2:
        raise ConfigError(f"config key 'eval.jigsaw_n' must be >= 2, got {n}")
    tr, te = subsets(ctx)
    tr_tiles, te_tiles = cut_tiles(tr.images, n), cut_tiles(te.images, n)
    k = n * n
    g = torch.Generator().manual_seed(ctx.seed)
    perm = torch.stack([torch.randperm(k, generator=g) for _ in range(len(te_tiles))])
    out, slots = solve(ctx, ctx.backbone, tr_tiles, te_tiles, perm)

    # recognition after reconstruction: the linear probe on original / shuffled / reassembled images
    identity = torch.arange(k).expand(len(perm), k)
    shuffled_tiles = te_tiles[torch.arange(len(perm))[:, None], perm]
    views = {"original": assemble(te_tiles, identity), "shuffled": assemble(shuffled_tiles, identity),
             "reconstructed": assemble(shuffled_tiles, slots)}
    if te.labels is not None and tr.labels is not None:
        head, norm, _, _ = linear_probe(ctx)
        # the probe settings that shaped the reassembled images enter the feature-cache key
        shaped = {key: e[key] for key in ("jigsaw_n", "jigsaw_tile_size", "jigsaw_hidden", "jigsaw_epochs",
                                          "jigsaw_n_train", "jigsaw_n_test")}
        shaped["seed"] = ctx.seed
        for name, imgs in views.items():
            f, _ = ctx.features(e["split_test"], images=imgs, tag=f"jigsaw{n}_{name}",
                                settings=None if name == "original" else shaped)
            right = correct(linear.predict(head, norm, f), te.labels)
            ctx.record(f"top1_{name}", "mean", x=right, group=torch.arange(len(right)))
            out[f"top1_{name}"] = float(right.mean())
    out.update({"n": n, "n_train": len(tr_tiles), "n_test": len(te_tiles)})
    i = example_index(len(perm), e["n_examples"])
    placed = perm.gather(1, slots.argsort(1))  # true slot of the tile put in each slot
    save_examples(ctx, "jigsaw", {**{key: v[i] for key, v in views.items()},
                                  "correct": (placed == torch.arange(k))[i], "n": n})
    return out
