import json
import re

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
    """`spatialssl compare` end to end at the tiny budget, one seed: the study's cells (small
    files in --out, checkpoints in --runs), the summary and one report."""
    out, runs = tmp_path / "cmp", tmp_path / "scratch"
    assert main(["compare", "--frameworks", "simclr", "--budget", "tiny", "--seeds", "0", "--out", str(out),
                 "--runs", str(runs), "--tasks", "knn,linear", "--set", "eval.n_train=128",
                 "--set", "eval.n_test=128"]) == 0
    for run in ("simclr-cnn-s0", "simclr_sp-cnn-s0"):
        rec = json.loads((out / run / "metrics" / "knn.json").read_text())
        assert 0.0 <= rec["values"]["top1"] <= 1.0 and rec["sp"] == ("_sp" in run)
        assert rec["eval_config"]["n_train"] == 128  # --set reached the worker processes
        assert (runs / run / "backbone.safetensors").exists() and not (out / run / "backbone.safetensors").exists()
    report = (out / "report" / "report.md").read_text()
    assert "simclr_sp" in report and "kNN top-1" in report
    assert "kNN top-1" in (out / "summary.md").read_text() and "kNN top-1" in capsys.readouterr().out
    # `eval` takes its number of seeds from eval.seeds unless --seeds says otherwise
    assert main(["eval", "--checkpoint", str(runs / "simclr-cnn-s0"), "--tasks", "knn", "--set", "eval.seeds=2",
                 "--set", "eval.n_train=128", "--set", "eval.n_test=128"]) == 0
    assert json.loads((runs / "simclr-cnn-s0" / "metrics" / "knn.json").read_text())["seeds"] == 2


def _one_line_error(capsys, argv, *needles):
    """The error is one line (no traceback), the last on stderr (config warnings may come before it)."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]
    assert [ln for ln in lines if "error" in ln.lower()] == [err], lines  # one line: no traceback
    assert err.startswith("spatialssl: error: ") and "spatialssl: error: spatialssl:" not in err, err
    assert not any("Traceback" in ln for ln in lines)
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

    from spatialssl import experiments
    from spatialssl.evals.features import eval_device

    class Stop(Exception):
        pass

    seen = []

    def fake_context(path, overrides=None, device="auto", **kw):
        seen.append(eval_device(device))
        raise Stop

    import spatialssl.evals.features as features

    monkeypatch.setattr(features, "context_from_checkpoint", fake_context)  # evaluate imports it when it runs
    assert eval_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(Stop):
        main(["eval", "--checkpoint", str(tmp_path), "--tasks", "knn"])
    with pytest.raises(Stop):
        experiments.evaluate_run(tmp_path, "knn", [])  # what `compare` calls for each run
    assert seen == ["cuda", "cuda"]
    assert eval_device("cpu") == "cpu" and eval_device("cuda:1") == "cuda:1"


TINY_DEMO = ["-c", "demo", "--set", "train.steps=4", "--set", "train.batch_size=16", "--set", "train.log_every=1",
             "--set", "train.checkpoint_every=2", "--set", "data.n_train=64", "--set", "data.n_eval=32",
             "--set", "train.warmup_steps=1"]  # (a run inside its warm-up is warned about)
ESCAPES = ("\r", "\x1b")  # carriage-return frames, ANSI/cursor codes


def _plain_lines(text: str) -> list[str]:
    """Lines without their timestamps (two equal lines a second apart are still a duplicate)."""
    return [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", ln) for ln in text.splitlines() if ln.strip()]


def test_redirected_output_is_plain_lines_once_each(tmp_path, capsys, monkeypatch):
    """pretrain, its resume and eval with output redirected (not a terminal): no \\r frames or
    escape codes, progress as plain lines (every update here: PLAIN_EVERY_S=0), no line twice
    (partsworld's 'generated' line was printed and logged), and a resume warns about nothing
    the first run did not (it warned about 224/96 px views from the defaults)."""
    from spatialssl import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    run = tmp_path / "run"
    argv = ["pretrain", *TINY_DEMO, "--set", f"out_dir={run}", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    runs = []
    for args in (argv, argv, ["eval", "--checkpoint", str(run), "--tasks", "knn", "--set", "eval.n_train=32",
                              "--set", "eval.n_test=32"]):
        assert main(args) == 0
        runs.append(capsys.readouterr())
    for r in runs:
        for text in (r.out, r.err):
            assert not any(e in text for e in ESCAPES), repr(text[:500])
        said = [re.sub(r"^(DEBUG|INFO|WARNING|ERROR) ", "", ln) for ln in _plain_lines(r.out + r.err)]
        assert len(said) == len(set(said)), [ln for ln in said if said.count(ln) > 1]  # printed and logged too
    first, resumed, evaluated = (_plain_lines(r.err) for r in runs)
    assert any(ln.startswith("INFO demo: ") and "/4 (" in ln for ln in first)  # the steps' progress lines
    assert any(ln.startswith("INFO partsworld: generated train") for ln in first)
    assert any(ln.startswith("INFO eval: 1/1") for ln in evaluated)
    assert not [ln for ln in first + resumed + evaluated if ln.startswith("WARNING")]  # the demo's views fit


def test_quiet_shows_no_progress_and_no_info(tmp_path, capsys, monkeypatch):
    from spatialssl import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    assert main(["-q", "pretrain", *TINY_DEMO, "--set", f"out_dir={tmp_path / 'run'}"]) == 0
    err = capsys.readouterr().err
    assert "INFO" not in err and "/4 (" not in err
    assert "INFO step 4/4" in (tmp_path / "run" / "train.log").read_text()  # the run's own log keeps them
    assert main(["pretrain", *TINY_DEMO, "--set", f"out_dir={tmp_path / 'run2'}", "--log-level", "warning"]) == 0
    assert "INFO" not in capsys.readouterr().err


def test_version_and_global_options_after_the_command(capsys):
    from spatialssl import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"spatialssl {__version__}"
    assert main(["config", "-q", "--log-level", "debug"]) == 0  # accepted after the command too


def test_out_dir_defaults_to_the_presets_name(capsys):
    """-c dino then -c dino_sp no longer write to one folder."""
    import yaml

    def resolved(*argv):
        assert main(["config", "-q", *argv]) == 0
        cfg = yaml.safe_load(capsys.readouterr().out)
        return cfg["name"], cfg["out_dir"]

    assert resolved("-c", "dino") == ("dino", "runs/dino")
    assert resolved("-c", "dino_sp") == ("dino_sp", "runs/dino_sp")
    assert resolved("-c", "demo_dino") == ("demo_dino", "runs/demo_dino")  # not its base's name
    assert resolved() == ("run", "runs/run")
    assert resolved("-c", "dino", "--set", "name=x") == ("x", "runs/x")
    assert resolved("-c", "dino", "--set", "out_dir=elsewhere") == ("dino", "elsewhere")


def test_plugin_found_in_the_current_folder_or_named_in_one_line(tmp_path, capsys, monkeypatch):
    import sys

    (tmp_path / "my_plugin_mod.py").write_text("import spatialssl\nspatialssl.PLUGIN_LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["config", "-q", "--plugin", "my_plugin_mod"]) == 0
    import spatialssl

    assert spatialssl.PLUGIN_LOADED
    capsys.readouterr()
    err = _one_line_error(capsys, ["eval", "--plugin", "no_such_plugin_mod", "--checkpoint", str(tmp_path)],
                          "--plugin no_such_plugin_mod", "no module named 'no_such_plugin_mod'", "searched:")
    assert str(tmp_path) in err
    # an import error inside the plugin is the plugin's bug: its traceback is kept
    (tmp_path / "broken_plugin_mod.py").write_text("import no_such_dependency_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        main(["config", "--plugin", "broken_plugin_mod"])


def test_a_library_bug_keeps_its_traceback(monkeypatch, capsys):
    """Only the project's user errors are one line; a ValueError from a bug is raised."""
    from spatialssl import config

    def bug(*a, **k):
        raise ValueError("a bug deep in the library")

    monkeypatch.setattr(config, "resolve", bug)
    with pytest.raises(ValueError, match="a bug deep"):
        main(["config"])
    monkeypatch.setattr(config, "resolve", lambda *a, **k: (_ for _ in ()).throw(config.ConfigError("bad key")))
    _one_line_error(capsys, ["config"], "bad key")


def test_unread_framework_key_is_named(tmp_path, capsys, monkeypatch):
    from spatialssl.engine import trainer

    monkeypatch.setattr(trainer, "pretrain", lambda cfg, **k: tmp_path)  # the check comes before training
    assert main(["-q", "pretrain", "-c", "dino", "--set", "framework.temperature=0.3",
                 "--set", "framework.teacher_temp=0.05"]) == 0
    err = capsys.readouterr().err
    assert "--set framework.temperature: framework 'dino' does not read it" in err and "teacher_temp:" not in err


def test_demo_tasks_and_seeds_are_flags(monkeypatch, tmp_path):
    from spatialssl import experiments

    seen = {}
    monkeypatch.setattr(experiments, "demo", lambda out, overrides: seen.update(out=out, overrides=overrides))
    assert main(["-q", "demo", "--out", str(tmp_path), "--tasks", "knn,linear", "--seeds", "3"]) == 0
    assert seen["overrides"][-2:] == ["eval.seeds=3", "eval.tasks=[knn,linear]"]
    assert main(["demo", "--seeds", "0"]) == 2


def test_a_skipped_task_prints_its_reason(capsys, tmp_path):
    """`eval`/`probe` print why a task was skipped, not an empty `finegrained: {}` (the reason
    was only in a warning), then the verdict table of metrics/summary.md and where the raw
    values are. Plant: the old loop, which printed float values only -> fails."""
    from spatialssl.cli import _print_results

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "summary.md").write_text("# run\n\n| metric | value |\n|---|---:|\n| kNN top-1 ↑ | 0.512 |\n")
    _print_results({"finegrained": {"skipped": "no fine-grained labels in this data set"},
                    "knn": {"top1": 0.51234, "k": 20}}, tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "finegrained: skipped (no fine-grained labels in this data set)"
    assert "| kNN top-1 ↑ | 0.512 |" in out and out[-1].startswith("all values: ")


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_probe_with_no_weights_file_is_one_line(capsys, tmp_path, where):
    """`probe --weights` naming no file (or a folder) is the user's error: one line, exit 2,
    naming the path (it was a traceback)."""
    path = tmp_path / "nope.pth" if where == "missing" else tmp_path
    _one_line_error(capsys, ["probe", "--weights", str(path), "--arch", "resnet18"], str(path),
                    "no such file" if where == "missing" else "a folder")


@pytest.mark.parametrize("argv,needle", [
    (["pretrain", "--set", "data.name=folder", "--set", "data.root={nope}", "--set", "out_dir={tmp}/run",
      "--set", "device=cpu"], "not found"),
    (["eval", "--checkpoint", "{nope}", "--tasks", "knn"], "no checkpoint"),
    (["probe", "--weights", "{nope}", "--arch", "resnet18"], "no such file"),
    (["report", "{nope}", "{nope}2", "--out", "{tmp}/rep"], "does not exist"),
    (["data", "prepare", "--root", "{nope}", "--out", "{tmp}/shards"], "not found"),
    (["config", "-c", "{nope}.yaml"], "no config preset"),
    (["compare", "--budget", "tiny", "--frameworks", "simclr", "--plugin", "no_such_plugin_mod"], "no module named"),
    (["demo", "--plugin", "no_such_plugin_mod"], "no module named"),
])
def test_a_missing_path_is_one_line_in_every_command(capsys, tmp_path, argv, needle):
    """Every command: a file, folder or module that is not there is one line, exit 2, and a
    pretrain that fails before its first step leaves no run folder behind (issue 28)."""
    argv = [a.format(nope=tmp_path / "nope", tmp=tmp_path) for a in argv]
    _one_line_error(capsys, argv, needle)
    assert not (tmp_path / "run").exists()
