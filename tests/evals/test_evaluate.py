"""``evaluate``: metrics files, determinism given a seed, mean and std over seeds, feature cache."""

import json

from spatialssl import config
from spatialssl.engine.trainer import pretrain
from spatialssl.evals import evaluate, parse_tasks

import pytest


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = config.resolve(["demo"], [f"out_dir={out}", "data.n_train=64", "data.n_eval=32", "train.steps=2",
                                    "train.batch_size=16", "backbone.width=8", "backbone.stem_width=8",
                                    "train.progress=false", "train.log_every=1"])
    return pretrain(cfg)


EV = {"eval": {"n_train": 64, "n_test": 32, "linear_epochs": 10, "pp_epochs": 20, "pp_pairs_per_image": 2,
               "random_floor": False}}


def test_metrics_written_deterministic_and_spread_over_seeds(tiny_run):
    a = evaluate(tiny_run, "knn,linear,patch_pair", overrides=EV, progress=False)
    b = evaluate(tiny_run, "knn,linear,patch_pair", overrides=EV, progress=False)
    assert a == b  # same seed, same numbers
    rec = json.loads((tiny_run / "metrics" / "linear.json").read_text())
    assert rec["values"] == a["linear"] and rec["seed"] == 0 and len(rec["checkpoint"]) == 16
    assert list((tiny_run / "features").glob("*.pt"))  # features cached on disk per checkpoint

    evaluate(tiny_run, "linear,patch_pair", seeds=3, overrides=EV, progress=False)
    rec = json.loads((tiny_run / "metrics" / "patch_pair.json").read_text())
    assert rec["seeds"] == 3 and len(rec["per_seed"]) == 3
    vals = [r["r2_dx"] for r in rec["per_seed"]]
    assert rec["values"]["r2_dx"] == pytest.approx(sum(vals) / 3)
    assert rec["std"]["r2_dx"] > 0  # probe seeds differ


def test_out_dir_keeps_the_checkpoint_folder_untouched(tiny_run, tmp_path):
    """Evaluating a checkpoint elsewhere (--out: e.g. a released one) writes metrics and the
    feature cache there, and nothing next to the checkpoint."""
    before = sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*"))
    evaluate(tiny_run / "checkpoint.pt", "knn", out_dir=tmp_path / "ev", overrides=EV, progress=False)
    assert (tmp_path / "ev" / "metrics" / "knn.json").exists()
    assert list((tmp_path / "ev" / "features").glob("*.pt"))
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown eval task 'knnn'"):
        parse_tasks("knn,knnn")
    assert "jigsaw" in parse_tasks("all")
