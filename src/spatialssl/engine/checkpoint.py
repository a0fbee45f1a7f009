"""Writing checkpoints, and the run-folder lock.

A run folder keeps its **last two** checkpoints: ``checkpoint.pt`` (the newest) and
``checkpoint.prev.pt`` (the one before). Each is written to a temporary file, fsynced,
and renamed into place, so neither is ever half-written: a kill during a write leaves
the old pair intact, and a write that fails (a full disk) raises ``CheckpointError``
with both kept. The previous checkpoint is a hard link to the file being replaced (a
copy on file systems without hard links), so at every moment ``checkpoint.pt`` is a
complete checkpoint.

``runfolder`` reads them (``latest_checkpoint``: the newest readable one, a truncated,
zeroed or otherwise unreadable ``checkpoint.pt`` reported and the previous one used), and
reads and writes the run's ``status.json`` (``write_status``: at every checkpoint and at
the end).

``RunLock`` is one ``fcntl.flock`` on ``<run>/.lock`` holding the owner's pid: a second
``pretrain`` into the same folder fails at once, naming that pid. The kernel drops the
lock when its process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..runfolder import CHECKPOINT, LOCK, PREVIOUS, CheckpointError

try:  # POSIX only; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


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
