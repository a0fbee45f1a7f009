"""Prepared shards: round trip, resume, bad files, lazy reading, streamed batches."""

import numpy as np
import pytest
import torch
from PIL import Image

from spatialssl.data import folders, shards


def _folder(root, n_per_class=6, classes=("cat", "dog", "emu"), size=(40, 30)):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                # smooth images (JPEG's error is small on them, as on photos)
                yy, xx = np.mgrid[0:size[1], 0:size[0]]
                base = rng.uniform(0, 255, 3)
                img = (base[None, None] + 40 * np.sin(xx[..., None] / (3 + i) + yy[..., None] / 5)).clip(0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def test_round_trip_matches_the_in_memory_loader(tmp_path):
    root = _folder(tmp_path / "img")
    with pytest.warns(UserWarning, match="skipped"):
        shards.prepare_folder(root, tmp_path / "sh", canvas_size=24, shard_size=4, progress=False, workers=1)
    with pytest.warns(UserWarning):
        ref = folders.load_classification(str(root / "train"), canvas_size=24, progress=False)
    ds = shards.ShardSet(tmp_path / "sh", "train")
    assert len(ds) == len(ref) == 18
    assert ds.class_names == ref.class_names
    assert torch.equal(ds.labels, ref.labels)
    got = ds.decode(torch.arange(len(ds))).float()
    err = (got - ref.images.float()).abs()
    assert err.mean() < 2.0 and err.max() < 40  # JPEG q95 error only
    assert any("broken.jpg" in s for s in ds.meta["skipped"])
    te = shards.ShardSet(tmp_path / "sh", "test")
    assert te.class_names == ds.class_names and len(te) == 18


def test_prepare_resumes_without_redoing_finished_shards(tmp_path):
    root = _folder(tmp_path / "img")
    out = tmp_path / "sh"
    with pytest.warns(UserWarning):
        shards.prepare_folder(root, out, canvas_size=16, splits=("train",), shard_size=4, progress=False)
    done = sorted((out / "train").glob("*.npz"))
    stamp = {p.name: p.stat().st_mtime_ns for p in done}
    # an interruption: one shard lost its index (the last file written), meta.json not yet written
    (out / "train" / "shard-00002.npz").unlink()
    (out / "meta.json").unlink()
    with pytest.warns(UserWarning):
        shards.prepare_folder(root, out, canvas_size=16, splits=("train",), shard_size=4, progress=False)
    for p in sorted((out / "train").glob("*.npz")):
        if p.name != "shard-00002.npz":
            assert p.stat().st_mtime_ns == stamp[p.name]  # not redone
    ds = shards.ShardSet(out, "train")
    assert len(ds) == 18


def test_test_class_not_in_train_is_an_error(tmp_path):
    root = _folder(tmp_path / "img", classes=("cat",))
    (root / "test" / "zebra").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "zebra" / "z.png")
    with pytest.raises(ValueError, match="zebra"):
        with pytest.warns(UserWarning):
            shards.prepare_folder(root, tmp_path / "sh", canvas_size=8, progress=False)


def test_labels_follow_train_classes_when_a_split_lacks_one(tmp_path):
    root = _folder(tmp_path / "img")
    for f in (root / "test" / "cat").iterdir():
        f.unlink()
    (root / "test" / "cat").rmdir()
    with pytest.warns(UserWarning):
        shards.prepare_folder(root, tmp_path / "sh", canvas_size=8, progress=False)
    te = shards.ShardSet(tmp_path / "sh", "test")
    assert te.class_names == ["cat", "dog", "emu"]
    assert set(te.labels.tolist()) == {1, 2}  # dog, emu keep train's ids


def test_stream_batches_follow_the_index_function_and_resume(tmp_path):
    from spatialssl.data.canvases import CanvasSet

    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    imgs = torch.stack([(128 + 60 * torch.sin(xx / (2 + i % 5) + yy / 4 + i)).expand(3, 16, 16)
                        for i in range(40)]).round().to(torch.uint8)  # smooth, distinct images
    shards.prepare_canvases(CanvasSet(imgs, labels=torch.arange(40) % 4), tmp_path / "sh", "train",
                            shard_size=7, quality=100, progress=False)
    ds = shards.ShardSet(tmp_path / "sh", "train")
    index = lambda s: torch.arange(s * 8, s * 8 + 8) % 40  # noqa: E731
    full = list(shards.stream_batches(ds, index, 0, 6, workers=0))
    resumed = list(shards.stream_batches(ds, index, 3, 6, workers=2, prefetch=1))
    assert len(full) == 6 and len(resumed) == 3
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a, b)
    assert torch.equal(full[0], ds.decode(torch.arange(8)))
    assert (full[0].float() - imgs[:8].float()).abs().mean() < 2  # the right images, JPEG q100 error only
    assert (full[0].float() - imgs[8:16].float()).abs().mean() > 10  # (and not some other images)
    sub = ds.subset(torch.tensor([3, 1]))
    assert torch.equal(sub.labels, torch.tensor([3, 1])) and sub.images.shape == (2, 3, 16, 16)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data prepare"):
        shards.ShardSet(tmp_path / "nothing", "train")


def test_training_on_shards_resumes_mid_epoch_exactly(tmp_path, tiny_overrides):
    """Pretraining reads prepared shards through DataLoader workers; a run interrupted mid-epoch
    and resumed ends with the same weights as one never interrupted (same batches)."""
    from spatialssl import config
    from spatialssl.data.canvases import CanvasSet
    from spatialssl import runfolder
    from spatialssl.engine.trainer import pretrain

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (20, 3, 48, 48), dtype=torch.uint8, generator=g)
    shards.prepare_canvases(CanvasSet(imgs), tmp_path / "sh", "train", shard_size=6, progress=False)
    ov = [*tiny_overrides, "data.name=shards", f"data.root={tmp_path / 'sh'}", "data.canvas_size=48", "train.steps=5",
          "train.checkpoint_every=100"]
    # decoded in this process for one run, in a DataLoader worker for the other: the same batches
    full = pretrain(config.resolve([], [*ov, "data.workers=0", f"out_dir={tmp_path / 'full'}"]))
    cfg = config.resolve([], [*ov, "data.workers=1", f"out_dir={tmp_path / 'cut'}"])
    pretrain(cfg, stop_after=3)  # 20 images, batch 8: step 3 is in the middle of the second epoch
    assert runfolder.read_checkpoint(tmp_path / "cut")["step"] == 3
    pretrain(cfg)
    a, b = runfolder.read_checkpoint(full), runfolder.read_checkpoint(tmp_path / "cut")
    assert a["step"] == b["step"] == 5
    for k in a["framework"]:
        assert torch.equal(a["framework"][k], b["framework"][k]), f"framework.{k} differs after resume"


def test_flat_root_with_a_test_folder_follows_the_folder_loaders_layout(tmp_path):
    """<root>/<class>/... is train and <root>/test its test split (not a class), as for data.name=folder."""
    root = _folder(tmp_path / "img")
    for c in ("cat", "dog", "emu"):
        (root / "train" / c).rename(root / c)
    (root / "train").rmdir()
    with pytest.warns(UserWarning):
        shards.prepare_folder(root, tmp_path / "sh", canvas_size=8, progress=False)
    tr, te = shards.ShardSet(tmp_path / "sh", "train"), shards.ShardSet(tmp_path / "sh", "test")
    assert tr.class_names == te.class_names == ["cat", "dog", "emu"]
    assert len(tr) == len(te) == 18


def test_cli_data_prepare_then_train_split_reads_the_shards(tmp_path, capsys):
    from spatialssl.cli import main
    from spatialssl.data import load_split

    root = _folder(tmp_path / "img")
    assert main(["data", "prepare", "--root", str(root), "--out", str(tmp_path / "sh"), "--canvas", "16",
                 "--shard-size", "5", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING spatialssl: skipped 1 unreadable file(s) preparing train" in err  # a warning is one log line
    assert "train: 18 images in 4 shard(s), 1 skipped" in out and "test: 18 images" in out
    ds = load_split({"name": "shards", "root": str(tmp_path / "sh")}, "test")
    assert isinstance(ds, shards.ShardSet) and ds.size == (16, 16) and len(ds) == 18
    assert main(["data", "prepare", "--out", str(tmp_path / "x")]) == 2  # no --root: one-line error


def test_shards_of_another_canvas_size_than_the_config_are_an_error(tmp_path, tiny_overrides):
    """Views, enlargement warnings and presets assume data.canvas_size: training must not run
    silently on shards prepared at another size (evaluations resize and accept any)."""
    from spatialssl import config
    from spatialssl.data import check_canvas, load_split
    from spatialssl.data.canvases import CanvasSet
    from spatialssl.engine.trainer import pretrain

    imgs = torch.randint(0, 256, (6, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    shards.prepare_canvases(CanvasSet(imgs), tmp_path / "sh", "train", progress=False)
    cfg = {"name": "shards", "root": str(tmp_path / "sh"), "canvas_size": 24}
    check_canvas(cfg, load_split(cfg, "train"))
    assert load_split({**cfg, "canvas_size": 448}, "train").canvas_size == 24  # evaluations: any canvas
    with pytest.raises(ValueError, match=r"24 px canvases but config key 'data.canvas_size' is 64"):
        pretrain(config.resolve([], [*tiny_overrides, "data.name=shards", f"data.root={tmp_path / 'sh'}",
                                     "data.canvas_size=64", f"out_dir={tmp_path / 'run'}"]))

def _dense_folder(root, kind: str, n: int = 30, size=(20, 14)):
    """``root/<split>/images`` + ``masks`` (8-bit PNG ids, some 255 = ignore) or ``depth``
    (.npy float, and 16-bit PNG in millimetres for every third image), with bad files: an
    unreadable image, an image without its target, and an unreadable target."""
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        ip, tp = root / split / "images", root / split / kind
        ip.mkdir(parents=True)
        tp.mkdir()
        for i in range(n):
            yy, xx = np.mgrid[0:size[1], 0:size[0]]
            img = (rng.uniform(40, 200, 3)[None, None] + 30 * np.sin(xx[..., None] / 3 + yy[..., None] / (2 + i % 4)))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(ip / f"{i:03d}.png")
            if kind == "masks":
                m = rng.integers(0, 6, size[::-1]).astype(np.uint8)
                m[0, :3] = 255
                Image.fromarray(m).save(tp / f"{i:03d}.png")
            elif i % 3:
                np.save(tp / f"{i:03d}.npy", rng.uniform(0.5, 9.0, size[::-1]).astype(np.float32))
            else:
                Image.fromarray(rng.integers(0, 60000, size[::-1]).astype(np.uint16)).save(tp / f"{i:03d}.png")
        (ip / "broken.jpg").write_bytes(b"not an image")
        Image.new("RGB", size).save(ip / "orphan.png")  # no target
        Image.new("RGB", size).save(ip / "badtarget.png")
        (tp / ("badtarget.png" if kind == "masks" else "badtarget.npy")).write_bytes(b"junk")
    return root


@pytest.mark.parametrize("layout", ["segmentation", "depth"])
def test_dense_layouts_round_trip_equal_the_folder_loaders(tmp_path, layout):
    """prepare -> ShardSet.load(): the same items, targets equal exactly (stored losslessly), images
    within JPEG's error, the same files skipped (unreadable image, no target, unreadable target)."""
    kind = "masks" if layout == "segmentation" else "depth"
    root = _dense_folder(tmp_path / "d", kind)
    with pytest.warns(UserWarning, match="skipped"):
        shards.prepare_dense(root, tmp_path / "sh", layout, canvas_size=12, shard_size=7, progress=False,
                             workers=2, depth_scale=0.001)
    for split in ("train", "test"):
        with pytest.warns(UserWarning, match="skipped"):
            if layout == "segmentation":
                ref = folders.load_segmentation(str(root / split / "images"), str(root / split / "masks"), 12,
                                                progress=False)
            else:
                ref = folders.load_depth(str(root / split / "images"), str(root / split / "depth"), 12,
                                         depth_scale=0.001, progress=False)
        ds = shards.ShardSet(tmp_path / "sh", split)
        got = ds.load()
        assert len(got) == len(ref) == 30
        target = "semantic" if layout == "segmentation" else "depth"
        assert ds.targets == (target,)
        a, b = getattr(got, target), getattr(ref, target)
        assert a.dtype == b.dtype and torch.equal(a, b)
        assert torch.equal(ds.decode_target(torch.tensor([5, 2]), target), b[[5, 2]])
        err = (got.images.float() - ref.images.float()).abs()
        assert err.mean() < 2.0
        assert sorted(ds.meta["skipped"]) == sorted(ref.meta["skipped"]) and len(ref.meta["skipped"]) == 3


def test_dense_layout_size_mismatch_is_an_error_naming_both_files(tmp_path):
    root = _dense_folder(tmp_path / "d", "masks", n=3)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "train" / "masks" / "001.png")
    with pytest.raises(ValueError, match=r"001\.png.*001\.png"):
        with pytest.warns(UserWarning):
            shards.prepare_dense(root, tmp_path / "sh", "segmentation", canvas_size=8, progress=False)


def test_target_codec_is_lossless_for_every_dtype():
    rng = np.random.default_rng(0)
    for a in (rng.integers(0, 256, (9, 9)), rng.integers(0, 70000, (9, 9)), rng.integers(-3, 3, (9, 9)),
              rng.normal(size=(9, 9)).astype(np.float32)):
        back = shards.decode_target(shards.encode_target(a), 9)
        assert np.array_equal(back.numpy(), a.astype(back.numpy().dtype))
        assert back.dtype == (torch.float32 if a.dtype == np.float32 else torch.int64)


def test_partsworld_prepared_keeps_its_targets_and_meta(tmp_path):
    from spatialssl.data import partsworld

    cfg = partsworld.PartsWorldConfig(size=32, n_train=12, n_val=4, n_test=4, n_ood=4)
    cs = partsworld.render(cfg, "train", 0, 12)
    shards.prepare_canvases(cs, tmp_path / "sh", "train", shard_size=5, progress=False, workers=1)
    ds = shards.ShardSet(tmp_path / "sh", "train")
    got = ds.load()
    for t in ("depth", "semantic", "parts"):
        assert torch.equal(getattr(got, t), getattr(cs, t)), t
    assert torch.equal(got.labels, cs.labels) and torch.equal(got.fine_labels, cs.fine_labels)
    assert got.meta["far"] == cs.meta["far"] and got.meta["part_names"] == cs.meta["part_names"]


def test_cli_data_prepare_segmentation_layout(tmp_path, capsys):
    from spatialssl.cli import main

    root = _dense_folder(tmp_path / "d", "masks", n=4)
    assert main(["data", "prepare", "--layout", "segmentation", "--root", str(root), "--out", str(tmp_path / "sh"),
                 "--canvas", "8", "--threads", "1"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING spatialssl: skipped 3 unreadable file(s) preparing train" in err
    assert "train: 4 images in 1 shard(s), 3 skipped" in out and "eval.seg_root=" in out
    assert shards.ShardSet(tmp_path / "sh", "test").targets == ("semantic",)


def test_shards_use_the_folder_loaders_public_rules():
    """``prepare`` decodes, pairs and sizes by ``data.folders``' public rules (``__all__``),
    none of its private names."""
    import inspect
    import re

    from spatialssl.data import folders, shards

    code = "\n".join(line.split("#")[0] for line in inspect.getsource(shards).splitlines())  # comments aside
    used = set(re.findall(r"\bfolders\.(\w+)", code))
    assert used and not [n for n in used if n.startswith("_")], used
    assert used - {"DEFAULT_MAX_PIXELS"} <= set(folders.__all__)


# --------------------------------------------------------------------------- data.decode=gpu (nvJPEG)


def _smooth_shards(root, n=40, size=32, quality=95):
    """``n`` smooth, distinct canvases (JPEG's and the decoders' differences are small on them,
    as on photos) prepared as shards of 7."""
    from spatialssl.data.canvases import CanvasSet

    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    imgs = torch.stack([torch.stack([128 + 60 * torch.sin(xx / (2 + (i + c) % 5) + yy / (3 + c) + i)
                                     for c in range(3)]) for i in range(n)]).round().to(torch.uint8)
    shards.prepare_canvases(CanvasSet(imgs), root, "train", shard_size=7, quality=quality, progress=False)
    return shards.ShardSet(root, "train")


def _shuffled_index(n, batch):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))  # batches straddle shards, out of order
    return lambda s: perm[(torch.arange(batch) + s * batch) % n]


@pytest.mark.parametrize("workers", [0, 2])
def test_gpu_decode_path_passes_bytes_and_equals_the_cpu_path(tmp_path, monkeypatch, workers):
    """``data.decode=gpu`` without a GPU: a stand-in for the nvJPEG call (``nvjpeg_decode``)
    decodes on the CPU, so the rest of the path -- the workers passing each batch's JPEG bytes,
    the decode in this process, order and stacking -- must give exactly the CPU path's
    batches. Plant: the batch's images reversed before stacking in ``decode_canvases``'s
    device branch -> fails."""
    import os

    from torchvision.io import decode_jpeg

    ds = _smooth_shards(tmp_path / "sh")
    index = _shuffled_index(len(ds), 8)
    calls = []

    def stand_in(data, device):
        calls.append((os.getpid(), device, len(data)))
        assert isinstance(data, list) and all(t.dtype == torch.uint8 and t.ndim == 1 and t.device.type == "cpu"
                                              for t in data)  # the JPEG bytes, not decoded canvases
        return decode_jpeg(data)

    monkeypatch.setattr(shards, "nvjpeg_decode", stand_in)
    cpu = list(shards.stream_batches(ds, index, 0, 7, workers=workers, prefetch=1))
    dev = torch.device("cuda", 0)
    gpu = list(shards.stream_batches(ds, index, 0, 7, workers=workers, prefetch=1, decode_device=dev))
    assert calls == [(os.getpid(), dev, 8)] * 7  # decoded in this process, one call per batch
    assert len(gpu) == len(cpu) == 7
    for s, (a, b) in enumerate(zip(cpu, gpu)):
        assert a.shape == b.shape == (8, 3, 32, 32) and b.dtype == torch.uint8
        assert torch.equal(a, b), f"batch {s} differs"
    assert torch.equal(gpu[2], ds.decode(index(2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG)")
@pytest.mark.parametrize("workers", [0, 2])
def test_nvjpeg_batches_equal_the_cpu_decode(tmp_path, workers):
    """On a GPU: ``data.decode=gpu`` batches (nvJPEG) equal the CPU decode (libjpeg) within
    mean |diff| < 1 level and max |diff| <= 16 levels of 255 (the two decoders' IDCT and
    chroma upsampling may differ by a few levels; the tolerance is not yet measured on a GPU).
    Stream ordering: before each decode, work that reads and then writes a just-freed block
    is queued behind a busy kernel on the current stream; had the decoder's outputs been
    allocated from that stream's pool and written on another stream, they would be
    overwritten (by +1) after the decode."""
    ds = _smooth_shards(tmp_path / "sh", size=64)
    index = _shuffled_index(len(ds), 8)
    dev = torch.device("cuda", torch.cuda.current_device())
    cpu = list(shards.stream_batches(ds, index, 0, 6, workers=workers, prefetch=1))
    got = []
    for b in shards.stream_batches(ds, index, 0, 6, workers=workers, prefetch=1, decode_device=dev):
        got.append(b)
        x = torch.zeros(3 * 64 * 64, dtype=torch.uint8, device=dev)
        torch.cuda._sleep(50_000_000)  # a busy kernel on the current stream
        x.add_(1)  # queued behind it
        del x  # the block goes back to the current stream's pool while its work is queued
    torch.cuda.synchronize()
    for a, b in zip(cpu, got):
        assert b.device == dev and b.dtype == torch.uint8 and b.shape == a.shape == (8, 3, 64, 64)
        d = (a.float() - b.cpu().float()).abs()
        assert d.mean() < 1.0 and d.max() <= 16, (float(d.mean()), float(d.max()))


def test_decode_key_is_validated():
    from spatialssl import config

    with pytest.raises(config.ConfigError, match=r"'data\.decode' must be one of cpu, gpu; got 'nvjpeg'"):
        config.resolve([], ["data.decode=nvjpeg"])
    assert config.resolve([], [])["data"]["decode"] == "cpu"


@pytest.mark.parametrize("device, why", [("cpu", "trains on cpu|no CUDA device"), ("auto", "no CUDA device")])
def test_gpu_decode_without_cuda_is_an_error_at_start(tmp_path, monkeypatch, tiny_overrides, device, why):
    """``data.decode=gpu`` on a CPU run (or with no CUDA device) stops before anything is set up,
    naming the key and why; no silent CPU fallback."""
    from spatialssl import config
    from spatialssl.engine import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = config.resolve([], [*tiny_overrides, "data.decode=gpu", f"device={device}", f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(config.ConfigError, match=rf"'data\.decode' is 'gpu'.*({why}).*data\.decode=cpu"):
        trainer.pretrain(cfg)
    assert not (tmp_path / "run").exists()


def test_prepare_warns_of_an_empty_class_folder(tmp_path):
    """(issue 28) a class folder with no image keeps its label id; data prepare says so."""
    import warnings

    import numpy as np
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "src" / "train" / c).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / "src" / "train" / "a" / f"{i}.png")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        shards.prepare_folder(tmp_path / "src", tmp_path / "out", canvas_size=16, progress=False)
    assert any("train/b" in str(x.message) and "hold no image" in str(x.message) for x in w)
