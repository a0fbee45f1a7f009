"""PartsWorld: geometry, masks, determinism, cache, categories (small sizes, CPU)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from spatialssl.data import partsworld as pw

SIZE = 33  # odd: the centre pixel's ray is exactly the optical axis


def _centre_depth(prims, cam, target) -> tuple[float, dict]:
    out = pw.trace(pw.make_scene(prims, cam, target), SIZE, far=50.0)
    c = SIZE // 2
    return float(out["depth"][0, c, c]), out


def test_sphere_depth_is_distance_minus_radius():
    sphere = pw.prim_row(pw.ELLIPSOID, (0.3, 1.0, -0.2), (0.5, 0.5, 0.5), part=1, sem=1)
    cam = (2.0, 2.5, 4.0)
    d, out = _centre_depth([sphere], cam, (0.3, 1.0, -0.2))
    dist = math.dist(cam, (0.3, 1.0, -0.2))
    assert d == pytest.approx(dist - 0.5, abs=1e-4)
    c = SIZE // 2
    assert out["semantic"][0, c, c] == 1 and out["parts"][0, c, c] == 1


def test_box_cylinder_cone_depths():
    cam = (0.0, 1.0, 5.0)
    # box rotated 45 degrees about y: its vertical edge points at the camera
    box = pw.prim_row(pw.BOX, (0, 1, 0), (0.4, 0.4, 0.4), pw._ry(math.pi / 4), part=1, sem=1)
    assert _centre_depth([box], cam, (0, 1, 0))[0] == pytest.approx(5 - 0.4 * math.sqrt(2), abs=1e-4)
    # upright cylinder: the side is r from the axis
    cyl = pw.prim_row(pw.FRUSTUM, (0, 1, 0), (0.3, 0.3, 0.5), part=1, sem=1)
    assert _centre_depth([cyl], cam, (0, 1, 0))[0] == pytest.approx(5 - 0.3, abs=1e-4)
    # cone lying along +z, apex towards the camera: hit at the apex
    cone = pw.prim_row(pw.FRUSTUM, (0, 1, 0), (0.3, 0.0, 0.6), pw._AX_Z, part=1, sem=1)
    assert _centre_depth([cone], cam, (0, 1, 0))[0] == pytest.approx(5 - 0.6, abs=2e-3)
    # same cone reversed (base towards the camera): hit on the flat cap
    cone_b = pw.prim_row(pw.FRUSTUM, (0, 1, 0), (0.3, 0.0, 0.6), pw._rx(-math.pi / 2), part=1, sem=1)
    assert _centre_depth([cone_b], cam, (0, 1, 0))[0] == pytest.approx(5 - 0.6, abs=1e-4)


def test_ground_depth_and_sky():
    out = pw.trace(pw.make_scene([], (0.0, 2.0, 0.0), (0.0, 0.0, -4.0), fov_deg=80), SIZE, far=20.0)
    c = SIZE // 2
    # centre ray hits the ground at (0, 0, -4): camera z = distance along the axis
    assert float(out["depth"][0, c, c]) == pytest.approx(math.hypot(2.0, 4.0), abs=1e-3)
    assert float(out["depth"][0, 0, c]) == 20.0  # top row: sky at the far value
    assert int(out["semantic"].max()) == 0 and int(out["parts"].max()) == 0


def test_hidden_part_leaves_no_pixel():
    cam, target = (0.0, 1.0, 5.0), (0.0, 1.0, 0.0)
    wall = pw.prim_row(pw.BOX, (0, 1, 1), (0.6, 0.6, 0.1), part=1, sem=1)
    ball = pw.prim_row(pw.ELLIPSOID, (0, 1, 0), (0.3, 0.3, 0.3), part=2, sem=1)
    out = pw.trace(pw.make_scene([wall, ball], cam, target), SIZE, far=50.0)
    assert (out["parts"] == 1).any() and not (out["parts"] == 2).any()
    # control: the same ball moved beside the wall is visible
    ball2 = pw.prim_row(pw.ELLIPSOID, (1.2, 1, 0), (0.3, 0.3, 0.3), part=2, sem=1)
    out = pw.trace(pw.make_scene([wall, ball2], cam, target), SIZE, far=50.0)
    assert (out["parts"] == 2).any()


def test_shadow_darkens_ground_under_object():
    cam, target = (0.0, 3.0, 4.0), (0.0, 0.0, 0.0)
    ball = pw.prim_row(pw.ELLIPSOID, (0, 1.0, 0), (0.5, 0.5, 0.5), part=1, sem=1)
    kw = dict(light_dir=(0.0, 1.0, 0.0), tex_a=(0.5, 0.5, 0.5), tex_b=(0.5, 0.5, 0.5))
    lit = pw.trace(pw.make_scene([ball], cam, target, **kw), SIZE, 50.0, shadows=False)["rgb"]
    sh = pw.trace(pw.make_scene([ball], cam, target, **kw), SIZE, 50.0, shadows=True)["rgb"]
    # the ground right below the ball (projected near the image centre, below the ball) is darker
    diff = (lit - sh).sum(1)[0]
    assert float(diff.max()) > 0.2 and float(diff.min()) >= -1e-5


def _small(**kw) -> pw.PartsWorldConfig:
    base = dict(size=24, n_train=12, n_val=4, n_test=4, n_ood=8, chunk=8)
    base.update(kw)
    return pw.PartsWorldConfig(**base)


def test_masks_agree_with_depth_and_geometry():
    cfg = pw.PartsWorldConfig(size=32, distractors=0)
    sc, _, _ = pw.sample_scenes(cfg, "train", 0, 20)
    out = pw.trace(sc, cfg.size, cfg.far)
    depth, sem, parts = out["depth"], out["semantic"], out["parts"]
    obj = sem > 0
    assert torch.equal(obj, parts > 0)
    assert (depth[obj] < cfg.far).all()
    assert (out["prim"][obj] >= 0).all() and (out["prim"][~obj] == -1).all()
    # back-project: background pixels with finite depth lie on the ground plane y = 0,
    # object pixels lie above it
    lin = (torch.arange(32) + 0.5) / 32 * 2 - 1
    py, px = torch.meshgrid(-lin, lin, indexing="ij")
    th = sc.tan_half_fov.view(-1, 1, 1, 1)
    d = sc.cam_fwd.view(-1, 1, 1, 3) + px[..., None] * th * sc.cam_right.view(-1, 1, 1, 3) \
        + py[..., None] * th * sc.cam_up.view(-1, 1, 1, 3)
    d_unit = d / d.norm(dim=-1, keepdim=True)
    t = depth / (d_unit * sc.cam_fwd.view(-1, 1, 1, 3)).sum(-1)
    y = sc.cam_pos[:, 1].view(-1, 1, 1) + t * d_unit[..., 1]
    ground = (~obj) & (depth < cfg.far)
    assert ground.any()
    assert y[ground].abs().max() < 1e-2
    assert y[obj].min() > -1e-2
    # parts belong to the image's category
    for i in range(20):
        names = {pw.PART_NAMES[p].split("/")[0] for p in parts[i].unique().tolist() if p > 0}
        cats = {pw.CATEGORIES[s - 1] for s in sem[i].unique().tolist() if s > 0}
        assert names == cats and len(cats) == 1


def test_every_category_renders_a_large_object():
    cfg = pw.PartsWorldConfig(size=32)
    nf = len(pw.FINE_NAMES)
    cs = pw.render(cfg, "train", 0, 2 * nf)
    assert len(pw.CATEGORIES) >= 10 and nf == len(pw.CATEGORIES) * pw.VARIANTS and pw.VARIANTS >= 4
    for i in range(len(cs)):
        m = cs.semantic[i] > 0
        assert set(cs.semantic[i][m].unique().tolist()) == {int(cs.labels[i]) + 1}
        frac = m.float().mean().item()
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        extent = max(int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)) / cfg.size
        assert frac > 0.02, (cs.fine_names[int(cs.fine_labels[i])], frac)
        assert 0.3 < extent <= 1.0, (cs.fine_names[int(cs.fine_labels[i])], extent)
    counts = torch.bincount(cs.labels, minlength=len(pw.CATEGORIES))
    assert (counts > 0).all()


def test_labels_shapes_and_fine_consistency():
    cfg = _small()
    cs = pw.render(cfg, "ood", 0, 8)
    s = cfg.size
    assert cs.images.dtype == torch.uint8 and cs.images.shape == (8, 3, s, s)
    assert cs.depth.dtype == torch.float32 and cs.depth.shape == (8, s, s)
    assert cs.semantic.dtype == torch.int64 and cs.parts.dtype == torch.int64
    assert cs.labels.dtype == torch.int64 and cs.fine_labels.dtype == torch.int64
    assert torch.equal(cs.fine_labels // pw.VARIANTS, cs.labels)
    for lab, fl in zip(cs.labels.tolist(), cs.fine_labels.tolist()):
        assert cs.fine_names[fl].split("/")[0] == cs.class_names[lab]
    assert cs.meta["far"] == cfg.far and cs.meta["part_names"][0] == "background"
    # ood looks different from train for the same indices
    tr = pw.render(cfg, "train", 0, 8)
    assert torch.equal(tr.labels, cs.labels) and not torch.equal(tr.images, cs.images)


def test_determinism_and_chunk_independence():
    cfg = _small()
    a = pw.render(cfg, "train", 0, 12)
    b = pw.render(cfg, "train", 0, 12)
    for k in ("images", "depth", "semantic", "parts", "labels", "fine_labels"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    c = pw.render(cfg, "train", 5, 3)  # other chunking, other padding
    assert torch.equal(a.depth[5:8], c.depth) and torch.equal(a.parts[5:8], c.parts)
    assert (a.images[5:8].int() - c.images.int()).abs().max() <= 1
    other = pw.render(_small(seed=1), "train", 0, 12)
    assert not torch.equal(a.images, other.images)


def test_cache_roundtrip_key_and_corruption(tmp_path, monkeypatch):
    cfg = _small()
    assert cfg.key() != _small(size=32).key() != _small(seed=3).key()
    assert pw.cache_path("test", cfg, str(tmp_path)) != pw.cache_path("test", _small(shadows=False), str(tmp_path))
    first = pw.load("test", cfg, cache_dir=str(tmp_path), progress=False)
    path = pw.cache_path("test", cfg, str(tmp_path))
    assert os.path.exists(path) and first.meta["cache_file"] == path
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tmp")]

    calls = []
    real = pw._render_arrays
    monkeypatch.setattr(pw, "_render_arrays", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = pw.load("test", cfg, cache_dir=str(tmp_path), progress=False)
    assert not calls and torch.equal(again.images, first.images) and torch.equal(again.depth, first.depth)

    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0xFF  # flip a byte inside the arrays
    open(path, "wb").write(bytes(raw))
    with pytest.warns(RuntimeWarning, match="corrupt or partial"):
        fixed = pw.load("test", cfg, cache_dir=str(tmp_path), progress=False)
    assert calls == [1] and torch.equal(fixed.images, first.images)

    open(path, "wb").write(bytes(raw[: len(raw) // 3]))  # truncated file
    with pytest.warns(RuntimeWarning, match="corrupt or partial"):
        fixed = pw.load("test", cfg, cache_dir=str(tmp_path), progress=False)
    assert calls == [1, 1] and torch.equal(fixed.parts, first.parts)
    # and the regenerated file is valid again
    pw.load("test", cfg, cache_dir=str(tmp_path), progress=False)
    assert calls == [1, 1]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SPATIALSSL_CACHE", str(tmp_path))
    assert pw.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("SPATIALSSL_CACHE")
    assert pw.default_cache_dir().endswith(os.path.join(".cache", "spatialssl"))


def test_preview_writes_png(tmp_path):
    out = pw.preview(str(tmp_path / "p.png"), _small(size=16), split="val", n=3, cache_dir=str(tmp_path))
    data = open(out, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    cfg = _small()
    a = pw.render(cfg, "train", 0, 8)
    b = pw.render(cfg, "train", 0, 8, device="cuda")
    assert torch.equal(a.labels, b.labels)
    assert (a.semantic != b.semantic).float().mean() < 0.01
    assert (a.images.int() - b.images.int()).abs().float().mean() < 1.0
    near = a.depth < cfg.far
    assert ((a.depth - b.depth)[near].abs() < 1e-2).float().mean() > 0.99


def test_cache_key_follows_the_generator_source(monkeypatch):
    """An edit to any file of the generator changes the cache key: no stale images from an older one."""
    import hashlib
    from pathlib import Path

    files = sorted(Path(pw.__file__).parent.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "render.py", "scene.py", "templates.py", "sampling.py"}
    src_hash = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:12]
    assert src_hash in pw.GENERATOR_VERSION
    cfg = pw.PartsWorldConfig(size=16, n_train=4)
    before = cfg.key()
    monkeypatch.setattr(pw.spec, "GENERATOR_VERSION", "partsworld-3+edited")
    assert cfg.key() != before


def test_data_distractors_and_fill_reach_the_generator():
    """``data.distractors`` and ``data.fill`` (config) set PartsWorld's distractor count and the
    object's share of the frame, and so its cache key; the defaults keep the key of the data sets
    rendered before the keys existed."""
    from spatialssl import config
    from spatialssl.data import partsworld_config

    default = partsworld_config(config.resolve(["demo"], [])["data"])
    none = partsworld_config(config.resolve(["demo"], ["data.distractors=0"])["data"])
    big = partsworld_config(config.resolve(["demo"], ["data.fill=[1.0,1.4]"])["data"])
    assert default.distractors == 2 and none.distractors == 0
    high = partsworld_config(config.resolve(["demo"], ["data.elevation=[25,60]"])["data"])
    assert (big.fill_min, big.fill_max) == (1.0, 1.4) and big.distractors == 2
    assert (high.elev_min_deg, high.elev_max_deg) == (25.0, 60.0) and high.key() != default.key()
    assert default.key() == pw.PartsWorldConfig(size=64, n_train=6000, n_val=1000, n_test=1000, n_ood=1000).key()
    assert none.key() != default.key() and big.key() != default.key()
    with pytest.raises(config.ConfigError, match="data.distractors"):
        config.resolve(["demo"], ["data.distractors=-1"])
    for bad in ("[0.0,1.0]", "[1.2,1.0]", "[1.0,5.0]"):
        with pytest.raises(config.ConfigError, match="data.fill"):
            config.resolve(["demo"], [f"data.fill={bad}"])
    for bad in ("[-1,10]", "[40,20]", "[10,90]"):
        with pytest.raises(config.ConfigError, match="data.elevation"):
            config.resolve(["demo"], [f"data.elevation={bad}"])


def test_a_larger_fill_renders_a_larger_object():
    """``fill`` brings the camera closer: the object covers more of the image."""
    small = pw.render(pw.PartsWorldConfig(size=32, n_train=8, distractors=0), "train", 0, 8)
    big = pw.render(pw.PartsWorldConfig(size=32, n_train=8, distractors=0, fill_min=1.2, fill_max=1.4), "train", 0, 8)
    assert (big.semantic > 0).float().mean() > 1.5 * (small.semantic > 0).float().mean()


def test_grey_background_keeps_only_the_object(tmp_path):
    """``data.background=grey``: every pixel off the object is mid grey, the object's pixels,
    masks, depth and labels are the rendered scene's."""
    from spatialssl import config
    from spatialssl.data import load_split

    over = ["data.canvas_size=16", "data.n_train=8", "data.n_eval=8", f"data.cache_dir={tmp_path}"]
    scene = load_split(config.resolve(["demo"], over)["data"], "val")
    grey = load_split(config.resolve(["demo"], [*over, "data.background=grey"])["data"], "val")
    obj = (scene.semantic > 0)[:, None].expand_as(scene.images)
    assert (grey.images[~obj] == 128).all() and (grey.images[obj] == scene.images[obj]).all()
    assert (scene.images[~obj] != 128).float().mean() > 0.5  # the scene's background is not grey
    assert torch.equal(grey.depth, scene.depth) and torch.equal(grey.labels, scene.labels)
    with pytest.raises(config.ConfigError, match="data.background"):
        config.resolve(["demo"], ["data.background=black"])
