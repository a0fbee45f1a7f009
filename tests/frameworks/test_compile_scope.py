"""``train.compile``: the step's whole forward (backbones, heads, losses, SP) is one graph.

For every framework with and without SP, 3 training steps under ``torch.compile`` (backend
``aot_eager``: dynamo and AOTAutograd trace forward and backward as for inductor, no code is
generated; backend ``eager``, dynamo alone, missed a 0-d tensor index read on the host)
with dynamo's counters: no graph break, one graph, compiled at the first step and not again at the next
two (``error_on_recompile``), although the step, the teacher temperature, the views and
iBOT's masks (their number of masked tokens too) change every step. The compiled steps'
losses equal the eager ones'. Here (``tests/frameworks``) the ViTs have 2 blocks.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from spatialssl import config
from spatialssl.engine import trainer

FRAMEWORKS = ("dino", "ibot", "mocov3", "simclr", "byol")
SMALL = ["train.batch_size=4", "train.steps=3", "framework.proj_dim=32", "device=cpu"]


def _steps(cfg: dict, canvases: torch.Tensor, n: int = 3) -> list[dict[str, torch.Tensor]]:
    run = trainer.build(cfg, tuple(canvases.shape[-2:]), torch.device("cpu"))
    return [trainer.train_step(run, canvases, step) for step in range(n)]


@pytest.mark.parametrize("sp", [False, True], ids=["base", "sp"])
@pytest.mark.parametrize("name", FRAMEWORKS)
def test_whole_forward_is_one_graph_compiled_once(name, sp, tiny_overrides, random_canvases, tmp_path):
    overrides = [*tiny_overrides, *SMALL, f"framework.name={name}", f"sp.enabled={str(sp).lower()}",
                 f"out_dir={tmp_path}"]
    canvases = random_canvases.images[:4]
    eager = _steps(config.resolve([], overrides), canvases)
    torch._dynamo.reset()
    counters.clear()
    try:
        cfg = config.resolve([], [*overrides, "train.compile=true", "train.compile_backend=aot_eager"])
        run = trainer.build(cfg, tuple(canvases.shape[-2:]), torch.device("cpu"))
        compiled = [trainer.train_step(run, canvases, 0)]
        assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])  # the reasons
        assert counters["stats"]["unique_graphs"] == 1  # the whole forward
        with torch._dynamo.config.patch(error_on_recompile=True):  # steps 1, 2: a recompile raises
            compiled += [trainer.train_step(run, canvases, step) for step in (1, 2)]
        assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
        assert counters["stats"]["unique_graphs"] == 1  # compiled once
    finally:
        torch._dynamo.reset()
    for a, b in zip(eager, compiled):
        for k in ("loss", "loss_fw", "loss_sp"):
            if k in a:
                torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
