"""segmentation and depth on folder data (``eval.seg_root`` / ``eval.depth_root``): the
same planted backbone, with the images, PNG masks and .npy depth maps written to disk."""

import numpy as np
from PIL import Image

from spatialssl.evals import depth, segmentation


def _write(root, split, cs, kind):
    (root / split / "images").mkdir(parents=True)
    (root / split / kind).mkdir()
    for i in range(len(cs)):
        Image.fromarray(cs.images[i].permute(1, 2, 0).numpy()).save(root / split / "images" / f"im{i:03d}.png")
        if kind == "masks":
            Image.fromarray(cs.semantic[i].numpy().astype(np.uint8)).save(root / split / "masks" / f"im{i:03d}.png")
        else:
            np.save(root / split / "depth" / f"im{i:03d}.npy", cs.depth[i].numpy())


def test_segmentation_and_depth_from_folders(planted_tools, tmp_path):
    t = planted_tools
    tr, te = t["dense_set"](40, 4, 0), t["dense_set"](20, 4, 1)
    for split, cs in (("train", tr), ("test", te)):
        _write(tmp_path / "seg", split, cs, "masks")
        _write(tmp_path / "depth", split, cs, "depth")
    # the context's own splits carry no masks or depth: the folders must provide them
    plain = {"train": t["labelled_set"](8, 2, 0), "test": t["labelled_set"](8, 2, 1)}
    ctx = t["context"](t["Planted"](4, stride=2), plain, seg_root=str(tmp_path / "seg"),
                       depth_root=str(tmp_path / "depth"), dense_epochs=100)
    ctx.cfg["data"]["canvas_size"] = t["SIZE"]
    seg = segmentation.run(ctx)
    assert seg["miou"] > 0.95
    dep = depth.run(ctx)
    assert dep["delta1"] > 0.99 and dep["rmse"] < 0.1 * dep["mean_rmse"]
