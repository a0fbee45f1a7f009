"""A run folder, owned in one place: its file names, its curve, its status and its weights.

``pretrain`` writes a run folder; the trainer (when it resumes), the evaluations, the
report, ``experiments`` and the benchmarks read it, all through this module:

- ``config.yaml`` (``CONFIG``): the resolved config the run trained with;
- ``metrics.jsonl`` (``CURVE``): one JSON object per logged step (``engine.monitor.RunLog``:
  ``{"step": 10, "loss_fw": ..., "loss_sp": ..., "sp_r2_dx": ...}``), read by ``parse_rows``,
  so a line cut short by a kill mid-write, or anything that is not a JSON object, is left
  out the same way everywhere;
- ``train.log`` (``LOG``): the trainer's log; ``tb/`` (``TENSORBOARD``): TensorBoard events;
- ``skipped_files.txt`` (``SKIPPED``): the training data's unreadable files and why, when any;
- ``status.json`` (``STATUS``): how far the run got, ``{"step", "steps", "complete",
  "updated"}`` (plus ``"error"`` when it stopped on one), written atomically
  (``write_status``, ``read_status``);
- ``checkpoint.pt`` and ``checkpoint.prev.pt`` (``CHECKPOINT``, ``PREVIOUS``): the last two
  training checkpoints (``engine.checkpoint`` writes them);
- ``backbone.safetensors`` (``BACKBONE``): the evaluated backbone of a finished run,
  timm-loadable (the trainer removes it when the run goes on past it);
- ``metrics/`` (``EVALS``): the evaluations' results, ``<task>.json`` and the per-item
  outcomes and example arrays, ``<task>_outcomes.npz`` / ``<task>_examples.npz`` (``compact``:
  small, lossless; ``write_items``, ``read_items``, which also reads the ``.pt`` files of
  earlier versions); ``features/`` (``FEATURES``): their cache;
- ``.lock`` (``LOCK``): the lock of the ``pretrain`` that owns the folder (``engine.checkpoint.RunLock``).

A run's weights (``load_weights``) follow one rule: ``backbone.safetensors`` when present,
else the newest readable checkpoint; a file that cannot be read is reported and the next
used. Whatever cannot be read is a ``CheckpointError`` (a ``UserError``: one line naming
the file or the folder and what is missing). torch and safetensors are imported only
when weights are read, so the curve and the status read without them.

>>> steps = [row["step"] for row in read_curve("runs/demo/byol")]
>>> state = load_weights("runs/demo/byol")   # {"config", "backbone", "step", "complete", "_path"}
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import NotFound, UserError

if TYPE_CHECKING:  # torch is imported where weights are read
    import torch

CONFIG = "config.yaml"
CURVE = "metrics.jsonl"
LOG = "train.log"
TENSORBOARD = "tb"
STATUS = "status.json"
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
BACKBONE = "backbone.safetensors"
LOCK = ".lock"
EVALS = "metrics"
FEATURES = "features"
SKIPPED = "skipped_files.txt"  # the training data's unreadable files, one "path<TAB>reason" a line
SMALL_FILES = (CONFIG, CURVE, LOG, STATUS)  # what a run folder says about itself, without weights
ITEMS = ("outcomes", "examples")  # metrics/<task>_<what>.npz: per-item outcomes, example arrays


def items_path(folder: str | Path, task: str, what: str) -> Path:
    """``<folder>/metrics/<task>_<what>.npz`` (``what`` in ``ITEMS``)."""
    if what not in ITEMS:
        raise ValueError(f"items: {what!r} is not one of {ITEMS}")
    return Path(folder) / EVALS / f"{task}_{what}.npz"


def write_items(folder: str | Path, task: str, what: str, obj) -> Path:
    """Write an evaluation's outcomes or examples in the compact format (atomically)."""
    from . import compact

    path = items_path(folder, task, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    return compact.save(path, obj)


def read_items(folder: str | Path, task: str, what: str):
    """An evaluation's outcomes or examples: the ``.npz`` file, else the ``.pt`` file earlier
    versions wrote (outcomes loaded with ``weights_only``); None when absent or unreadable
    (the report then runs no test or draws no figure: it does not fail)."""
    path = items_path(folder, task, what)
    try:
        if path.exists():
            from . import compact

            return compact.load(path)
        old = path.with_suffix(".pt")
        if old.exists():
            import torch

            return torch.load(old, map_location="cpu", weights_only=what == "outcomes")
    except Exception:  # a damaged file costs a test or a figure, never the report
        return None
    return None

log = logging.getLogger("spatialssl")


class CheckpointError(UserError):
    """Weights of a run that cannot be read (or a checkpoint that cannot be written); the
    message names the file, or the folder and what it lacks."""


class NoCheckpoint(CheckpointError, NotFound):
    """A run folder (or file) with no weights at all; the message names what is missing."""


# --------------------------------------------------------------------------- curve


def parse_rows(lines: Iterable[str]) -> list[tuple[str, dict]]:
    """(line, row) of each line that holds a JSON object; blank lines, a line cut short by an
    interrupted run and any other value are left out."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a kill mid-write
            continue
        if isinstance(row, dict):
            out.append((line, row))
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL log (``parse_rows``)."""
    return [row for _, row in parse_rows(Path(path).read_text().splitlines())]


def read_curve(run_dir: str | Path) -> list[dict]:
    """The training curve of a run folder: the rows of its ``metrics.jsonl``, in order; []
    when it has none."""
    path = Path(run_dir) / CURVE
    return read_jsonl(path) if path.exists() else []


def last_step(run_dir: str | Path) -> int:
    """The last step the curve records (0 when none): a cheap progress read (loading a
    ViT-S checkpoint to read its step would cost seconds)."""
    last = 0
    for row in read_curve(run_dir):
        try:
            last = max(last, int(row["step"]))
        except (KeyError, TypeError, ValueError):  # no step, or not a number
            pass
    return last


# --------------------------------------------------------------------------- status


def write_status(run_dir: str | Path, step: int, steps: int, **extra) -> None:
    """``<run>/status.json``: ``step`` reached, ``steps`` planned, ``complete`` (step >= steps),
    ``updated`` (local time), and ``extra``; written to a temporary file renamed into place."""
    path = Path(run_dir) / STATUS
    record = {"step": int(step), "steps": int(steps), "complete": int(step) >= int(steps),
              "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def read_status(run_dir: str | Path) -> dict | None:
    """``status.json`` of a run folder, or None (none, unreadable, or runs from before it existed)."""
    try:
        status = json.loads((Path(run_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


# --------------------------------------------------------------------------- weights


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """One training checkpoint file (or ``<run dir>/checkpoint.pt``), as ``torch.save`` wrote it.

    Raises:
        NoCheckpoint: no such file.
        CheckpointError: the file is not a readable training checkpoint (truncated, zeroed, ...).
    """
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise NoCheckpoint(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for damaged files (RuntimeError, UnpicklingError, EOFError...)
        raise CheckpointError(f"checkpoint {path} is unreadable ({_reason(e)})") from None
    if not isinstance(state, dict) or not {"step", "config", "backbone"} <= state.keys():
        raise CheckpointError(f"checkpoint {path} is unreadable (not a spatialssl training checkpoint)")
    return state


def read_config(run_dir: str | Path) -> dict | None:
    """The run's ``config.yaml`` (the resolved config it trained with), read by the config
    system's YAML rules (``config.load_yaml``); None when the folder has none.

    Raises:
        ConfigError: not valid YAML, or not a mapping.
    """
    from . import config as config_mod

    path = Path(run_dir) / CONFIG
    if not path.exists():
        return None
    cfg = config_mod.load_yaml(path.read_text(), f"config file {path}")
    if not isinstance(cfg, dict):
        raise config_mod.ConfigError(f"config file {path} must hold a mapping, got {type(cfg).__name__}")
    return cfg


def read_backbone(path: str | Path) -> dict:
    """``backbone.safetensors`` (a finished run's exported weights) with the run's
    ``config.yaml`` beside it, in the shape of a training checkpoint: ``config``,
    ``backbone`` (keys as in ``Backbone.state_dict``), and ``step``, ``complete`` from
    ``status.json`` (a finished run when it has none).

    Raises:
        NoCheckpoint: no such file, or no ``config.yaml`` beside it.
        CheckpointError: the weights are unreadable.
        ConfigError: the config is not valid YAML.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise NoCheckpoint(f"no checkpoint at {path}")
    cfg = read_config(path.parent)
    if cfg is None:
        raise NoCheckpoint(f"{path} needs the run's {CONFIG} beside it (expected {path.parent / CONFIG})")
    try:
        weights = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path} is unreadable ({_reason(e)})") from None
    status = read_status(path.parent) or {}
    steps = cfg["train"]["steps"]
    return {"config": cfg, "backbone": {f"model.{k}": v for k, v in weights.items()},
            "step": status.get("step", steps), "complete": status.get("complete", True)}


def latest_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu"
                      ) -> tuple[dict, Path, list[str]] | None:
    """The newest readable training checkpoint of a run folder (``checkpoint.pt``, else
    ``checkpoint.prev.pt``), as ``(state, path, problems)``: one line in ``problems`` per
    newer file that could not be read; None when the folder has none (what resuming needs).

    Raises:
        CheckpointError: checkpoint files exist but none is readable.
    """
    return _first_readable(Path(run_dir), (CHECKPOINT, PREVIOUS), lambda p: read_checkpoint(p, map_location))


def load_weights(path: str | Path) -> dict:
    """The weights of a run to evaluate: a run folder, or one file of it (``checkpoint.pt``,
    ``checkpoint.prev.pt``, or ``backbone.safetensors`` with ``config.yaml`` beside it).

    In a run folder: ``backbone.safetensors`` when present (a finished run's final weights,
    the same as its last checkpoint's backbone), else ``checkpoint.pt``, else
    ``checkpoint.prev.pt``; a file that cannot be read is reported in one warning line and
    the next one used. Returns ``config``, ``backbone`` (the evaluated backbone's state
    dict), ``step``, ``complete`` (how far the run had got) and ``_path`` (the file used).

    Raises:
        NoCheckpoint: no such file, or a folder with none of those files.
        CheckpointError: none of them is readable.
    """
    path = Path(path)
    if not path.is_dir():
        state = read_backbone(path) if path.suffix == ".safetensors" else read_checkpoint(path)
        return _with_progress(state, path)
    found = _first_readable(path, (BACKBONE, CHECKPOINT, PREVIOUS), _read_weights)
    if found is None:
        raise NoCheckpoint(f"no weights in run folder {path}: it has no {BACKBONE}, {CHECKPOINT} or {PREVIOUS}")
    state, used, problems = found
    if problems:
        log.warning("%s; evaluating %s instead", "; ".join(problems), used.name)
    return _with_progress(state, used)


def slim_copy(run_dir: str | Path, dest: str | Path) -> bool:
    """A run that has a training checkpoint, copied small into ``dest``: its ``SMALL_FILES``
    (those it has) and its newest readable checkpoint cut to ``{config, backbone, step}``
    (no optimizer, teacher or head state: ``load_weights`` reads it, resuming cannot).
    What a device call brings back of runs it could not finish (``benchmarks/gpu_session.sh``).
    False, and nothing written, when the folder has no readable checkpoint."""
    import torch

    run_dir, dest = Path(run_dir), Path(dest)
    try:
        found = latest_checkpoint(run_dir)
    except CheckpointError:
        return False
    if found is None:
        return False
    state = found[0]
    dest.mkdir(parents=True, exist_ok=True)
    for name in SMALL_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    torch.save({k: state[k] for k in ("config", "backbone", "step")}, dest / CHECKPOINT)
    return True


def _read_weights(path: Path) -> dict:
    return read_backbone(path) if path.suffix == ".safetensors" else read_checkpoint(path)


def _first_readable(run_dir: Path, names: tuple[str, ...], read: Callable[[Path], dict]
                    ) -> tuple[dict, Path, list[str]] | None:
    """``(state, path, problems)`` of the first of ``names`` in ``run_dir`` that ``read``
    reads; None when none exists; ``CheckpointError`` naming each when none is readable."""
    problems = []
    for path in (run_dir / n for n in names):
        if not path.exists():
            continue
        try:
            return read(path), path, problems
        except (UserError, FileNotFoundError) as e:  # unreadable, or (safetensors) no config beside it
            problems.append(str(e))
    if problems:
        raise CheckpointError(f"no readable checkpoint in {run_dir}: {'; '.join(problems)}")
    return None


def _with_progress(state: dict, path: Path) -> dict:
    """``_path`` (the file read), and ``step`` and ``complete`` for checkpoints written before
    they were recorded."""
    steps = state["config"]["train"]["steps"]
    state.setdefault("step", steps)
    state.setdefault("complete", state["step"] >= steps)
    state["_path"] = path
    return state


def _reason(e: Exception) -> str:
    """``Type: first line`` of an exception, at most 200 characters of it."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
