"""Evaluations on prepared shards: the same metrics and features as the in-memory loaders of
the same folder, features streamed in bounded batches (never the whole split decoded), a
cache keyed by the manifest digest (no pixel read), and seg/depth read from prepared shards."""

import pytest
import torch
from PIL import Image

from spatialssl.data import shards
from spatialssl.data.canvases import CanvasSet
from spatialssl.evals import depth, knn, linear, segmentation
from test_dense_folders import _write

N_CLS = 4
PER_CLASS = {"train": 50, "test": 25}  # 300 images, 2 bad files


def _folder(root, step: int) -> None:
    """ImageFolder ``root/<split>/c<k>/*.png``: smooth 16 x 16 images whose red channel is the
    class code (x ``step``), plus an unreadable ``.jpg`` and an empty ``.png``."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    for split, n in PER_CLASS.items():
        for c in range(N_CLS):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a, b = torch.rand(2, generator=g) * 0.5 + 0.1
                img = torch.stack([torch.full_like(xx, c * step), 128 + 60 * torch.sin(a * xx + b * yy),
                                   128 + 60 * torch.cos(b * xx - a * yy)], -1)
                Image.fromarray(img.round().clamp(0, 255).to(torch.uint8).numpy()).save(d / f"{i:03d}.png")
    (root / "train" / "c0" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "test" / "c1" / "empty.png").write_bytes(b"")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _folder(root / "img", step=20)
    with pytest.warns(UserWarning, match="skipped"):
        shards.prepare_folder(root / "img", root / "sh", canvas_size=16, shard_size=64, progress=False, workers=1)
    return root


def _ctx(planted_tools, data: dict, backbone=None, splits=None, **ev):
    t = planted_tools
    ctx = t["context"](backbone if backbone is not None else t["Planted"](N_CLS), {} if splits is None else splits,
                       **ev)
    ctx.cfg["data"].update(canvas_size=16, **data)
    ctx.cfg["views"]["global_size"] = 16
    return ctx


def test_eval_on_shards_equals_eval_on_the_in_memory_folder(planted_tools, prepared):
    """kNN and linear top-1 (whole splits and seeded subsets) are the same on the folder and on
    its prepared shards; the feature subsets hold the same items in the same order."""
    folder = {"name": "folder", "root": str(prepared / "img")}
    sh = {"name": "shards", "root": str(prepared / "sh"), "workers": 2}
    for ev in ({"n_train": 0, "n_test": 0}, {"n_train": 80, "n_test": 40}):
        with pytest.warns(UserWarning):
            a = _ctx(planted_tools, folder, **ev)
            ra, la = knn.run(a), linear.run(a)
        b = _ctx(planted_tools, sh, **ev)
        rb, lb = knn.run(b), linear.run(b)
        assert isinstance(b.full_split("train"), shards.ShardSet)
        assert ra == rb and la == lb, (ev, ra, rb)
        assert torch.equal(a.split("test").labels, b.split("test").labels)
        fa, fb = a.features("test")[0], b.features("test")[0]
        assert torch.equal(fa, fb)  # planted one-hot features: JPEG's error does not reach them
    assert 0.99 < ra["top1"] and la["top1"] > 0.99 and ra["n_test"] == 40


def test_streamed_features_equal_in_memory_features_of_the_same_images(planted_tools, prepared):
    """A random-init CNN: features streamed from the shards (2 DataLoader workers, batches of
    32) equal those of the same shards decoded into memory bit for bit, and those of the
    folder loader's canvases up to JPEG's error."""
    t = planted_tools
    net = t["random_backbone"](0)
    sh = shards.ShardSet(prepared / "sh", "train")
    streamed = _ctx(t, {"name": "shards", "root": str(prepared / "sh"), "workers": 2}, net, batch_size=32)
    memory = _ctx(t, {"name": "folder"}, net, splits={"train": sh.load()}, batch_size=32)
    with pytest.warns(UserWarning):
        folder = _ctx(t, {"name": "folder", "root": str(prepared / "img")}, net, batch_size=32)
        f_folder = folder.features("train")[0]
    f_stream, f_mem = streamed.features("train")[0], memory.features("train")[0]
    assert f_stream.shape == (len(sh), net.embed_dim) == (200, net.embed_dim)
    assert torch.equal(f_stream, f_mem)
    rel = (f_stream - f_folder).norm(dim=1) / f_folder.norm(dim=1)
    other = (f_stream[1:] - f_folder[:-1]).norm(dim=1) / f_folder[:-1].norm(dim=1)  # the neighbouring image's
    assert rel.mean() < 0.05 and rel.max() < 0.15, (rel.mean(), rel.max())
    assert other.mean() > 4 * rel.mean(), (other.mean(), rel.mean())


def test_features_of_a_set_larger_than_the_buffer_are_streamed_in_batches(planted_tools, prepared, monkeypatch):
    """200 images, batches of 32, decoded in this process (workers=0): no decode call exceeds a
    batch, every image is decoded exactly once, and no full-set tensor is built (``images``,
    ``load`` and ``subset`` of a ShardSet are never called)."""
    calls = []
    decode = shards.ShardSet.decode

    def spy(self, idx, device="cpu"):
        calls.append(len(idx))
        return decode(self, idx, device)

    def refuse(*_a, **_k):
        raise AssertionError("the whole set was decoded")

    monkeypatch.setattr(shards.ShardSet, "decode", spy)
    monkeypatch.setattr(shards.ShardSet, "images", property(refuse))
    monkeypatch.setattr(shards.ShardSet, "load", refuse)
    monkeypatch.setattr(shards.ShardSet, "subset", refuse)
    ctx = _ctx(planted_tools, {"name": "shards", "root": str(prepared / "sh"), "workers": 0}, batch_size=32,
               n_train=0, n_test=90)
    f_tr, _ = ctx.features("train")
    f_te, _ = ctx.features("test")
    assert len(f_tr) == 200 and len(f_te) == 90
    assert max(calls) <= 32 and sum(calls) == 200 + 90
    assert knn.run(ctx)["top1"] > 0.99  # the protocol runs on the same lazy subsets (cached features)
    assert sum(calls) == 200 + 90


def test_cache_keyed_by_the_manifest_not_the_pixels(planted_tools, prepared, tmp_path, monkeypatch):
    """A second evaluation of the same shards reads its features from disk without decoding or
    hashing an image; other rows, or other images prepared under the same path (same shard
    layout and counts), get other keys."""
    src = shards.ShardSet(prepared / "sh", "train")
    img0 = src.decode(torch.arange(len(src)))
    sh_root = tmp_path / "sh"

    def prepare(images):
        shards.prepare_canvases(CanvasSet(images, labels=src.labels, class_names=src.class_names), sh_root,
                                "train", shard_size=64, progress=False, workers=1)

    def features():
        ctx = _ctx(planted_tools, {"name": "shards", "root": str(sh_root), "workers": 0}, n_train=60)
        ctx.cache_dir = tmp_path / "cache"
        return ctx, ctx.features("train")[0]

    prepare(img0)
    _, fa = features()
    calls = []
    monkeypatch.setattr(shards.ShardSet, "decode", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(shards, "_file_digest", lambda p: calls.append(p))
    b, fb = features()
    assert torch.equal(fa, fb) and calls == []  # from disk: no image decoded, no shard file hashed
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    monkeypatch.undo()
    full = b.full_split("train")
    k1, k2 = b.cache_key(full.select(torch.arange(50)), False), b.cache_key(full.select(torch.arange(50, 100)), False)
    assert k1 != k2
    # the folder prepared again from other images, at the same path: same shards, same counts
    (sh_root / "meta.json").unlink()
    for f in (sh_root / "train").glob("*.npz"):
        f.unlink()
    img1 = img0.clone()
    img1[:, 0] = 255 - img1[:, 0]  # other red codes
    prepare(img1)
    _, fc = features()
    assert not torch.equal(fa, fc)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_segmentation_and_depth_read_prepared_shards(planted_tools, tmp_path):
    """``eval.seg_root`` / ``eval.depth_root`` naming shards prepared from the folders give the
    folders' scores (masks and depth stored losslessly; the images through JPEG)."""
    t = planted_tools
    tr, te = t["dense_set"](40, 4, 0), t["dense_set"](20, 4, 1)
    for cs in (tr, te):
        cs.images[:, 0] = 128  # a flat red channel: JPEG's error stays small on the coded channels
    for split, cs in (("train", tr), ("test", te)):
        _write(tmp_path / "seg", split, cs, "masks")
        _write(tmp_path / "depth", split, cs, "depth")
    shards.prepare_dense(tmp_path / "seg", tmp_path / "seg_sh", "segmentation", canvas_size=t["SIZE"],
                         progress=False, workers=1)
    shards.prepare_dense(tmp_path / "depth", tmp_path / "depth_sh", "depth", canvas_size=t["SIZE"],
                         progress=False, workers=1)
    plain = {"train": t["labelled_set"](8, 2, 0), "test": t["labelled_set"](8, 2, 1)}
    out = {}
    for kind in ("", "_sh"):
        ctx = t["context"](t["Planted"](4, stride=2), dict(plain), seg_root=str(tmp_path / f"seg{kind}"),
                           depth_root=str(tmp_path / f"depth{kind}"), dense_epochs=100)
        ctx.cfg["data"]["canvas_size"] = t["SIZE"]
        out[kind] = segmentation.run(ctx), depth.run(ctx)
    (s0, d0), (s1, d1) = out[""], out["_sh"]
    assert s0["miou"] > 0.95 and s1["miou"] == pytest.approx(s0["miou"], abs=0.005)  # JPEG flips a few pixels
    # depth is read from the blue channel, through JPEG: near the folder's, far below the mean floor
    assert d1["delta1"] > 0.99 and d1["rmse"] < 0.1 * d1["mean_rmse"]
    assert abs(d1["rmse"] - d0["rmse"]) < 0.05 * d0["mean_rmse"]
    assert d1["mean_rmse"] == pytest.approx(d0["mean_rmse"], rel=1e-6)  # the targets alone: exact


def test_partsworld_shards_keep_dense_targets_for_the_evals(planted_tools, tmp_path):
    """A PartsWorld-like CanvasSet with depth and masks, prepared: the dense probes find their
    targets in the shards (data.name=shards), with ``far`` restored from the meta."""
    t = planted_tools
    tr, te = t["dense_set"](40, 4, 0), t["dense_set"](20, 4, 1)
    for cs in (tr, te):
        cs.images[:, 0] = 128
        cs.meta["far"] = 9.0  # depth >= 9 is sky: left out
    for split, cs in (("train", tr), ("test", te)):
        shards.prepare_canvases(cs, tmp_path / "sh", split, shard_size=16, progress=False, workers=1)
    ds = shards.ShardSet(tmp_path / "sh", "test")
    assert ds.targets == ("semantic", "depth") and ds.meta["far"] == 9.0
    assert torch.equal(ds.semantic, te.semantic) and torch.equal(ds.depth, te.depth)
    ctx = t["context"](t["Planted"](4, stride=2), {}, dense_epochs=100, dense_n_train=30)
    ctx.cfg["data"].update(name="shards", root=str(tmp_path / "sh"), workers=0)
    seg, dep = segmentation.run(ctx), depth.run(ctx)
    assert seg["miou"] > 0.95 and seg["n_train"] == 30
    assert dep["delta1"] > 0.99 and 0 < dep["valid_frac"] < 1  # the far plane was applied


def test_unknown_rows_and_missing_targets_are_clear_errors(prepared):
    ds = shards.ShardSet(prepared / "sh", "train")
    with pytest.raises(IndexError, match="out of range"):
        ds.select(torch.tensor([0, 10_000]))
    with pytest.raises(KeyError, match="no depth target"):
        ds.decode_target([0], "depth")
    assert ds.depth is None and ds.targets == ()


def test_subsets_of_shards_are_lazy_stratified_views(planted_tools, prepared):
    ctx = _ctx(planted_tools, {"name": "shards", "root": str(prepared / "sh")}, n_train=40)
    sub = ctx.split("train")
    assert isinstance(sub, shards.ShardSet) and len(sub) == 40
    assert sub.labels.bincount().tolist() == [10, 10, 10, 10]
    full = ctx.full_split("train")
    rows = torch.from_numpy(sub._rows)
    assert torch.equal(sub.decode(torch.arange(40)), full.decode(rows))  # the view's images are the split's rows


def test_spatialssl_eval_on_prepared_partsworld_shards(tmp_path, capsys):
    """End to end from the command line: a tiny checkpoint trained on PartsWorld, the same
    PartsWorld prepared as shards, ``spatialssl eval --set data.name=shards`` on whole splits
    (streamed in 2 workers) scores within JPEG's reach of the in-memory evaluation, dense
    tasks included (their targets come from the shards)."""
    import json

    from spatialssl.cli import main
    from test_evaluate import _pretrain

    run = _pretrain(tmp_path / "run")
    data = ["--set", "data.n_train=64", "--set", "data.n_eval=32"]
    assert main(["data", "prepare", "--dataset", "partsworld", "-c", "demo", *data, "--out", str(tmp_path / "sh"),
                 "--splits", "train,test", "--threads", "1"]) == 0
    ev = ["--set", "eval.n_train=0", "--set", "eval.n_test=0", "--set", "eval.linear_epochs=10",
          "--set", "eval.random_floor=false", "--set", "eval.dense_epochs=3", "--set", "eval.batch_size=16"]
    tasks = ["--tasks", "knn,linear,segmentation,depth"]
    assert main(["eval", "--checkpoint", str(run), *tasks, *ev, "--out", str(tmp_path / "mem")]) == 0
    assert main(["eval", "--checkpoint", str(run), *tasks, *ev, "--out", str(tmp_path / "sh_eval"),
                 "--set", "data.name=shards", "--set", f"data.root={tmp_path / 'sh'}", "--set", "data.workers=2"]) == 0
    capsys.readouterr()
    for task, key, tol in (("knn", "top1", 0.07), ("linear", "top1", 0.1), ("segmentation", "miou", 0.01),
                           ("depth", "rmse", 0.01)):
        a = json.loads((tmp_path / "mem" / "metrics" / f"{task}.json").read_text())["values"]
        b = json.loads((tmp_path / "sh_eval" / "metrics" / f"{task}.json").read_text())
        assert b["data_config"]["name"] == "shards" and b["values"]["n_test"] == a["n_test"] == 32
        assert abs(b["values"][key] - a[key]) <= tol * max(1.0, abs(a[key])), (task, a[key], b["values"][key])


def test_supervised_reference_trains_on_shards_batch_by_batch(planted_tools, prepared, monkeypatch):
    """``--reference supervised`` on prepared shards decodes each step's batch only, and trains
    the same weights as on the same images in memory."""
    from spatialssl.evals.reference import reference_key, train_supervised

    cfg = _ctx(planted_tools, {"name": "shards", "root": str(prepared / "sh")}).cfg
    cfg["train"].update(steps=3, batch_size=8, warmup_steps=1)
    ds = shards.ShardSet(prepared / "sh", "train")
    mem = ds.load()
    monkeypatch.setattr(shards.ShardSet, "images", property(lambda self: (_ for _ in ()).throw(AssertionError)))
    a = train_supervised(cfg, ds, seed=0).state_dict()
    b = train_supervised(cfg, mem, seed=0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert reference_key(cfg, ds, 0) != reference_key(cfg, ds.select(torch.arange(100)), 0)


def test_robustness_on_shards_is_streamed_and_equals_the_in_memory_path(planted_tools, prepared, monkeypatch):
    """A random-init CNN: robustness on shards (streamed; the test split's images never decoded
    whole) gives the clean and corrupted features, and every value, of the same images in memory
    (corrupted in chunks of 32 here: the generator must see the chunks alike on both paths)."""
    from spatialssl.evals import robustness

    monkeypatch.setattr(robustness, "CORRUPT_BATCH", 32)
    t = planted_tools
    net = t["random_backbone"](0)
    kw = dict(robust_corruptions=["gaussian_noise", "fog"], robust_severities=[1, 5], robust_n_test=0,
              batch_size=32, n_test=0, linear_epochs=5)
    mem_splits = {s: shards.ShardSet(prepared / "sh", s).load() for s in ("train", "test")}
    got = {}

    def run(ctx, name):
        seen, orig = {}, ctx.features

        def spy(split, patch=False, images=None, tag="", settings=None, transform=None, transform_batch=256):
            out = orig(split, patch, images, tag, settings, transform, transform_batch)
            seen[tag] = out[0]
            return out

        ctx.features = spy
        got[name] = robustness.run(ctx), seen

    run(_ctx(t, {"name": "folder"}, net, splits=dict(mem_splits), **kw), "memory")
    monkeypatch.setattr(shards.ShardSet, "images", property(lambda self: (_ for _ in ()).throw(AssertionError)))
    run(_ctx(t, {"name": "shards", "root": str(prepared / "sh"), "workers": 2}, net, **kw), "shards")
    (va, fa), (vb, fb) = got["memory"], got["shards"]
    assert set(fa) == set(fb) == {"", "gaussian_noise1", "gaussian_noise5", "fog1", "fog5"}
    for tag in fa:
        assert torch.equal(fa[tag], fb[tag]), tag
    assert va == vb and va["n_test"] == 100
