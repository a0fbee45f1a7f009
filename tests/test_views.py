import pytest
import torch
import torchvision.transforms.v2.functional as TF

from spatialssl import config, geometry
from spatialssl.views import MultiCrop, cut, normalize


def _canvases(b=4, h=48, w=48):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def test_cut_equals_torchvision_resized_crop_when_enlarging():
    x = _canvases(1, 40, 40).float()
    box = torch.tensor([[5.0, 7.0, 21.0, 19.0]])  # 16 x 12 box -> 24 x 24 view (enlarging)
    ours = cut(x, box, 24)
    ref = TF.resized_crop(x, top=7, left=5, height=12, width=16, size=[24, 24], antialias=False)
    # equal inside; on the outermost output pixels torchvision clamps to the crop's edge
    # while roi_align reads the true neighbouring canvas pixel
    assert (ours - ref)[..., 1:-1, 1:-1].abs().max() < 1e-2
    assert (ours - ref).abs().mean() < 20


def test_cut_close_to_antialiased_crop_when_shrinking():
    x = _canvases(1, 64, 64).float()
    # smooth the image so aliasing does not dominate the comparison
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2)
    box = torch.tensor([[8.0, 8.0, 56.0, 56.0]])  # 48 px -> 24 px
    ours = cut(x, box, 24)
    ref = TF.resized_crop(x, top=8, left=8, height=48, width=48, size=[24, 24], antialias=True)
    assert (ours - ref).abs().mean() < 3.0  # of 255


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
