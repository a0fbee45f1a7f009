"""Folder loaders on small fixture folders with bad files in them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from spatialssl.data.folders import load_classification, load_depth, load_segmentation, load_unlabelled


def _img(path, w=40, h=30, color=(200, 30, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = color
    a[: h // 2, : w // 2] = 255 - np.array(color, np.uint8)  # a corner so crops are checkable
    Image.fromarray(a).save(path, format=fmt)
    return path


def _truncated_jpeg(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    bad = [_truncated_jpeg(folder / "trunc.jpg")]
    (folder / "x.jpg").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    bad += [folder / "x.jpg", folder / "empty.png"]
    (folder / "notes.txt").write_text("ignored: not an image extension")
    _img(folder / ".hidden.png")  # hidden: ignored
    return bad


def _skip_messages(rec):
    return [str(w.message) for w in rec if "spatialssl: skipped unreadable image" in str(w.message)]


@pytest.fixture
def cls_root(tmp_path):
    root = tmp_path / "cls"
    _img(root / "cat" / "a.png", color=(250, 0, 0))
    _img(root / "cat" / "b.jpg", color=(240, 10, 10))
    _img(root / "cat" / "sub" / "c.PNG", w=30, h=50, color=(230, 0, 0))
    _img(root / "dog" / "d.png", color=(0, 0, 250))
    _img(root / "ant" / "e.bmp", w=64, h=64, color=(0, 250, 0), fmt="BMP")
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(root / "ant" / "grey.png")  # grey -> RGB
    Image.fromarray(np.full((20, 20, 4), 60, np.uint8)).save(root / "ant" / "rgba.png")  # alpha dropped
    bad = _bad_files(root / "dog")
    return root, bad


def test_classification_counts_labels_shapes(cls_root):
    root, bad = cls_root
    with pytest.warns(UserWarning) as rec:
        ds = load_classification(str(root), canvas_size=32, progress=False)
    assert ds.class_names == ["ant", "cat", "dog"]
    assert len(ds) == 7
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (7, 3, 32, 32)
    assert ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2]  # sorted paths within each class
    assert sorted(ds.meta["skipped"]) == sorted(str(p) for p in bad)
    msgs = _skip_messages(rec)
    for p in bad:  # each bad file named in a warning
        assert any(str(p) in m for m in msgs), (p, msgs)
    assert ds.meta["class_counts"] == {"ant": 3, "cat": 3, "dog": 1}
    # content: the red class stays red after decode/resize/crop
    cat = ds.images[ds.labels == 1].float()
    assert (cat[:, 0].mean() > 150) and (cat[:, 2].mean() < 150)
    grey = ds.images[1]  # ant/grey.png
    assert (grey == 128).all()


def test_classification_raise_names_file(cls_root):
    root, bad = cls_root
    with pytest.raises(ValueError) as e:
        load_classification(str(root), canvas_size=16, on_error="raise", progress=False)
    assert any(str(p) in str(e.value) for p in bad)


def test_canvas_resize_is_shorter_side_then_centre_crop(tmp_path):
    # 80x40 image: left half white, right half black -> shorter side 40->20, width 80->40,
    # centre crop [10:30] of the width keeps 10 white columns and 10 black.
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = 255
    (tmp_path / "u").mkdir()
    Image.fromarray(a).save(tmp_path / "u" / "wide.png")
    ds = load_unlabelled(str(tmp_path / "u"), canvas_size=20, progress=False)
    img = ds.images[0, 0].float()
    assert img.shape == (20, 20)
    assert img[:, :9].min() > 250 and img[:, 11:].max() < 5
    assert ds.labels is None


def test_unlabelled_recursive_and_skips(tmp_path):
    root = tmp_path / "u"
    _img(root / "a.png")
    _img(root / "deep" / "deeper" / "b.jpeg")
    bad = _bad_files(root / "deep")
    with pytest.warns(UserWarning):
        ds = load_unlabelled(str(root), canvas_size=24, progress=False)
    assert len(ds) == 2 and ds.images.shape == (2, 3, 24, 24)
    assert len(ds.meta["skipped"]) == len(bad)
    assert ds.meta["files"] == [str(root / "a.png"), str(root / "deep" / "deeper" / "b.jpeg")]


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_unlabelled(str(tmp_path / "nope"), progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="empty"):
        load_unlabelled(str(tmp_path / "empty"), progress=False)
    only_bad = tmp_path / "bad"
    _bad_files(only_bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"no readable image in .*bad"):
            load_unlabelled(str(only_bad), progress=False)
    (tmp_path / "cls" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="cls"):
        load_classification(str(tmp_path / "cls"), progress=False)
    with pytest.raises(ValueError, match="on_error"):
        load_unlabelled(str(tmp_path / "empty"), on_error="ignore", progress=False)


def test_deterministic_order_with_threads(tmp_path):
    root = tmp_path / "many"
    rng = np.random.default_rng(1)
    for i in range(40):
        _img(root / f"{i:03d}.png", color=tuple(int(v) for v in rng.integers(0, 255, 3)))
    a = load_unlabelled(str(root), canvas_size=8, progress=False)
    b = load_unlabelled(str(root), canvas_size=8, progress=False)
    assert torch.equal(a.images, b.images)
    assert a.meta["files"] == sorted(a.meta["files"])


# --------------------------------------------------------------------------- segmentation


def _mask(path, w=40, h=30, fill=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.full((h, w), fill, np.uint8)
    m[: h // 2, : w // 2] = 3  # class 3 in the top-left corner, as in _img
    Image.fromarray(m).save(path)
    return path


def test_segmentation(tmp_path):
    im, mk = tmp_path / "images", tmp_path / "masks"
    _img(im / "a.png")
    _img(im / "b.jpg")
    _mask(mk / "a.png")
    _mask(mk / "b.png", fill=1)
    _img(im / "nomask.png")  # no mask: skipped and counted
    _truncated_jpeg(im / "t.jpg")
    _mask(mk / "t.png")
    (im / "x.jpg").write_text("not an image")
    _mask(mk / "x.png")
    # a palette mask is read as its indices
    _img(im / "p.png")
    pm = Image.fromarray(np.full((30, 40), 2, np.uint8)).convert("P")
    pm.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    pm.save(mk / "p.png")
    with pytest.warns(UserWarning) as rec:
        ds = load_segmentation(str(im), str(mk), canvas_size=20, progress=False)
    assert ds.labels is None
    assert len(ds) == 3 and ds.images.shape == (3, 3, 20, 20)
    assert ds.semantic.dtype == torch.int64 and ds.semantic.shape == (3, 20, 20)
    assert set(ds.semantic.unique().tolist()) == {0, 1, 2, 3}
    assert sorted(ds.meta["skipped"]) == sorted(str(im / n) for n in ("nomask.png", "t.jpg", "x.jpg"))
    assert any(str(im / "nomask.png") in str(w.message) for w in rec)
    # nearest resize + identical crop: the mask corner matches the image corner
    corner_img = ds.images[0, 0] < 128  # _img's inverted corner has red channel 55
    corner_mask = ds.semantic[0] == 3
    assert (corner_img == corner_mask).float().mean() > 0.9
    # raise mode names the image without a mask
    with pytest.raises(ValueError, match="nomask.png"):
        load_segmentation(str(im), str(mk), canvas_size=20, on_error="raise", progress=False)


def test_segmentation_wrong_size_mask_names_both(tmp_path):
    im, mk = tmp_path / "images", tmp_path / "masks"
    _img(im / "a.png")
    _mask(mk / "a.png")
    _img(im / "b.png", w=40, h=30)
    _mask(mk / "b.png", w=41, h=30)
    with pytest.raises(ValueError) as e:
        load_segmentation(str(im), str(mk), canvas_size=16, progress=False)
    assert str(im / "b.png") in str(e.value) and str(mk / "b.png") in str(e.value)


def test_segmentation_rgb_mask_skipped(tmp_path):
    im, mk = tmp_path / "images", tmp_path / "masks"
    _img(im / "a.png")
    _mask(mk / "a.png")
    _img(im / "b.png")
    _img(mk / "b.png")  # an RGB "mask": class ids are ambiguous
    with pytest.warns(UserWarning, match="single-channel"):
        ds = load_segmentation(str(im), str(mk), canvas_size=16, progress=False)
    assert len(ds) == 1 and ds.meta["skipped"] == [str(mk / "b.png")]


# --------------------------------------------------------------------------- depth


def test_depth_png16_and_npy(tmp_path):
    im, dp = tmp_path / "images", tmp_path / "depth"
    _img(im / "a.png", w=40, h=30)
    _img(im / "b.jpg", w=40, h=30)
    _img(im / "c.png", w=40, h=30)
    dp.mkdir()
    d16 = np.full((30, 40), 1000, np.uint16)
    d16[:, 20:] = 3000
    Image.fromarray(d16).save(dp / "a.png")  # saved as 16-bit (mode I;16)
    assert Image.open(dp / "a.png").mode.startswith("I")
    np.save(dp / "b.npy", np.full((30, 40), 2.5, np.float32))
    np.save(dp / "c.npy", np.zeros((31, 40), np.float32))  # wrong size
    with pytest.raises(ValueError) as e:
        load_depth(str(im), str(dp), canvas_size=16, depth_scale=0.001, progress=False)
    assert str(dp / "c.npy") in str(e.value) and str(im / "c.png") in str(e.value)
    (dp / "c.npy").unlink()
    (dp / "c.npy").write_bytes(b"garbage")  # unreadable depth: its image is skipped
    with pytest.warns(UserWarning, match="c.npy"):
        ds = load_depth(str(im), str(dp), canvas_size=16, depth_scale=0.001, progress=False)
    assert len(ds) == 2 and ds.depth.dtype == torch.float32 and ds.depth.shape == (2, 16, 16)
    a, b = ds.depth
    assert set(np.round(a.unique().numpy(), 4).tolist()) == {1.0, 3.0}
    assert torch.allclose(b, torch.full_like(b, 2.5))
    assert ds.labels is None and ds.meta["depth_scale"] == 0.001
    with pytest.raises(ValueError, match="c.npy"):
        load_depth(str(im), str(dp), canvas_size=16, on_error="raise", progress=False)


def test_depth_missing_file(tmp_path):
    im, dp = tmp_path / "images", tmp_path / "depth"
    _img(im / "a.png")
    dp.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="depth"):
            load_depth(str(im), str(dp), progress=False)
    with pytest.raises(ValueError, match="a.png"):
        load_depth(str(im), str(dp), on_error="raise", progress=False)


# --------------------------------------------------------------------------- splits, links, sizes (issue 11)


def _split_root(tmp_path):
    root = tmp_path / "ds"
    for c, color in (("cat", (250, 0, 0)), ("dog", (0, 250, 0)), ("emu", (0, 0, 250))):
        for i in range(2):
            _img(root / "train" / c / f"{i}.png", color=color)
    (root / "train" / "zzz_empty").mkdir()
    for c, color in (("dog", (0, 250, 0)), ("emu", (0, 0, 250))):
        _img(root / "test" / c / "0.png", color=color)
    return root


def test_every_split_is_labelled_by_train_class_names(tmp_path):
    """A test split lacking train's classes keeps train's ids: labels by name, not by position."""
    from spatialssl.data import load_split

    root = _split_root(tmp_path)
    cfg = {"name": "folder", "root": str(root), "canvas_size": 8, "on_error": "skip"}
    with pytest.warns(UserWarning, match="zzz_empty"):
        train = load_split(cfg, "train", progress=False)
    assert train.class_names == ["cat", "dog", "emu", "zzz_empty"]
    with pytest.warns(UserWarning, match=r"no folder for the train class\(es\) cat, zzz_empty"):
        test = load_split(cfg, "test", progress=False)
    assert test.class_names == train.class_names
    assert test.labels.tolist() == [1, 2]  # dog, emu as in train (not 0, 1)
    # a class the train split does not have is an error naming it
    _img(root / "test" / "yak" / "0.png")
    with pytest.raises(ValueError, match=r"class folder\(s\) yak in .*test are not classes of the train split"):
        load_split(cfg, "test", progress=False)


def test_root_as_train_split_does_not_take_split_folders_as_classes(tmp_path):
    from spatialssl.data import load_split

    root = tmp_path / "flat"
    _img(root / "cat" / "0.png")
    _img(root / "dog" / "0.png")
    _img(root / "test" / "dog" / "0.png")
    cfg = {"name": "folder", "root": str(root), "canvas_size": 8, "on_error": "skip"}
    assert load_split(cfg, "train", progress=False).class_names == ["cat", "dog"]
    with pytest.warns(UserWarning, match="cat"):
        assert load_split(cfg, "test", progress=False).labels.tolist() == [1]


def test_symlink_loop_is_walked_once(tmp_path):
    root = tmp_path / "cls"
    _img(root / "cat" / "a.png")
    _img(root / "cat" / "deep" / "b.png")
    _img(root / "dog" / "c.png")
    (root / "cat" / "loopdir").symlink_to("..")  # -> root: a loop through every class
    (root / "cat" / "deep" / "up").symlink_to("..")  # -> cat: a loop inside the class
    (root / "dog" / "cats").symlink_to("../cat")  # another class's folder: would label cats "dog"
    with pytest.warns(UserWarning) as rec:
        ds = load_classification(str(root), canvas_size=8, progress=False)
    assert len(ds) == 3 and ds.labels.tolist() == [0, 0, 1]
    msgs = [str(w.message) for w in rec]
    for link in (root / "cat" / "loopdir", root / "cat" / "deep" / "up", root / "dog" / "cats"):
        assert any("skipped symlink" in m and str(link) in m for m in msgs), (link, msgs)
    # a link to a folder outside the data set is followed (once)
    _img(tmp_path / "elsewhere" / "d.png")
    (root / "dog" / "more").symlink_to(tmp_path / "elsewhere")
    with pytest.warns(UserWarning):
        assert len(load_classification(str(root), canvas_size=8, progress=False)) == 4


def test_images_above_the_pixel_budget_are_refused_before_decoding(tmp_path, monkeypatch):
    root = tmp_path / "u"
    _img(root / "a.png")
    Image.new("1", (3000, 2000)).save(root / "huge.png")  # 6 MP in a few hundred bytes
    decoded = []
    real_load = Image.Image.load

    def spy(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    with pytest.warns(UserWarning, match=r"huge.png \(3000x2000 pixels .* more than data.max_pixels=1000000"):
        ds = load_unlabelled(str(root), canvas_size=8, progress=False, max_pixels=1_000_000)
    assert len(ds) == 1 and ds.meta["skipped"] == [str(root / "huge.png")]
    assert (3000, 2000) not in decoded  # refused from the header, never decoded
    assert len(load_unlabelled(str(root), canvas_size=8, progress=False, max_pixels=0)) == 2  # 0 = no limit
    with pytest.raises(ValueError, match="huge.png"):
        load_unlabelled(str(root), canvas_size=8, progress=False, max_pixels=1_000_000, on_error="raise")


def test_float_tiff_in_unit_range_is_not_black(tmp_path):
    root = tmp_path / "u"
    root.mkdir()
    a = np.full((20, 20), 0.5, np.float32)
    Image.fromarray(a, mode="F").save(root / "half.tif")
    Image.fromarray(np.full((20, 20), 200.0, np.float32), mode="F").save(root / "bytes.tif")
    ds = load_unlabelled(str(root), canvas_size=8, progress=False)
    assert Image.open(root / "half.tif").mode == "F"
    assert ds.images[0].float().mean() == pytest.approx(200, abs=1)  # bytes.tif: 0..255 floats kept
    assert ds.images[1].float().mean() == pytest.approx(128, abs=1)  # half.tif: 0.5 of [0, 1] -> 128
