import os

import pytest
import torch

os.environ.setdefault("SPATIALSSL_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache-test"))
torch.set_num_threads(1)  # tiny models: one thread is as fast, and robust on a busy machine

TINY = [
    "backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=32",
    "views.global_size=32", "views.local_size=16", "views.n_local=4", "views.local_scale=[0.05,0.25]",
    "framework.out_dim=256", "framework.hidden_dim=64", "framework.bottleneck_dim=32",
    "framework.patch_out_dim=256",
    "train.steps=4", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1",
    "train.checkpoint_every=2", "train.progress=false", "train.collapse_every=2",
]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread in every test, restored after (a test or library may change it):
    tiny ops gain nothing from two, and on a shared, loaded CPU two threads made a
    training step 15x slower, every op waiting at a barrier for a descheduled thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_overrides():
    """Overrides that make a run tiny (ViT 32 px, patch 8, small heads, 4 steps)."""
    return list(TINY)


@pytest.fixture
def random_canvases():
    from spatialssl.data.canvases import CanvasSet

    g = torch.Generator().manual_seed(0)
    return CanvasSet(torch.randint(0, 256, (32, 3, 48, 48), dtype=torch.uint8, generator=g),
                     labels=torch.randint(0, 4, (32,), generator=g))
