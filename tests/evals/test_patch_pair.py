"""patch_pair: known answers. A backbone whose features encode the crop's box reads R^2 ~1;
one that encodes nothing reads ~0; an overfitting probe is scored on the held-out half."""

import torch
import torch.nn as nn

from spatialssl.data.canvases import CanvasSet
from spatialssl.evals import patch_pair
from spatialssl.views import IMAGENET_MEAN, IMAGENET_STD

CANVAS = 64
RAMP = 4  # grey levels per canvas pixel


def ramps(n: int, seed: int) -> CanvasSet:
    """Canvases whose red channel is RAMP * x and green RAMP * y (blue noise): a crop's pixels
    tell where it was cut."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (n, 3, CANVAS, CANVAS), generator=g, dtype=torch.uint8)
    ramp = torch.arange(CANVAS) * RAMP
    img[:, 0] = ramp[None, None, :].to(torch.uint8)
    img[:, 1] = ramp[None, :, None].to(torch.uint8)
    return CanvasSet(img, labels=torch.randint(0, 2, (n,), generator=g))


class BoxReader(nn.Module):
    """Pooled embedding = (centre x, centre y, log width, log height) of the crop, read off the ramps."""

    embed_dim = 4

    def forward(self, x):
        r = (x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255 / RAMP
        gy = (x[:, 1] * IMAGENET_STD[1] + IMAGENET_MEAN[1]) * 255 / RAMP
        span = lambda v: (v.flatten(1).max(1).values - v.flatten(1).min(1).values).clamp(min=1e-3)  # noqa: E731
        return torch.stack([r.mean((1, 2)), gy.mean((1, 2)), span(r).log(), span(gy).log()], 1)

    def features(self, x):
        return self.forward(x), None


class Constant(nn.Module):
    embed_dim = 4

    def forward(self, x):
        return torch.ones(len(x), 4)

    def features(self, x):
        return self.forward(x), None


class Noise(nn.Module):
    """Features unrelated to the crop (a fixed random vector per call position)."""

    embed_dim = 16

    def forward(self, x):
        return torch.randn(len(x), 16)

    def features(self, x):
        return self.forward(x), None


def _run(planted_tools, backbone, n_test, **ev):
    ctx = planted_tools["context"](backbone, {"test": ramps(n_test, 1)}, pp_pairs_per_image=8, pp_hidden=64, **ev)
    return patch_pair.run(ctx), ctx


def test_box_encoding_backbone_reads_r2_near_one(planted_tools):
    out, ctx = _run(planted_tools, BoxReader(), 60, pp_epochs=300)
    for c in ("dx", "dy", "ds"):
        assert out[f"r2_{c}"] > 0.9, out
        assert out[f"sign_acc_{c}"] > 0.9
    o = ctx.outcomes["r2_dx"]
    assert o["kind"] == "r2" and o["err2"].shape == o["target"].shape == (out["n_pairs_test"],)
    assert abs(float(patch_pair.r2(o["err2"], o["target"])) - out["r2_dx"]) < 1e-5
    assert out["n_pairs_test"] == 30 * 8 and out["n_test"] == 30
    # every outcome carries the held-out image of each pair (the report resamples images)
    _, held_out = patch_pair.halves(ctx, 60, ctx.split("test").labels)
    for key in ("r2_dx", "r2_dy", "r2_ds", "sign_acc_dx", "sign_acc_dy", "sign_acc_ds", "mae"):
        group = ctx.outcomes[key]["group"]
        assert group.shape == (240,) and group.dtype == torch.long, key
        images, counts = group.unique(return_counts=True)
        assert images.tolist() == sorted(held_out.tolist()) and (counts == 8).all(), key


def test_constant_backbone_reads_r2_near_zero(planted_tools):
    out, _ = _run(planted_tools, Constant(), 60, pp_epochs=100)
    for c in ("dx", "dy", "ds"):
        assert abs(out[f"r2_{c}"]) < 0.1, out


def test_scored_on_the_held_out_half(planted_tools):
    """Noise features and no early-stopping set (9 probe-train images): the probe memorises its
    pairs (train R^2 high) and knows nothing of the other half's (test R^2 <= ~0)."""
    torch.manual_seed(0)
    out, _ = _run(planted_tools, Noise(), 18, pp_epochs=400)
    assert min(out[f"train_r2_{c}"] for c in ("dx", "dy", "ds")) > 0.5, out
    assert max(out[f"r2_{c}"] for c in ("dx", "dy", "ds")) < 0.15, out


def test_r2_is_centred():
    """Predicting the targets' mean scores 0 (an uncentred R^2 would give ~0.96 here)."""
    target = torch.tensor([4.0, 5.0, 6.0, 5.0])
    err2 = (target - 5.0) ** 2
    assert abs(float(patch_pair.r2(err2, target))) < 1e-6
    assert abs(float(patch_pair.r2(torch.zeros(4), target)) - 1.0) < 1e-6
