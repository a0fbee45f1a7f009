import json

from spatialssl.cli import main


def test_bad_config_key_is_a_clear_error(capsys):
    assert main(["config", "--set", "train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.stepz'" in err and "steps" in err


def test_bad_value_is_a_clear_error(capsys):
    assert main(["config", "--set", "views.local_flip=sideways"]) == 2
    assert "'views.local_flip' must be one of auto, per_image, per_view, none" in capsys.readouterr().err


def test_unknown_framework_is_named(capsys, tmp_path):
    assert main(["pretrain", "-c", "demo", "--set", "framework.name=nope", "--set", f"out_dir={tmp_path}",
                 "--set", "data.n_train=64", "--set", "data.n_eval=32", "--set", "train.batch_size=16"]) == 2
    assert "unknown framework 'nope'" in capsys.readouterr().err


def test_compare_tiny_pretrains_evaluates_and_reports(tmp_path, capsys):
    """`spatialssl compare` end to end at the tiny budget: two runs, metrics, one report."""
    out = tmp_path / "cmp"
    assert main(["compare", "--frameworks", "simclr", "--budget", "tiny", "--out", str(out), "--tasks", "knn,linear",
                 "--set", "train.progress=false", "--set", "eval.n_train=128", "--set", "eval.n_test=128"]) == 0
    for run in ("simclr", "simclr_sp"):
        rec = json.loads((out / run / "metrics" / "knn.json").read_text())
        assert 0.0 <= rec["values"]["top1"] <= 1.0 and rec["sp"] == (run == "simclr_sp")
        assert (out / run / "backbone.safetensors").exists()
    report = (out / "report.md").read_text()
    assert "simclr_sp" in report and "kNN top-1" in report
    assert "kNN top-1" in capsys.readouterr().out
