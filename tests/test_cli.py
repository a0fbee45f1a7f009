import json

import pytest

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
    # `eval` takes its number of seeds from eval.seeds unless --seeds says otherwise
    assert main(["eval", "--checkpoint", str(out / "simclr"), "--tasks", "knn", "--set", "eval.seeds=2",
                 "--set", "eval.n_train=128", "--set", "eval.n_test=128"]) == 0
    assert json.loads((out / "simclr" / "metrics" / "knn.json").read_text())["seeds"] == 2


def _one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line: no traceback
    assert err.startswith("spatialssl: error: ") and "spatialssl: error: spatialssl:" not in err, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_malformed_yaml_preset_is_one_line(capsys, tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("train: {steps: 3\n")
    _one_line_error(capsys, ["config", "-c", str(p)], "broken.yaml", "not valid YAML", "line")


def test_folder_errors_have_one_prefix(capsys, tmp_path):
    _one_line_error(capsys, ["pretrain", "--set", "data.name=folder", "--set", f"data.root={tmp_path / 'nope'}",
                             "--set", f"out_dir={tmp_path / 'run'}", "--set", "device=cpu"],
                    "folder not found", "nope")


def test_out_dir_that_is_a_file(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_line_error(capsys, ["pretrain", "--set", f"out_dir={f}", "--set", "device=cpu"], "'out_dir'", "is a file")


def test_cuda_without_cuda_is_one_line(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    _one_line_error(capsys, ["pretrain", "--set", "device=cuda", "--set", f"out_dir={tmp_path / 'r'}"],
                    "'device'", "no CUDA")
    assert not (tmp_path / "r").exists()  # refused before the run folder is touched
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path), "--device", "cuda"], "--device cuda", "no CUDA")


def test_eval_argument_errors_are_one_line(capsys, tmp_path):
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path), "--set", "backbone.width=32"],
                    "backbone.width", "only eval.* and data.* keys")
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path), "--seeds", "0"], "--seeds must be >= 1")
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path), "--set", "eval.knn_k=0"], "'eval.knn_k'")
    _one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "none")], "no checkpoint")


def test_eval_and_compare_evaluate_on_the_gpu_when_there_is_one(monkeypatch, tmp_path):
    """`eval` (no --device) and `compare`'s evaluations resolve `auto`: cuda when CUDA is
    present (faked here), cpu otherwise. Plant: `--device` default "cpu" -> fails."""
    import torch

    import spatialssl.evals as evals
    from spatialssl import experiments
    from spatialssl.evals.features import eval_device

    class Stop(Exception):
        pass

    seen = []

    def fake_context(path, overrides=None, device="auto", **kw):
        seen.append(eval_device(device))
        raise Stop

    monkeypatch.setattr(evals, "context_from_checkpoint", fake_context)
    assert eval_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(Stop):
        main(["eval", "--checkpoint", str(tmp_path), "--tasks", "knn"])
    with pytest.raises(Stop):
        experiments.evaluate_run(tmp_path, "knn", [])  # what `compare` calls for each run
    assert seen == ["cuda", "cuda"]
    assert eval_device("cpu") == "cpu" and eval_device("cuda:1") == "cuda:1"
