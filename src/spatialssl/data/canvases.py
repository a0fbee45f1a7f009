"""Canvas sets: every data set, built-in or from folders, becomes one of these.

Images are decoded and resized on the CPU once into fixed-size uint8 canvases; all random
crops and augmentation then run batched on the training device (see ``views.py``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch


@dataclass
class CanvasSet:
    """A split of a data set, held in memory as fixed-size tensors.

    Attributes:
        images: uint8 [N, 3, H, W] canvases.
        labels: int64 [N] class ids, or None (unlabelled folder).
        fine_labels: int64 [N] fine-grained class ids, or None.
        depth: float32 [N, H, W] camera-z depth, or None.
        semantic: int64 [N, H, W] semantic mask (0 = background), or None.
        parts: int64 [N, H, W] part mask (0 = background), or None.
        class_names: names for ``labels`` (index = id).
        fine_names: names for ``fine_labels``.
        meta: free-form facts (source, config hash, skipped files, ...).
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    fine_labels: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    semantic: torch.Tensor | None = None
    parts: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    fine_names: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"CanvasSet.images must be uint8 [N, 3, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if n == 0:
            raise ValueError("CanvasSet is empty: no images")
        for name in ("labels", "fine_labels", "depth", "semantic", "parts"):
            t = getattr(self, name)
            if t is not None and t.shape[0] != n:
                raise ValueError(f"CanvasSet.{name} has {t.shape[0]} rows, images has {n}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the canvases."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if self.labels is not None else 0

    @property
    def num_fine(self) -> int:
        if self.fine_names:
            return len(self.fine_names)
        return int(self.fine_labels.max()) + 1 if self.fine_labels is not None else 0

    def subset(self, idx: torch.Tensor | slice) -> "CanvasSet":
        """Rows ``idx`` of every tensor, same names and meta."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return CanvasSet(
            images=self.images[idx], labels=pick(self.labels), fine_labels=pick(self.fine_labels),
            depth=pick(self.depth), semantic=pick(self.semantic), parts=pick(self.parts),
            class_names=list(self.class_names), fine_names=list(self.fine_names), meta=dict(self.meta),
        )


def stratified_sample(n: int, k: int, labels: torch.Tensor | None, key: str) -> torch.Tensor:
    """``k`` of ``n`` indices, a seeded random sample stratified by ``labels`` (sorted, long [k]).

    Each class gets its share of ``k`` (largest remainders, ties to the lower class id);
    within a class the images are drawn at random. ``k`` = 0 or >= ``n``: all indices.
    The generator is seeded by ``key`` (name the subset's purpose and the eval seed).
    """
    if not k or k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if labels is None:
        return torch.randperm(n, generator=g)[:k].sort().values
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * k / n
    quota = exact.floor().long()
    rest = k - int(quota.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]).item(), i))
    for i in order[:rest]:
        quota[i] += 1
    picks = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:q]])
    return torch.cat(picks).sort().values
