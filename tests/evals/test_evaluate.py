"""``evaluate``: metrics and outcome files, determinism given a seed, spread over seeds,
floors for every metric, the supervised reference, the feature cache per checkpoint."""

import json
from pathlib import Path

import pytest
import torch

from spatialssl import config, runfolder
from spatialssl.engine.trainer import pretrain
from spatialssl.evals import evaluate, metric_keys, parse_tasks


def _pretrain(out, steps=2, seed=0):
    cfg = config.resolve(["demo"], [f"out_dir={out}", "data.n_train=64", "data.n_eval=32", f"train.steps={steps}",
                                    "train.batch_size=16", "backbone.width=8", "backbone.stem_width=8",
                                    "train.progress=false", "train.log_every=1", f"seed={seed}"])
    return pretrain(cfg)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return _pretrain(tmp_path_factory.mktemp("run"))


EV = {"eval": {"n_train": 64, "n_test": 32, "linear_epochs": 10, "pp_epochs": 20, "pp_pairs_per_image": 2,
               "random_floor": False}}
EV_ALL = {"eval": {"n_train": 48, "n_test": 24, "linear_epochs": 5, "pp_epochs": 20, "pp_pairs_per_image": 2,
                   "dense_epochs": 2, "robust_corruptions": ["gaussian_noise", "fog"], "robust_severities": [1, 3],
                   "jigsaw_epochs": 3, "random_floor": True}}


def test_metrics_written_deterministic_and_spread_over_seeds(tiny_run):
    a = evaluate(tiny_run, "knn,linear,patch_pair", overrides=EV, progress=False)
    b = evaluate(tiny_run, "knn,linear,patch_pair", overrides=EV, progress=False)
    assert a == b  # same seed, same numbers
    rec = json.loads((tiny_run / "metrics" / "linear.json").read_text())
    assert rec["values"] == a["linear"] and rec["seed"] == 0 and rec["subset_seed"] == 0
    assert rec["step"] == 2 and rec["complete"] is True and rec["n_test"] == 32
    assert list((tiny_run / "features").glob("*.pt"))  # features cached on disk per checkpoint

    evaluate(tiny_run, "linear,patch_pair", seeds=3, overrides=EV, progress=False)
    rec = json.loads((tiny_run / "metrics" / "patch_pair.json").read_text())
    assert rec["seeds"] == 3 and len(rec["per_seed"]) == 3
    vals = [r["r2_dx"] for r in rec["per_seed"]]
    assert rec["values"]["r2_dx"] == pytest.approx(sum(vals) / 3)
    assert rec["std"]["r2_dx"] > 0  # probe seeds differ
    out = runfolder.read_items(tiny_run, "patch_pair", "outcomes")
    assert len(out["seeds"]) == 3
    for s, per in enumerate(out["seeds"]):
        o = per["r2_ds"]
        assert o["kind"] == "r2" and o["err2"].shape == o["target"].shape == (rec["per_seed"][s]["n_pairs_test"],)
        r2 = 1 - o["err2"].sum() / (o["target"] - o["target"].mean()).pow(2).sum()
        assert float(r2) == pytest.approx(rec["per_seed"][s]["r2_ds"], abs=1e-5)


def test_eval_seeds_from_the_config(tiny_run, tmp_path):
    evaluate(tiny_run, "knn", out_dir=tmp_path, overrides={"eval": {**EV["eval"], "seeds": 2, "n_test": 16}},
             progress=False)
    rec = json.loads((tmp_path / "metrics" / "knn.json").read_text())
    assert rec["seeds"] == 2 and rec["subset_seeds"] == [0, 1]  # each seed its own test subset


def test_floor_for_every_metric_and_supervised_reference(tiny_run, tmp_path):
    """Every task: a random-init floor beside every metric, the supervised reference too, and
    per-item outcomes for the run, the floor and the reference."""
    res = evaluate(tiny_run, "all", out_dir=tmp_path, overrides=EV_ALL, progress=False, reference="supervised")
    assert set(res) == set(parse_tasks("all"))
    for task, values in res.items():
        keys = metric_keys(task, values)
        assert keys, task
        # every number a protocol returns is a declared metric (evals.METRICS) or describes the setting
        setting = [k for k, v in values.items() if isinstance(v, float) and k not in keys
                   and not k.startswith(("random_", "supervised_"))]
        assert set(setting) <= {"chance", "chance_tile", "chance_puzzle", "t", "best_lr", "majority_miou",
                                "mean_rmse", "valid_frac"}, (task, setting)
        for k in keys:
            assert f"random_{k}" in values and f"supervised_{k}" in values, (task, k)
        out = runfolder.read_items(tmp_path, task, "outcomes")["seeds"][0]
        for k in [k for k in out if not k.startswith(("random_", "supervised_"))]:
            assert f"random_{k}" in out and f"supervised_{k}" in out
            assert out[k]["kind"] in ("mean", "r2", "rmse", "miou")
        json.loads((tmp_path / "metrics" / f"{task}.json").read_text())
    assert res["robustness"]["random_mCA"] >= 0 and "random_ood_top1" in res["robustness"]
    assert list((tmp_path / "features").glob("supervised_*.pt"))  # the reference is trained once, kept


def test_two_checkpoints_same_items_different_features(tiny_run, tmp_path):
    """A second checkpoint evaluated into the same folder: its own features (the checkpoint hash
    is part of the key), and the same test items in the same order (outcomes pair up)."""
    other = _pretrain(tmp_path / "other", steps=3, seed=1)
    ev = tmp_path / "ev"
    a = evaluate(tiny_run, "knn", out_dir=ev, overrides=EV, progress=False)
    oa = runfolder.read_items(ev, "knn", "outcomes")["seeds"][0]["top1"]["x"]
    n_files = len(list((ev / "features").glob("*.pt")))
    evaluate(other, "knn", out_dir=ev, overrides=EV, progress=False)
    ob = runfolder.read_items(ev, "knn", "outcomes")["seeds"][0]["top1"]["x"]
    assert len(list((ev / "features").glob("*.pt"))) == 2 * n_files
    rec = json.loads((ev / "metrics" / "knn.json").read_text())
    assert rec["step"] == 3 and rec["complete"] is True and a["knn"]["n_test"] == rec["n_test"] == len(oa) == len(ob)


def test_out_dir_keeps_the_checkpoint_folder_untouched(tiny_run, tmp_path):
    """Evaluating a checkpoint elsewhere (--out: e.g. a released one) writes metrics and the
    feature cache there, and nothing next to the checkpoint."""
    before = sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*"))
    evaluate(tiny_run / "checkpoint.pt", "knn", out_dir=tmp_path / "ev", overrides=EV, progress=False)
    assert (tmp_path / "ev" / "metrics" / "knn.json").exists()
    assert list((tmp_path / "ev" / "features").glob("*.pt"))
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before


def test_unknown_task_and_reference_are_named(tiny_run):
    with pytest.raises(ValueError, match="unknown eval task 'knnn'"):
        parse_tasks("knn,knnn")
    assert "jigsaw" in parse_tasks("all")
    with pytest.raises(ValueError, match="unknown reference 'oracle'"):
        evaluate(tiny_run, "knn", overrides=EV, progress=False, reference="oracle")


def test_floor_runs_once_for_runs_of_one_architecture(tiny_run, tmp_path, monkeypatch):
    """Two runs of the same architecture on the same data and eval settings share their
    random-init floor (same random weights): its protocol runs once, and both report it."""
    import spatialssl.evals as ev_mod

    monkeypatch.setattr(ev_mod, "_FLOOR_MEMO", {})
    calls = []
    real = ev_mod.run_protocol

    def counting(ctx, task):
        calls.append(ctx.role)
        return real(ctx, task)

    monkeypatch.setattr(ev_mod, "run_protocol", counting)
    other = _pretrain(tmp_path / "other", steps=3, seed=1)
    ov = {"eval": {**EV["eval"], "random_floor": True}}
    a = evaluate(tiny_run, "knn", out_dir=tmp_path / "a", overrides=ov, progress=False)
    b = evaluate(other, "knn", out_dir=tmp_path / "b", overrides=ov, progress=False)
    assert calls.count("random") == 1 and calls.count("run") == 2
    assert a["knn"]["random_top1"] == b["knn"]["random_top1"]
    # another eval setting is another floor
    evaluate(other, "knn", out_dir=tmp_path / "c", overrides={"eval": {**ov["eval"], "knn_k": 3}}, progress=False)
    assert calls.count("random") == 2


def test_a_run_saved_before_a_config_key_existed_evaluates(tmp_path):
    """A run folder whose config predates ``data.distractors``, ``data.fill``,
    ``data.elevation`` and ``data.background`` (as the first released checkpoints did): the
    evaluation context reads those keys at their defaults (as a resume does), so its data can
    be built, instead of a KeyError; its saved values are kept."""
    import shutil

    import yaml

    from spatialssl.data import partsworld_config
    from spatialssl.evals.features import context_from_checkpoint

    released = Path(__file__).resolve().parents[2] / "checkpoints" / "byol-cnn-s0"
    run = tmp_path / "old_run"
    run.mkdir()
    shutil.copy(released / runfolder.BACKBONE, run / runfolder.BACKBONE)
    saved = runfolder.read_config(released)
    for key in ("distractors", "fill", "elevation", "background"):
        saved["data"].pop(key, None)
    saved["data"]["n_eval"] = 77
    (run / runfolder.CONFIG).write_text(yaml.safe_dump(saved))
    ctx = context_from_checkpoint(run, device="cpu", progress=False, cache_dir=tmp_path / "features")
    pw = partsworld_config(ctx.cfg["data"])
    assert (pw.distractors, pw.fill_min, pw.fill_max, pw.elev_min_deg) == (2, 0.65, 0.95, 8.0)
    assert ctx.cfg["data"]["background"] == "scene" and pw.n_val == 77  # saved values kept
    assert config.with_defaults({"data": {"n_train": 7}, "gone": 1})["data"]["n_train"] == 7
