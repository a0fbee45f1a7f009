"""``spatialssl probe``: pretrained backbones from (arch, weights file) in every common layout
give the source model's features; heads are dropped and listed; misfits are one clear error;
the metrics name the file's sha256 and arch, never a framework or step."""

from __future__ import annotations

import hashlib
import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from spatialssl import cli
from spatialssl.pretrained import WeightsError, load_pretrained, read_state_dict

VIT = "vit_tiny_patch16_224"
VIT_KW = {"depth": 1, "embed_dim": 32, "num_heads": 2}
DINO2 = "vit_small_patch14_reg4_dinov2"
DINO2_KW = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every float tensor random (layer-scale gammas, tokens, BN statistics), so that a tensor
    left at its init value would show in the features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 + (0.9 if t.ndim == 1 else -0.1))
    return model.eval()


def _timm(arch: str, **kw) -> torch.nn.Module:
    return _randomise(timm.create_model(arch, pretrained=False, **kw))


def _same_features(backbone, source: torch.nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = source.forward_features(x)
        g, p = backbone.eval().features(x)
    if want.ndim == 3:  # ViT tokens: CLS first, patch tokens last
        assert torch.allclose(g, want[:, 0], atol=1e-5)
        assert torch.allclose(p.flatten(2).transpose(1, 2), want[:, -p.shape[2] * p.shape[3]:], atol=1e-5)
    else:
        assert torch.allclose(p, want, atol=1e-5) and torch.allclose(g, want.mean((2, 3)), atol=1e-5)


LAYOUTS = {
    "safetensors": lambda sd: sd,
    "bare_pth": lambda sd: sd,
    "state_dict_module": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
    "dino_teacher": lambda sd: {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()},
                                            "head.mlp.0.weight": torch.zeros(8, 32),
                                            "head.last_layer.weight": torch.zeros(16, 8)},
                                "student": {}, "epoch": 100},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_load_the_source_weights(layout, tmp_path):
    src = _timm(VIT, img_size=32, num_classes=0, **VIT_KW)
    obj = LAYOUTS[layout](src.state_dict())
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    save_file(obj, str(path)) if layout == "safetensors" else torch.save(obj, path)
    bb, info = load_pretrained(VIT, path, VIT_KW)
    _same_features(bb, src, 32)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    want = {"safetensors": ("", [], []), "bare_pth": ("", [], []),
            "state_dict_module": ("state_dict", ["module."], []),
            "dino_teacher": ("teacher", ["backbone."], ["head.last_layer.weight", "head.mlp.0.weight"])}[layout]
    assert (info["nested"], info["stripped"], info["dropped"]) == want


def test_classifier_head_dropped_and_listed(tmp_path):
    src = _timm(VIT, img_size=32, num_classes=10, **VIT_KW)
    torch.save(src.state_dict(), tmp_path / "cls.pt")
    bb, info = load_pretrained(VIT, tmp_path / "cls.pt", VIT_KW)
    assert info["dropped"] == ["head.bias", "head.weight"]
    _same_features(bb, src, 32)


def test_dinov2_registers_layer_scale_other_size(tmp_path):
    """A DINOv2-style ViT (4 registers, layer scale) trained at 56 px: its 4x4 pos-embed grid
    is kept and interpolated to each eval size exactly as timm's dynamic size does."""
    src = _timm(DINO2, img_size=56, num_classes=0, **DINO2_KW)
    assert src.pos_embed.shape[1] == 16 and src.reg_token is not None
    torch.save({"model": src.state_dict()}, tmp_path / "d.pth")
    bb, info = load_pretrained(DINO2, tmp_path / "d.pth", DINO2_KW)  # timm's default grid is 37x37
    assert bb.model.pos_embed.shape == src.pos_embed.shape and bb.model.num_prefix_tokens == 5
    _same_features(bb, src, 56)
    dyn = _timm(DINO2, img_size=56, num_classes=0, dynamic_img_size=True, **DINO2_KW)
    for size in (28, 84):
        _same_features(bb, dyn, size)
    g, p = bb.features(torch.zeros(1, 3, 84, 84))
    assert g.shape == (1, 32) and p.shape == (1, 32, 6, 6)


def test_dinov2_meta_layout(tmp_path):
    """Meta's layout (mask_token; register_tokens; cls position inside pos_embed) is converted."""
    src = _timm(DINO2, img_size=56, num_classes=0, **DINO2_KW)
    sd = dict(src.state_dict())
    p0 = torch.randn(1, 1, 32)
    meta = {**{k: v for k, v in sd.items() if k not in ("reg_token", "cls_token", "pos_embed")},
            "register_tokens": sd["reg_token"], "cls_token": sd["cls_token"] - p0,
            "pos_embed": torch.cat([p0, sd["pos_embed"]], 1), "mask_token": torch.zeros(1, 32)}
    torch.save(meta, tmp_path / "meta.pth")
    bb, _ = load_pretrained(DINO2, tmp_path / "meta.pth", DINO2_KW)
    _same_features(bb, src, 56)


def test_resnet_and_convnext(tmp_path):
    r = _timm("resnet18", num_classes=7)
    torch.save(r.state_dict(), tmp_path / "r.pth")
    bb, info = load_pretrained("resnet18", tmp_path / "r.pth")
    assert bb.kind == "cnn" and info["dropped"] == ["fc.bias", "fc.weight"]
    _same_features(bb, r, 64)

    kw = {"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}
    c = _timm("convnext_atto", num_classes=5, **kw)
    save_file({f"module.{k}": v.contiguous() for k, v in c.state_dict().items()}, str(tmp_path / "c.safetensors"))
    bb, info = load_pretrained("convnext_atto", tmp_path / "c.safetensors", kw)
    assert info["dropped"] == ["head.fc.bias", "head.fc.weight"]  # head.norm is the backbone's: kept
    assert torch.equal(bb.model.head.norm.weight, c.head.norm.weight)
    _same_features(bb, c, 64)


def test_torchvision_resnet(tmp_path):
    import torchvision

    net = _randomise(torchvision.models.resnet18(weights=None))
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    bb, info = load_pretrained("torchvision:resnet18", tmp_path / "tv.pth")
    assert info["dropped"] == ["fc.bias", "fc.weight"] and bb.embed_dim == 512
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = torch.nn.Sequential(*list(net.children())[:-2])(x)
        g, p = bb.eval().features(x)
    assert torch.allclose(p, want, atol=1e-5) and torch.allclose(g, net.avgpool(want).flatten(1), atol=1e-5)


def test_misfits_are_one_clear_error(tmp_path, capsys):
    src = _timm(VIT, img_size=32, num_classes=0, **VIT_KW)
    torch.save(src.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(WeightsError, match=r"vit\.pth.*'resnet18'.*missing key\(s\): bn1\.bias"):
        load_pretrained("resnet18", tmp_path / "vit.pth")
    torch.save(_timm(VIT, img_size=32, num_classes=0, **{**VIT_KW, "depth": 2}).state_dict(), tmp_path / "deep.pth")
    with pytest.raises(WeightsError, match=r"unexpected key\(s\): blocks\.1\.attn"):
        load_pretrained(VIT, tmp_path / "deep.pth", VIT_KW)
    with pytest.raises(WeightsError, match=r"shape mismatch.*cls_token \(1, 1, 32\) vs \(1, 1, 48\)"):
        load_pretrained(VIT, tmp_path / "vit.pth", {**VIT_KW, "embed_dim": 48})
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="junk.pth is unreadable"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, tmp_path / "opt.pth")
    with pytest.raises(WeightsError, match=r"no state dict found \(keys: epoch, optimizer"):
        read_state_dict(tmp_path / "opt.pth")
    # the command: one line on stderr, exit status 2, no traceback
    rc = cli.main(["probe", "--weights", str(tmp_path / "vit.pth"), "--arch", "resnet18", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1 and "missing key(s)" in err
    assert cli.main(["probe", "--weights", str(tmp_path / "vit.pth"), "--arch", "no_such_net"]) == 2
    assert "unknown architecture 'no_such_net'" in capsys.readouterr().err


TINY_DATA = ["data.n_train=64", "data.n_eval=32", "eval.n_train=64", "eval.n_test=32", "views.global_size=32",
             "views.local_size=16", "eval.pp_epochs=10", "eval.pp_pairs_per_image=2", "eval.jigsaw_epochs=2",
             "eval.jigsaw_n_train=32", "eval.jigsaw_n_test=16", "eval.linear_epochs=3"]


def test_probe_command_writes_named_metrics(tmp_path, capsys):
    """End to end on tiny PartsWorld: a DINO-teacher file of a DINOv2-style ViT; eval sizes
    rounded to the patch size; metrics name arch and sha256, never a framework or step; the
    random-init floor is the same architecture."""
    src = _timm(DINO2, img_size=56, num_classes=0, **DINO2_KW)
    path = tmp_path / "teacher.pth"
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in src.state_dict().items()}
                | {"module.head.last_layer.weight": torch.zeros(4, 32)}}, path)
    out = tmp_path / "probe"
    args = ["probe", "--weights", str(path), "--arch", DINO2, "--tasks", "patch_pair,jigsaw,knn", "--out", str(out)]
    args += [f"--arch-arg={k}={v}" for k, v in DINO2_KW.items()]
    args += [a for s in TINY_DATA for a in ("--set", s)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    # a verdict a single run can read (issue 28): value, interval, floor, n, verdict, the sizes used
    assert "| patch-pair R² dx ↑ |" in printed and "random-init floor" in printed and "images at 28 px" in printed
    assert any(v in printed for v in ("above floor |", "at floor |"))
    assert (out / "metrics" / "summary.md").read_text().count("| patch-pair R²") >= 3
    for task in ("patch_pair", "jigsaw", "knn"):
        rec = json.loads((out / "metrics" / f"{task}.json").read_text())
        assert rec["arch"] == DINO2 and rec["weights"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert rec["weights"]["dropped"] == ["head.last_layer.weight"] and rec["weights"]["nested"] == "teacher"
        assert not {"framework", "sp", "step", "complete"} & set(rec)
        assert (rec["eval_config"]["img_size"], rec["eval_config"]["pp_crop_size"],
                rec["eval_config"]["jigsaw_tile_size"]) == (28, 14, 14)
        assert any(k.startswith("random_") for k in rec["values"])
    from spatialssl.report import _runs_section, read_runs

    _, [row] = _runs_section(read_runs([out]))
    assert row[1:6] == ["probe", "–", "–", "complete", DINO2]  # the report claims no framework, SP or steps either
    with pytest.raises(SystemExit):
        cli.main(["probe", "--weights", str(path)])  # --arch is required
    assert cli.main(["probe", "--weights", str(path), "--arch", DINO2, "--set", "backbone.name=resnet18"]) == 2
    assert "only eval.*, data.*, views.* keys" in capsys.readouterr().err


def test_floor_is_the_same_architecture_at_random_init(tmp_path):
    from spatialssl.evals.pretrained import context_from_weights, probe_config

    src = _timm(DINO2, img_size=56, num_classes=0, **DINO2_KW)
    torch.save(src.state_dict(), tmp_path / "d.pth")
    ctx = context_from_weights(tmp_path / "d.pth", DINO2, probe_config(), DINO2_KW, progress=False)
    for c in (ctx, ctx.for_seed(1)):
        mine, floor = c.backbone.state_dict(), c.floor().backbone.state_dict()
        assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in floor.items()}
        assert not torch.equal(mine["model.cls_token"], floor["model.cls_token"])
    assert not torch.equal(ctx.floor().backbone.state_dict()["model.cls_token"],
                           ctx.for_seed(1).floor().backbone.state_dict()["model.cls_token"])  # one floor per seed
