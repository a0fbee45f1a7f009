"""Checkpoints, run status and the run-folder lock.

A run folder keeps its **last two** checkpoints: ``checkpoint.pt`` (the newest) and
``checkpoint.prev.pt`` (the one before). Each is written to a temporary file, fsynced,
and renamed into place, so neither is ever half-written: a kill during a write leaves
the old pair intact, and a write that fails (a full disk) raises ``CheckpointError``
with both kept. The previous checkpoint is a hard link to the file being replaced (a
copy on file systems without hard links), so at every moment ``checkpoint.pt`` is a
complete checkpoint.

``load_latest`` reads the newest readable one: a truncated, zeroed or otherwise
unreadable ``checkpoint.pt`` is reported (file and reason) and the previous one used.

``status.json`` says how far a run got: ``{"step", "steps", "complete", "updated"}``
(plus ``"error"`` when it stopped on one), rewritten atomically at every checkpoint and
at the end; evaluations and the report read it to tell finished runs from unfinished.

``RunLock`` is one ``fcntl.flock`` on ``<run>/.lock`` holding the owner's pid: a second
``pretrain`` into the same folder fails at once, naming that pid. The kernel drops the
lock when its process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from ..errors import NotFound

try:  # POSIX only; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
STATUS = "status.json"
LOCK = ".lock"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file."""


class RunLocked(RuntimeError):
    """Another process holds the run folder's lock; the message names its pid."""


# --------------------------------------------------------------------------- writing


def _previous_of(path: Path) -> Path:
    return path.with_name(PREVIOUS) if path.name == CHECKPOINT else path.with_name(f"{path.stem}.prev{path.suffix}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def save_atomic(state: dict, path: str | Path, keep_previous: bool = True) -> None:
    """``torch.save`` to ``<path>.tmp``, fsync, keep the old ``path`` as the previous
    checkpoint, then ``os.replace`` the new one onto ``path``.

    Raises:
        CheckpointError: the write failed (e.g. no space left); ``path`` and the previous
            checkpoint are as they were, and the temporary file is removed.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():
            prev = _previous_of(path)
            link = prev.with_name(prev.name + ".tmp")
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, link)
            os.replace(link, prev)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}; the checkpoints already "
                              f"in {path.parent} are kept") from None


# --------------------------------------------------------------------------- reading


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """One checkpoint file (or ``<run dir>/checkpoint.pt``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a readable checkpoint (truncated, zeroed, ...).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise NotFound(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for damaged files (RuntimeError, UnpicklingError, EOFError...)
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {reason})") from None
    if not isinstance(state, dict) or "step" not in state or "config" not in state:
        raise CheckpointError(f"checkpoint {path} is unreadable (not a spatialssl training checkpoint)")
    return state


def candidates(run_dir: str | Path) -> list[Path]:
    """The run's checkpoint files that exist, newest first."""
    run_dir = Path(run_dir)
    return [p for p in (run_dir / CHECKPOINT, run_dir / PREVIOUS) if p.exists()]


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu"
                ) -> tuple[dict, Path, list[str]] | None:
    """The newest readable checkpoint of a run folder, as ``(state, path, problems)``,
    where ``problems`` has one line per newer file that could not be read; None when the
    folder has no checkpoint at all.

    Raises:
        CheckpointError: checkpoint files exist but none is readable.
    """
    problems = []
    for path in candidates(run_dir):
        try:
            return load(path, map_location), path, problems
        except CheckpointError as e:
            problems.append(str(e))
    if problems:
        raise CheckpointError(f"no readable checkpoint in {run_dir}: {'; '.join(problems)}")
    return None


# --------------------------------------------------------------------------- status


def write_status(run_dir: str | Path, step: int, steps: int, **extra) -> None:
    """``<run>/status.json``: ``step`` reached, ``steps`` planned, ``complete`` (step == steps)."""
    path = Path(run_dir) / STATUS
    record = {"step": int(step), "steps": int(steps), "complete": int(step) >= int(steps),
              "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def read_status(run_dir: str | Path) -> dict | None:
    """``status.json`` of a run folder, or None (runs from before it existed, or none)."""
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- lock


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run>/.lock``, with the holder's pid in it.

    >>> lock = RunLock(out_dir); lock.acquire()   # RunLocked if another process holds it
    >>> lock.release()
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None:  # pragma: no cover
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"run folder {self.path.parent} is in use by another pretrain (pid {holder}); wait for "
                            f"it to finish, or choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
