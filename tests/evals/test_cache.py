"""Feature cache keyed by content: data, probe settings that shape the input (jigsaw) and the
corruption code all change the features used; non-finite numbers stop the evaluation."""

import json

import pytest
import torch

from spatialssl.evals import jigsaw, robustness, run_task
from spatialssl.evals.features import NonFiniteError, checkpoint_hash, write_metrics
from spatialssl.views import IMAGENET_MEAN, IMAGENET_STD
from test_jigsaw import slot_coded


def test_changed_images_or_data_config_are_never_served_stale(planted_tools, tmp_path):
    """Same checkpoint hash, same split name and size, same cache folder: new images (what
    ``data.seed`` does to PartsWorld) get new features, and a changed data config a new key."""
    t = planted_tools
    a, b = t["labelled_set"](40, 3, 0), t["labelled_set"](40, 3, 5)
    ctx = t["context"](t["Planted"](6), {"train": a, "test": a})
    ctx.cache_dir = tmp_path
    fa, _ = ctx.features("train")
    ctx2 = t["context"](t["Planted"](6), {"train": b, "test": b})
    ctx2.cache_dir = tmp_path
    fb, _ = ctx2.features("train")
    assert not torch.equal(fa, fb)
    key0 = ctx.cache_key(a.images, False)
    ctx.cfg["data"]["seed"] = 1
    assert ctx.cache_key(a.images, False) != key0
    assert len(list(tmp_path.glob("*.pt"))) == 2


class Layout(torch.nn.Module):
    """Planted tile codes (one-hot of the mean red code, for the jigsaw probe) beside the red
    channel pooled to 3 x 3 (where each code sits: the arrangement of a reassembled image)."""

    def __init__(self, planted):
        super().__init__()
        self.planted, self.embed_dim = planted, planted.n_codes + 9

    def forward(self, x):
        red = x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # 0..1
        return torch.cat([self.planted(x), torch.nn.functional.adaptive_avg_pool2d(red, 3).flatten(1)], 1)

    def features(self, x):
        return self.forward(x), None


def test_jigsaw_epochs_change_the_reconstructed_features(planted_tools, tmp_path):
    """An untrained jigsaw probe (0 epochs) reassembles the tiles wrongly; 30 epochs solve every
    puzzle, so the reassembled images equal the originals. Keyed by name and size only, the
    second run would reuse the first run's (wrong) reassembled images' features."""
    t = planted_tools
    splits = {"train": slot_coded(40, 3, t["SIZE"], t["STEP"], 0), "test": slot_coded(30, 3, t["SIZE"], t["STEP"], 1)}
    seen = []
    for epochs in (0, 30):
        ctx = t["context"](Layout(t["Planted"](9)), dict(splits), jigsaw_epochs=epochs)
        ctx.cache_dir = tmp_path
        got, orig = {}, ctx.features

        def spy(name, patch=False, images=None, tag="", settings=None, orig=orig, got=got):
            out = orig(name, patch, images, tag, settings)
            got[tag] = out[0]
            return out

        ctx.features = spy
        out = jigsaw.run(ctx)
        seen.append((out, got))
    (out0, f0), (out1, f1) = seen
    assert out0["tile_acc"] < 0.5 and out1["tile_acc"] == 1.0
    assert torch.equal(f1["jigsaw3_reconstructed"], f1["jigsaw3_original"])
    assert not torch.equal(f0["jigsaw3_reconstructed"], f1["jigsaw3_reconstructed"])


def test_corruption_code_change_changes_the_features(planted_tools, tmp_path, monkeypatch):
    t = planted_tools
    splits = {"train": t["labelled_set"](90, 3, 0), "test": t["labelled_set"](60, 3, 1)}
    kw = dict(robust_corruptions=["contrast"], robust_severities=[5], robust_n_test=0)
    ctx = t["context"](t["Planted"](6), dict(splits), **kw)
    ctx.cache_dir = tmp_path
    before = robustness.run(ctx)["acc_contrast_s5"]
    # "new corruption code": contrast that also wipes the red channel (the planted code)
    original = robustness.corrupt

    def changed(images, name, severity, g):
        out = original(images, name, severity, g).clone()
        out[:, 0] = 0
        return out

    monkeypatch.setattr(robustness, "corrupt", changed)
    ctx = t["context"](t["Planted"](6), dict(splits), **kw)
    ctx.cache_dir = tmp_path
    after = robustness.run(ctx)["acc_contrast_s5"]
    assert before > 0.98 and after < 0.6


def test_checkpoint_hash_is_of_the_content(tmp_path):
    for name, data in (("a", b"weights-a"), ("b", b"weights-b"), ("c", b"weights-a")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.pt").write_bytes(data)
    ha, hb, hc = (checkpoint_hash(tmp_path / n) for n in "abc")
    assert ha != hb and ha == hc and len(ha) == 16


class NaNBackbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_dim = 4

    def forward(self, x):
        return torch.full((len(x), 4), float("nan"))

    def features(self, x):
        return self.forward(x), torch.full((len(x), 4, 2, 2), float("nan"))


@pytest.mark.parametrize("task", ["knn", "linear", "segmentation"])
def test_non_finite_features_stop_the_evaluation(planted_tools, task):
    t = planted_tools
    splits = {"train": t["dense_set"](20, 3, 0), "test": t["dense_set"](10, 3, 1)}
    ctx = t["context"](NaNBackbone(), splits)
    ctx.run_name = "runs/nan_run"
    with pytest.raises(NonFiniteError, match=f"run runs/nan_run.*task {task}.*not finite"):
        run_task(ctx, task)


def test_non_finite_metrics_are_refused(planted_tools, tmp_path):
    t = planted_tools
    ctx = t["context"](t["Planted"](3), {})
    ctx.task = "depth"
    with pytest.raises(NonFiniteError, match="task depth.*rmse"):
        write_metrics(tmp_path, "depth", {"rmse": float("nan")}, ctx)
    path = write_metrics(tmp_path, "depth", {"rmse": 1.0}, ctx)
    json.loads(path.read_text())  # strict JSON


def test_cache_key_reads_the_number_free_list(planted_tools):
    """Each data key the one list of number-free keys (config.NUMBER_FREE) names, or that
    evaluations do not read (config.EVAL_UNREAD: data.decode), leaves the feature-cache key as
    it was; every other data key changes it. Plant: the old hard-coded exclusion of workers and
    prefetch only (data.cache_dir then changes the key)."""
    from spatialssl.config import DEFAULTS, EVAL_UNREAD, number_free

    t = planted_tools
    a = t["labelled_set"](8, 2, 0)
    ctx = t["context"](t["Planted"](6), {"train": a, "test": a})
    key0 = ctx.cache_key(a.images, False)
    data = ctx.cfg["data"]
    for k, default in DEFAULTS["data"].items():
        before = dict(data)
        value = data.get(k, default)
        data[k] = ("changed" if isinstance(value, str) else [v + 1 for v in value] if isinstance(value, list)
                   else value + 1)
        assert (ctx.cache_key(a.images, False) == key0) == (number_free(f"data.{k}") or f"data.{k}" in EVAL_UNREAD), k
        data.clear()
        data.update(before)
