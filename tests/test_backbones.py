import pytest
import timm
import torch
from safetensors.torch import load_file

from spatialssl import config
from spatialssl.backbones import create_backbone, export_timm_state_dict


@pytest.mark.parametrize("overrides,grid", [
    (["backbone.name=vit_tiny", "backbone.patch_size=8", "backbone.img_size=32"], 4),
    (["backbone.name=resnet_mini", "backbone.small_stem=true", "backbone.width=8"], 4),
    (["backbone.name=resnet18", "backbone.small_stem=true"], 4),
])
def test_one_feature_api(overrides, grid):
    b = create_backbone(config.resolve([], overrides)["backbone"])
    x = torch.randn(2, 3, 32, 32)
    g, p = b.features(x)
    assert g.shape == (2, b.embed_dim) and p.shape == (2, b.embed_dim, grid, grid)
    assert torch.allclose(b(x), g, atol=1e-5)
    # global and local views share one model (ViT: dynamic image size)
    g16, p16 = b.features(torch.randn(2, 3, 16, 16))
    assert g16.shape == (2, b.embed_dim) and p16.shape[-1] == grid // 2


def test_unknown_backbone_lists_known():
    cfg = config.resolve([])["backbone"]
    cfg["name"] = "vit_gigantic"
    with pytest.raises(ValueError, match="unknown backbone 'vit_gigantic'.*vit_small"):
        create_backbone(cfg)


def test_export_is_timm_loadable(tmp_path):
    b = create_backbone(config.resolve([], ["backbone.name=vit_tiny", "backbone.patch_size=8",
                                            "backbone.img_size=32"])["backbone"])
    export_timm_state_dict(b, str(tmp_path / "w.safetensors"))
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, patch_size=8, img_size=32,
                          dynamic_img_size=True)
    m.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(m.forward_features(x)[:, 0], b(x), atol=1e-5)
