"""Runs tiny pretraining runs that get killed (SIGKILL, as ``kill -9`` would), for
``test_kill_resume.py``.

    python tests/faults/driver.py SPEC.json

SPEC: ``{"data": canvases.pt, "scenarios": [{"name", "framework", "out_dir", "fault", "at",
"extra"}...]}``. One interpreter imports torch once; each scenario runs in a forked child
(forked before this process computes anything with torch), which arms its fault and
pretrains. Faults:

- ``step``: killed right after the optimiser step of step ``at`` (before it is logged or
  checkpointed);
- ``write``: killed half-way through writing the ``at``-th checkpoint (half its bytes
  are on disk, fsynced);
- ``rename``: killed between the two renames of the ``at``-th checkpoint write (the old
  checkpoint already linked as the previous one, the new one not yet in place);
- ``log``: killed half-way through writing line ``at`` of ``metrics.jsonl``;
- ``race``: two children started at once on one folder with seeds 0 and 1; each writes
  ``<out_dir>.<seed>.result`` ("ok" or its one-line error).

Prints one JSON line: ``{name: {"signal": n, "code": c}}``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

import tiny  # noqa: E402
from spatialssl import config, runfolder  # noqa: E402
from spatialssl.engine import checkpoint, monitor, trainer  # noqa: E402


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(fault: str, at: int) -> None:
    """Patch the library so that this process kills itself at the chosen moment."""
    if fault == "step":
        real_step = trainer.train_step

        def step(run, canvases, s, views=None):
            out = real_step(run, canvases, s, views)
            if s + 1 == at:
                _die()
            return out

        trainer.train_step = step
    elif fault == "write":
        real_save, calls = torch.save, [0]

        def save(obj, f, *a, **k):
            calls[0] += 1
            if calls[0] < at:
                return real_save(obj, f, *a, **k)
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            _die()

        checkpoint.torch.save = save
    elif fault == "rename":
        real_replace, saves = os.replace, [0]

        def replace(src, dst):
            if str(src).endswith(runfolder.CHECKPOINT + ".tmp"):
                saves[0] += 1
                if saves[0] == at:
                    _die()
            return real_replace(src, dst)

        checkpoint.os.replace = replace
    elif fault == "log":
        real_scalars, lines = monitor.RunLog.scalars, [0]

        def scalars(self, step, values):
            lines[0] += 1
            if lines[0] == at:
                text = json.dumps({"step": step, **values})
                self.jsonl.write(text[: len(text) // 2])
                self.jsonl.flush()
                _die()
            return real_scalars(self, step, values)

        monitor.RunLog.scalars = scalars
    elif fault not in ("none", "race"):
        raise ValueError(f"unknown fault {fault!r}")


def child(sc: dict, data, seed: int = 0) -> None:
    try:
        torch.set_num_threads(1)
        arm(sc["fault"], sc.get("at", 0))
        cfg = config.resolve([], tiny.overrides(sc["framework"], sc["out_dir"], f"seed={seed}", *sc.get("extra", [])))
        try:
            trainer.pretrain(cfg, data=data)
            result = "ok"
        except Exception as e:  # noqa: BLE001 -- the test reads what it was
            result = f"error: {type(e).__name__}: {e}"
        if sc["fault"] == "race":
            with open(f"{sc['out_dir']}.{seed}.result", "w") as f:
                f.write(result)
    finally:
        os._exit(0)


def main(spec_path: str) -> None:
    spec = json.load(open(spec_path))
    data = torch.load(spec["data"], weights_only=False)
    results = {}
    for sc in spec["scenarios"]:
        seeds = (0, 1) if sc["fault"] == "race" else (0,)
        pids = []
        for seed in seeds:
            pid = os.fork()
            if pid == 0:
                child(sc, data, seed)
            pids.append(pid)
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
        results[sc["name"]] = [{"signal": os.WTERMSIG(s) if os.WIFSIGNALED(s) else 0,
                                "code": os.WEXITSTATUS(s) if os.WIFEXITED(s) else None} for s in statuses]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
