import torch

from spatialssl import config
from spatialssl.backbones import create_backbone
from spatialssl.frameworks import create_framework
from spatialssl.views import MultiCrop


def test_dino_head_batch_norm_option():
    """BatchNorm in DINO's head (for CNN backbones) runs over all views of all images."""
    cfg = config.resolve(["demo"], ["framework.name=dino", "framework.head_batch_norm=true", "backbone.width=8",
                                    "backbone.stem_width=8", "framework.out_dim=128", "framework.hidden_dim=32"])
    fw = create_framework(cfg, create_backbone(cfg["backbone"]), total_steps=4)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in fw.head.modules())
    views = MultiCrop(cfg["views"], n_local=4)(torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8),
                                               torch.Generator().manual_seed(0))
    out = fw(views, 0)
    assert torch.isfinite(out["loss"]) and out["local_emb"].shape == (4, 8, fw.backbone.embed_dim)
    out["loss"].backward()
    assert fw.backbone.model.conv1.weight.grad is not None
