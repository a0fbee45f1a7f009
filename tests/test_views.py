import pytest
import torch
import torchvision.transforms.v2.functional as TF

from spatialssl import config, geometry
from spatialssl.views import MultiCrop, cut, normalize


def _canvases(b=4, h=48, w=48):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("left,top,width,height,size", [
    (5, 7, 16, 12, 24),   # enlarged 1.5-2x
    (3, 2, 40, 44, 17),   # shrunk 2.4-2.6x
    (0, 0, 60, 50, 20),   # the whole canvas, shrunk
    (10, 20, 13, 13, 13),  # 1:1
])
def test_cut_equals_torchvision_antialiased_resized_crop(left, top, width, height, size):
    """On integer boxes ``cut`` is torchvision's crop-then-resize with antialias=True (PIL's
    bilinear), enlarging or shrinking, edges included."""
    x = torch.rand(2, 3, 50, 60, generator=torch.Generator().manual_seed(0)) * 255
    box = torch.tensor([[left, top, left + width, top + height]], dtype=torch.float32)
    ours = cut(x[1:], box, size)
    ref = TF.resized_crop(x[1:], top=top, left=left, height=height, width=width, size=[size, size], antialias=True)
    assert (ours - ref).abs().max() < 1e-3


def test_cut_reads_only_pixels_inside_the_box():
    """A view depends on no canvas pixel whose centre lies outside its (fractional) box, so
    two boxes any gap apart share no pixel."""
    x = torch.rand(1, 3, 40, 40, requires_grad=True)
    box = torch.tensor([[5.3, 7.8, 25.6, 19.2]])
    cut(x, box, 8).sum().backward()
    read = x.grad[0, 0] != 0
    ys, xs = torch.nonzero(read, as_tuple=True)
    assert int(xs.min()) == 5 and int(xs.max()) == 25 and int(ys.min()) == 8 and int(ys.max()) == 18


def test_cut_views_per_canvas_equals_indexed_boxes():
    x = _canvases(3, 32, 40)
    boxes = geometry.sample_boxes(2 * 3, (32, 40), (0.1, 0.5), (0.75, 4 / 3), torch.Generator().manual_seed(0))
    per_canvas = cut(x, boxes.view(2, 3, 4), 12)
    indexed = cut(x, boxes, 12, torch.arange(3).repeat(2))
    assert per_canvas.shape == (2, 3, 3, 12, 12)
    assert torch.allclose(per_canvas.flatten(0, 1), indexed, atol=1e-4)


def _plain_views(**kw):
    cfg = config.resolve([], ["views.global_size=32", "views.local_size=16", "views.color_jitter=0.0",
                              "views.grayscale=0.0", "views.blur=[0.0,0.0]", "views.local_blur=0.0",
                              "views.solarize=0.0", "views.local_scale=[0.05,0.25]"]
                         + [f"views.{k}={v}" for k, v in kw.items()])
    return cfg["views"]


def test_multicrop_shapes_boxes_and_determinism():
    v = _plain_views(local_flip="per_image")
    mc = MultiCrop(v, n_local=4)
    c = _canvases()
    a = mc(c, torch.Generator().manual_seed(0))
    b = mc(c, torch.Generator().manual_seed(0))
    assert a.globals.shape == (2, 4, 3, 32, 32) and a.locals.shape == (4, 4, 3, 16, 16)
    assert torch.equal(a.globals, b.globals) and torch.equal(a.locals, b.locals)
    assert a.sp_pairs.tolist() == [[0, 1], [2, 3]]
    for boxes in (a.global_boxes, a.local_boxes):
        assert (boxes[..., :2] >= 0).all() and (boxes[..., 2:] <= 48 + 1e-4).all()
    iou = geometry.box_iou(a.local_boxes[0], a.local_boxes[1])
    assert (iou <= 1e-6).sum() >= 4 - a.fallbacks


@pytest.mark.parametrize("policy", ["per_image", "none", "per_view"])
def test_local_flip_policies(policy):
    v = _plain_views(local_flip=policy)
    mc = MultiCrop(v, n_local=4)
    c = _canvases()
    out = mc(c, torch.Generator().manual_seed(5))
    x = c.float() / 255
    plain = torch.stack([normalize(cut(x, out.local_boxes[i], 16)) for i in range(4)])
    flipped = torch.stack([normalize(cut(x.flip(-1), out.local_boxes[i], 16)) for i in range(4)])
    same_plain = ((out.locals - plain).abs().amax(dim=(2, 3, 4)) < 1e-4)  # [L, B]
    same_flip = ((out.locals - flipped).abs().amax(dim=(2, 3, 4)) < 1e-4)
    if policy == "none":
        assert same_plain.all()
    elif policy == "per_image":
        # every view is cut at its box from the image or from the mirrored image, and all
        # local views of one image agree on which
        assert (same_plain | same_flip).all()
        assert (same_flip.all(0) | same_plain.all(0)).all()
    else:
        # per-view flips mirror the content of some views only: not explained by a box
        # in either frame
        mirrored = (out.locals - plain.flip(-1)).abs().amax(dim=(2, 3, 4)) < 1e-4
        assert (same_plain | mirrored).all() and mirrored.any() and same_plain.any()


def test_photometric_changes_views_but_keeps_range():
    cfg = config.resolve([], ["views.global_size=32", "views.local_size=16", "views.color_jitter=1.0",
                              "views.grayscale=0.5", "views.blur=[1.0,1.0]"])["views"]
    cfg["local_flip"] = "none"
    mc = MultiCrop(cfg, n_local=2)
    out = mc(_canvases(), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.globals).all()
    lo = (0 - 0.485) / 0.229 - 1e-3
    hi = (1 - 0.406) / 0.225 + 1e-3
    assert out.globals.min() >= lo and out.globals.max() <= hi


def test_no_per_step_host_to_device_copies(monkeypatch):
    """Constants are made once per device and dtype: after a first call, a multi-crop step
    builds no tensor from host data (each would be a host-to-device copy on a GPU)."""
    cfg = config.resolve([], ["views.global_size=32", "views.local_size=16"])["views"]
    cfg["local_flip"] = "per_image"
    mc = MultiCrop(cfg, n_local=4)
    c = _canvases()
    mc(c, torch.Generator().manual_seed(0))  # warm the caches
    calls = []
    real_tensor, real_to = torch.tensor, torch.Tensor.to

    def tensor(*a, **k):
        calls.append("torch.tensor")
        return real_tensor(*a, **k)

    def to(self, *a, **k):
        if "device" in k or any(isinstance(x, (torch.device, str, torch.Tensor)) for x in a):
            calls.append("Tensor.to(device)")
        return real_to(self, *a, **k)

    monkeypatch.setattr(torch, "tensor", tensor)
    monkeypatch.setattr(torch.Tensor, "to", to)
    mc(c, torch.Generator().manual_seed(1))
    assert calls == []


def _cut_speed():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cut_speed.py"
    spec = importlib.util.spec_from_file_location("cut_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("size,scale", [(12, (0.05, 0.3)), (20, (0.4, 1.0))])
def test_cut_equals_the_cut_before_issue_18(size, scale):
    """The batched cut (one matmul per axis for all views, flips through the x-axis weights,
    the 1/255 scale in the weights) equals the former per-view cut of the flipped, scaled
    fp32 canvases within 1e-5, on random boxes and per-image flips. Plant: flip the x-axis
    weights of the wrong images (``~flip``) -> fails; drop ``.flip(-1)`` -> fails."""
    before = _cut_speed().cut_before
    g = torch.Generator().manual_seed(3)
    u8 = torch.randint(0, 256, (5, 3, 40, 52), dtype=torch.uint8, generator=g)
    boxes = geometry.sample_boxes(3 * 5, (40, 52), scale, (0.75, 4 / 3), g).view(3, 5, 4)
    flip = torch.tensor([True, False, True, True, False])
    x = u8.float() / 255
    ref = before(torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x), boxes, size)
    ours = cut(u8.float(), boxes, size, flip=flip, scale=1 / 255)
    assert ours.shape == ref.shape == (3, 5, 3, size, size)
    assert (ours - ref).abs().max() < 1e-5
    assert (cut(x, boxes, size) - before(x, boxes, size)).abs().max() < 1e-5  # no flips, no scale
