"""Run logs (JSONL + TensorBoard + a greppable text log) and collapse indicators."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("spatialssl")


def embedding_std(emb: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings, times sqrt(D).

    About 1 for well-spread embeddings, 0 at complete collapse (SimSiam's indicator).
    emb: [N, D].
    """
    z = F.normalize(emb.float(), dim=-1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def rankme(emb: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023, arXiv:2210.02885): exp(entropy of the normalised
    singular values) of the embedding matrix [N, D]; at most min(N, D)."""
    s = torch.linalg.svdvals(emb.float())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


class RunLog:
    """Scalars to ``metrics.jsonl`` and TensorBoard; messages to ``train.log``."""

    def __init__(self, out_dir: Path, tensorboard: bool = True) -> None:
        self.out_dir = out_dir
        self.jsonl = open(out_dir / "metrics.jsonl", "a")
        handler = logging.FileHandler(out_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._handler = handler
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:  # tensorboard is a pinned dependency; tolerate its absence
                log.warning("tensorboard not installed: no TensorBoard logs")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        log.removeHandler(self._handler)
        self._handler.close()


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
