"""Calibration of PartsWorld: a small supervised CNN trained for a few minutes on CPU.

Trains a 4-stage ResNet-ish CNN (3x3 stem, one basic block per stage, two linear heads:
category and fine-grained variant) on the ``train`` split and reports accuracy on ``test``
and ``ood``. The same recipe is also run on images downsampled to 32 px (``--sizes``).

    PYTHONPATH=src python benchmarks/partsworld_supervised.py --minutes 6

Prints a markdown table. The data sets are loaded through ``partsworld.load`` (cached).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialssl.data import partsworld as pw


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.skip(x))


class SmallResNet(nn.Module):
    """3x3 stem, 4 stages (32, 64, 128, 256 ch; strides 1|2, 2, 2, 2), two heads."""

    def __init__(self, n_cls: int, n_fine: int, in_size: int, width: int = 32) -> None:
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        s0 = 2 if in_size >= 64 else 1  # 64 px: first stage at 32x32; 32 px: at 32x32
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, s0, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        self.stages = nn.Sequential(Block(w[0], w[0], 1), Block(w[0], w[1], 2), Block(w[1], w[2], 2),
                                    Block(w[2], w[3], 2))
        self.head_cls = nn.Linear(w[3], n_cls)
        self.head_fine = nn.Linear(w[3], n_fine)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.stages(self.stem(x)).mean((2, 3))
        return self.head_cls(f), self.head_fine(f)


def _prep(img_u8: torch.Tensor, size: int) -> torch.Tensor:
    x = img_u8.float().div_(255.0).sub_(0.5).div_(0.25)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Standard light augmentation: per-image colour jitter (brightness, contrast,
    saturation; 10% grayscale), horizontal flip and a +-size/16 pixel translation."""
    n, _, h, w = x.shape
    r = torch.rand(n, 4, generator=gen).to(x.device)
    gray = x.mean(1, keepdim=True)
    sat = torch.where(r[:, 3:4] < 0.1, torch.zeros_like(r[:, 3:4]), 0.5 + r[:, 2:3]).view(n, 1, 1, 1)
    x = gray + (x - gray) * sat
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (0.6 + 0.8 * r[:, 1]).view(n, 1, 1, 1)
    x = x + (r[:, 0].view(n, 1, 1, 1) - 0.5) * 1.6  # +-0.2 in [0, 1] units (x is (img - 0.5) / 0.25)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    p = max(1, h // 16)
    xp = F.pad(x, (p, p, p, p), mode="replicate")
    dx, dy = torch.randint(0, 2 * p + 1, (2,), generator=gen).tolist()
    return xp[:, :, dy:dy + h, dx:dx + w].contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict(model: nn.Module, cs, size: int, bs: int = 500, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted (category [N], fine [N]) on CPU."""
    model.eval()
    pc, pf = [], []
    for a in range(0, len(cs), bs):
        x = _prep(cs.images[a:a + bs].to(device), size).contiguous(memory_format=torch.channels_last)
        lc, lf = model(x)
        pc.append(lc.argmax(1).cpu())
        pf.append(lf.argmax(1).cpu())
    return torch.cat(pc), torch.cat(pf)


def evaluate(model: nn.Module, cs, size: int, bs: int = 500, device: str = "cpu") -> tuple[float, float]:
    """(category accuracy, fine accuracy)."""
    pc, pf = predict(model, cs, size, bs, device)
    return (pc == cs.labels).float().mean().item(), (pf == cs.fine_labels).float().mean().item()


def top_confusions(pred: torch.Tensor, true: torch.Tensor, names: list[str], k: int = 5) -> str:
    """The k most frequent (true -> predicted) errors."""
    n = len(names)
    cm = torch.bincount(true * n + pred, minlength=n * n).view(n, n)
    cm.fill_diagonal_(0)
    top = cm.flatten().topk(k)
    return ", ".join(f"{names[i // n]}->{names[i % n]} {int(c)}" for c, i in zip(top.values, top.indices) if c > 0)


def train(train_cs, size: int, minutes: float, bs: int = 128, lr: float = 3e-3, seed: int = 0,
          log_every: int = 50, width: int = 16, device: str = "cpu", steps: int | None = None
          ) -> tuple[nn.Module, int, float]:
    """Train for ``minutes`` of wall clock (one-cycle schedule sized from a timing probe), or
    for exactly ``steps`` steps if given."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SmallResNet(train_cs.num_classes, train_cs.num_fine, size, width).to(device)
    model = model.to(memory_format=torch.channels_last)
    images = train_cs.images.to(device)
    labels, fine = train_cs.labels.to(device), train_cs.fine_labels.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    n = len(train_cs)
    # timing probe: a few steps to size the schedule to the time budget
    model.train()
    t0 = time.time()
    probe = 5
    for _ in range(probe):
        idx = torch.randint(0, n, (bs,), generator=gen).to(device)
        lc, lf = model(_augment(_prep(images[idx], size), gen))
        (F.cross_entropy(lc, labels[idx]) + F.cross_entropy(lf, fine[idx])).backward()
        opt.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    per_step = (time.time() - t0) / probe
    if steps is None:
        steps = max(50, int(minutes * 60 / per_step))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    perm = torch.randperm(n, generator=gen)
    pos = 0
    for step in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + bs].to(device)
        pos += bs
        x = _augment(_prep(images[idx], size), gen)
        lc, lf = model(x)
        loss = F.cross_entropy(lc, labels[idx], label_smoothing=0.05) + \
            F.cross_entropy(lf, fine[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0:
            print(f"  [{size}px] step {step}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    return model, steps, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=6.0, help="training wall clock per image size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 32], help="train/eval image sizes")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=16, help="channels of the first stage (x2 per stage)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="fixed number of steps (overrides --minutes)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: leave as is; 1 is much faster on an oversubscribed machine)")
    ap.add_argument("--device", default="cpu", help="training device (the requirement is about cpu)")
    ap.add_argument("--data-device", default=None, help="device that renders the data if not cached (default --device)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = pw.PartsWorldConfig(n_train=args.n_train)
    t0 = time.time()
    data = {s: pw.load(s, cfg, cache_dir=args.cache_dir, device=args.data_device or args.device) for s in ("train", "test", "ood")}
    print(f"data ready in {time.time() - t0:.0f}s (config key {cfg.key()})")
    rows = []
    for size in args.sizes:
        model, steps, dt = train(data["train"], size, args.minutes, bs=args.batch_size, seed=args.seed,
                                 width=args.width, device=args.device, steps=args.steps)
        res = {}
        for s in ("test", "ood"):
            pc, pf = predict(model, data[s], size, device=args.device)
            cs = data[s]
            res[s] = ((pc == cs.labels).float().mean().item(), (pf == cs.fine_labels).float().mean().item())
            print(f"  {s} top errors: category: {top_confusions(pc, cs.labels, cs.class_names)}; "
                  f"fine: {top_confusions(pf, cs.fine_labels, cs.fine_names)}")
        epochs = steps * args.batch_size / len(data["train"])
        rows.append((size, steps, epochs, dt, res))
        print(f"{size}px: test cat {res['test'][0]:.3f} fine {res['test'][1]:.3f} | "
              f"ood cat {res['ood'][0]:.3f} fine {res['ood'][1]:.3f}", flush=True)
    print()
    print(f"device {args.device}; {platform.machine()}, {os.cpu_count()} cores visible, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}; width {args.width}, "
          f"batch {args.batch_size}, {args.minutes} min per size")
    print("| input | steps (epochs) | train time | test category | test fine | ood category | ood fine |")
    print("|---|---|---|---|---|---|---|")
    for size, steps, epochs, dt, res in rows:
        print(f"| {size}px | {steps} ({epochs:.1f}) | {dt / 60:.1f} min | {100 * res['test'][0]:.1f}% | "
              f"{100 * res['test'][1]:.1f}% | {100 * res['ood'][0]:.1f}% | {100 * res['ood'][1]:.1f}% |")
    if not math.isfinite(rows[0][3]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
