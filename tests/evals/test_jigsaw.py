"""jigsaw: slot-coded tiles are solved exactly; a random backbone on noise is at chance."""

import torch

from spatialssl.evals import jigsaw, run_task


def slot_coded(n_img: int, n: int, size: int, step: int, seed: int):
    """Noise images whose tile at slot s has red value s * step."""
    from spatialssl.data.canvases import CanvasSet

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_img, 3, size, size), generator=g, dtype=torch.uint8)
    t = size // n
    for s in range(n * n):
        images[:, 0, (s // n) * t:(s // n + 1) * t, (s % n) * t:(s % n + 1) * t] = s * step
    return CanvasSet(images, labels=torch.randint(0, 3, (n_img,), generator=g))


def test_tiles_roundtrip():
    x = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8)
    tiles = jigsaw.cut_tiles(x, 3)
    assert tiles.shape == (2, 9, 3, 3, 3)
    ident = torch.arange(9).expand(2, 9)
    assert torch.equal(jigsaw.assemble(tiles, ident), x[..., :9, :9])
    perm = torch.stack([torch.randperm(9), torch.randperm(9)])
    shuffled = tiles[torch.arange(2)[:, None], perm]
    assert torch.equal(jigsaw.assemble(shuffled, perm), x[..., :9, :9])  # true slots undo the shuffle


def test_hungarian_decode():
    lp = torch.log(torch.tensor([[[0.6, 0.4], [0.9, 0.1]]]))  # greedy puts both tiles in slot 0
    assert jigsaw.decode(lp).tolist() == [[1, 0]]


def test_planted_solves_every_puzzle(planted_tools):
    t = planted_tools
    size, step = t["SIZE"], t["STEP"]
    splits = {"train": slot_coded(60, 3, size, step, 0), "test": slot_coded(30, 3, size, step, 1)}
    out = jigsaw.run(t["context"](t["Planted"](9), splits))
    assert out["tile_acc"] == 1.0 and out["puzzle_acc"] == 1.0
    assert out["top1_reconstructed"] == out["top1_original"]


def test_random_backbone_at_chance(planted_tools):
    t = planted_tools
    g = torch.Generator().manual_seed(0)
    from spatialssl.data.canvases import CanvasSet

    noise = lambda n: CanvasSet(torch.randint(0, 256, (n, 3, 24, 24), generator=g, dtype=torch.uint8),  # noqa: E731
                                labels=torch.randint(0, 3, (n,), generator=g))
    out = run_task(t["context"](t["random_backbone"](), {"train": noise(60), "test": noise(60)}, random_floor=True),
                   "jigsaw")
    assert abs(out["tile_acc"] - 1 / 9) < 0.07 and out["puzzle_acc"] == 0.0
    assert abs(out["random_tile_acc"] - 1 / 9) < 0.07


def test_run_decodes_with_hungarian(planted_tools):
    """Slots 0 and 1 carry the same code, so their two tiles look alike and score the same
    slots: greedy decoding puts both in one slot (the puzzle is never solved), the Hungarian
    assignment gives each its own slot (solved whenever the pair lands in the right order, about
    half the time). Every other tile is unambiguous."""
    t = planted_tools
    size, step = t["SIZE"], t["STEP"]

    def ambiguous(n_img, seed):
        cs = slot_coded(n_img, 3, size, step, seed)
        tl = size // 3
        cs.images[:, 0, :tl, tl:2 * tl] = 0  # slot 1 gets slot 0's code
        return cs

    out = jigsaw.run(t["context"](t["Planted"](9), {"train": ambiguous(60, 0), "test": ambiguous(40, 1)}))
    assert out["tile_acc_greedy"] < 8 / 9 + 1e-6  # greedy: one of the twins always wrong
    assert 0.25 < out["puzzle_acc"] < 0.75 and out["tile_acc"] > 7 / 9
    ctx = t["context"](t["Planted"](9), {"train": ambiguous(60, 0), "test": ambiguous(40, 1)})
    jigsaw.run(ctx)
    assert ctx.outcomes["puzzle_acc"]["x"].shape == (40,) and ctx.outcomes["tile_acc"]["kind"] == "mean"
    for key in ("tile_acc", "puzzle_acc", "tile_acc_greedy"):  # one item per test image, its id the group
        assert ctx.outcomes[key]["group"].tolist() == list(range(40)), key
