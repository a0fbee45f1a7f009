"""Run logs (JSONL + TensorBoard + a greppable text log) and collapse indicators."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..progress import LOG_FORMAT
from ..runfolder import CURVE, LOG, TENSORBOARD, parse_rows, read_jsonl  # noqa: F401  (read_jsonl: re-exported)

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
    """Scalars to ``metrics.jsonl`` and TensorBoard; messages to ``train.log``.

    ``start``: the step the run (re)starts from. Rows of ``metrics.jsonl`` after it are
    dropped (an interrupted run logged them after its last checkpoint; they are logged
    again), and TensorBoard purges its events after it (``purge_step``), so a resumed
    run's curves hold each step once.
    """

    def __init__(self, out_dir: Path, tensorboard: bool = True, start: int | None = None) -> None:
        self.out_dir = out_dir
        if start is not None:
            truncate_jsonl(out_dir / CURVE, start)
        self.jsonl = open(out_dir / CURVE, "a")
        handler = logging.FileHandler(out_dir / LOG)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)  # train.log holds INFO whatever the console shows (--quiet, --log-level)
        log.addHandler(handler)
        if not log.isEnabledFor(logging.INFO):
            log.setLevel(logging.INFO)
        self._handler = handler
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / TENSORBOARD), purge_step=start)
            except ImportError:  # tensorboard is a pinned dependency; tolerate its absence
                log.warning("tensorboard not installed: no TensorBoard logs")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Close the files and detach from the logger (calling it again does nothing)."""
        if self.jsonl.closed:
            return
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        log.removeHandler(self._handler)
        self._handler.close()


def truncate_jsonl(path: Path, step: int) -> None:
    """Keep the rows of ``path`` up to ``step`` (and drop a line cut short)."""
    if not path.exists():
        return
    lines = [ln for ln, row in parse_rows(path.read_text().splitlines()) if row.get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in lines))
    tmp.replace(path)
