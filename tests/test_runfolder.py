"""runfolder: the one owner of a run folder (file names, curve, status, weights)."""

import json

import pytest
import torch
import yaml

from spatialssl import config, runfolder
from spatialssl.backbones import create_backbone, export_timm_state_dict
from spatialssl.engine import monitor
from spatialssl.errors import NotFound, UserError


def _write(run, text):
    run.mkdir()
    (run / runfolder.CURVE).write_text(text)
    return run


def test_curve_leaves_out_a_cut_line_blank_lines_and_non_objects(tmp_path):
    run = _write(tmp_path / "run", '{"step": 1, "loss_fw": 2.5}\n\n[1, 2]\n7\n{"step": 2, "loss_fw": 2.0}\n{"step": 3, "lo')
    assert runfolder.read_curve(run) == [{"step": 1, "loss_fw": 2.5}, {"step": 2, "loss_fw": 2.0}]
    assert runfolder.last_step(run) == 2
    assert monitor.read_jsonl(run / "metrics.jsonl") == runfolder.read_curve(run)  # the trainer's reader is this one


def test_a_folder_without_a_curve_has_none(tmp_path):
    assert runfolder.read_curve(tmp_path) == [] and runfolder.last_step(tmp_path) == 0
    assert runfolder.last_step(_write(tmp_path / "run", '{"loss_fw": 1.0}\n{"step": null}\n')) == 0


def test_truncate_keeps_rows_up_to_the_step_and_drops_a_cut_line(tmp_path):
    run = _write(tmp_path / "run", "".join(f'{{"step": {s}}}\n' for s in (1, 2, 3)) + '{"step": 4, "lo')
    monitor.truncate_jsonl(run / "metrics.jsonl", 2)
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_the_report_reads_the_curve_here(tmp_path):
    from spatialssl import report

    run = _write(tmp_path / "run", '{"step": 1, "loss_fw": 2.5}\n{"step": 2, "lo')
    assert report.read_run(run).curve == runfolder.read_curve(run)


# --------------------------------------------------------------------------- status


def test_status_round_trip_is_atomic_and_tolerates_a_missing_or_damaged_file(tmp_path):
    assert runfolder.read_status(tmp_path) is None
    runfolder.write_status(tmp_path, 3, 4)
    status = runfolder.read_status(tmp_path)
    assert (status["step"], status["steps"], status["complete"]) == (3, 4, False) and status["updated"]
    runfolder.write_status(tmp_path, 4, 4, error="non-finite loss")
    status = json.loads((tmp_path / "status.json").read_text())  # the file name others (release, shell) copy
    assert (status["step"], status["complete"], status["error"]) == (4, True, "non-finite loss")
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary file left behind
    (tmp_path / runfolder.STATUS).write_text('{"step": 4, "ste')  # cut short
    assert runfolder.read_status(tmp_path) is None


# --------------------------------------------------------------------------- weights

CFG = config.resolve(["demo"], ["train.steps=4"])


def _backbone(seed: int):
    torch.manual_seed(seed)
    return create_backbone(CFG["backbone"])


def _run(tmp_path, safetensors_seed=None, checkpoint_seed=None, previous_seed=None):
    """A run folder with config.yaml, status.json and the weight files asked for, each from
    its own random backbone (so which one was read can be told)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / runfolder.CONFIG).write_text(yaml.safe_dump(CFG, sort_keys=False))
    runfolder.write_status(run, 4, 4)
    if safetensors_seed is not None:
        export_timm_state_dict(_backbone(safetensors_seed), str(run / runfolder.BACKBONE))
    for seed, name, step in ((checkpoint_seed, runfolder.CHECKPOINT, 4), (previous_seed, runfolder.PREVIOUS, 2)):
        if seed is not None:
            torch.save({"step": step, "config": CFG, "backbone": _backbone(seed).state_dict()}, run / name)
    return run


def _same(state: dict, seed: int) -> bool:
    want = _backbone(seed).state_dict()
    return state.keys() == want.keys() and all(torch.equal(state[k], v) for k, v in want.items())


def test_weights_prefer_the_exported_backbone_then_the_checkpoint(tmp_path):
    run = _run(tmp_path, safetensors_seed=1, checkpoint_seed=2)
    state = runfolder.load_weights(run)
    assert state["_path"].name == runfolder.BACKBONE and _same(state["backbone"], 1)
    assert (state["step"], state["complete"]) == (4, True)  # from status.json
    (run / runfolder.BACKBONE).unlink()
    state = runfolder.load_weights(run)
    assert state["_path"].name == runfolder.CHECKPOINT and _same(state["backbone"], 2) and state["step"] == 4
    direct = runfolder.load_weights(run / runfolder.CHECKPOINT)  # one file of the folder: that file
    assert direct["_path"] == run / runfolder.CHECKPOINT and _same(direct["backbone"], 2)


def test_a_damaged_file_is_reported_and_the_next_one_read(tmp_path, caplog):
    run = _run(tmp_path, safetensors_seed=1, checkpoint_seed=2, previous_seed=3)
    (run / runfolder.BACKBONE).write_bytes(b"\0" * 100)
    with caplog.at_level("WARNING", logger="spatialssl"):
        state = runfolder.load_weights(run)
    assert state["_path"].name == runfolder.CHECKPOINT and _same(state["backbone"], 2)
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and "backbone.safetensors is unreadable" in said[0] and "evaluating checkpoint.pt" in said[0]
    (run / runfolder.CHECKPOINT).write_bytes(b"\0" * 100)
    state = runfolder.load_weights(run)
    assert state["_path"].name == runfolder.PREVIOUS and _same(state["backbone"], 3) and state["step"] == 2
    (run / runfolder.PREVIOUS).write_bytes(b"\0" * 100)
    with pytest.raises(runfolder.CheckpointError, match=r"no readable checkpoint in .*run: .*backbone.safetensors "
                                                        r"is unreadable.*checkpoint.pt is unreadable"):
        runfolder.load_weights(run)


def test_a_folder_without_weights_is_one_error_naming_the_folder_and_the_files(tmp_path):
    run = _run(tmp_path)  # config and status only
    with pytest.raises(runfolder.CheckpointError) as e:
        runfolder.load_weights(run)
    assert str(run) in str(e.value) and all(n in str(e.value) for n in (runfolder.BACKBONE, runfolder.CHECKPOINT))
    assert isinstance(e.value, UserError) and isinstance(e.value, NotFound)  # one line in the CLI; FileNotFoundError
    with pytest.raises(runfolder.CheckpointError, match="no checkpoint at .*nope"):
        runfolder.load_weights(tmp_path / "nope")
    assert runfolder.latest_checkpoint(run) is None  # resuming: nothing to resume from


def test_exported_weights_need_the_config_beside_them(tmp_path):
    run = _run(tmp_path, safetensors_seed=1)
    (run / runfolder.CONFIG).unlink()
    with pytest.raises(runfolder.CheckpointError, match=r"needs the run's config.yaml beside it"):
        runfolder.load_weights(run / runfolder.BACKBONE)


def test_resume_reads_checkpoints_only_the_newest_readable_first(tmp_path):
    run = _run(tmp_path, safetensors_seed=1, checkpoint_seed=2, previous_seed=3)
    state, path, problems = runfolder.latest_checkpoint(run)
    assert path.name == runfolder.CHECKPOINT and _same(state["backbone"], 2) and problems == []
    (run / runfolder.CHECKPOINT).write_bytes(b"\0" * 100)
    state, path, problems = runfolder.latest_checkpoint(run)
    assert path.name == runfolder.PREVIOUS and state["step"] == 2 and "checkpoint.pt is unreadable" in problems[0]


def test_read_config_reads_the_config_systems_yaml(tmp_path):
    """config.yaml is read by the config system's rules everywhere (report, release, eval):
    ``1e-5`` is a float, as ``spatialssl pretrain`` read it (plain yaml.safe_load, YAML 1.1,
    reads it as the string '1e-5'; planted: the report's old safe_load reader fails here)."""
    assert runfolder.read_config(tmp_path) is None
    (tmp_path / runfolder.CONFIG).write_text("train:\n  lr: 1e-5\n")
    assert runfolder.read_config(tmp_path)["train"]["lr"] == 1e-5
    from spatialssl.report.runs import read_run

    assert read_run(tmp_path).config["train"]["lr"] == 1e-5
    (tmp_path / runfolder.CONFIG).write_text("- a list\n")
    with pytest.raises(config.ConfigError, match="must hold a mapping"):
        runfolder.read_config(tmp_path)


def test_slim_copy_keeps_the_small_files_and_the_backbone_of_the_newest_readable_checkpoint(tmp_path):
    """What a device call brings back of an unfinished run (benchmarks/gpu_session.sh).
    Plant: slim_copy reading checkpoint.pt alone (no fallback) -> the damaged case fails."""
    run = _run(tmp_path, checkpoint_seed=2, previous_seed=3)
    state = torch.load(run / runfolder.CHECKPOINT, weights_only=False)
    torch.save({**state, "optimizer": {"big": torch.zeros(1000)}}, run / runfolder.CHECKPOINT)
    (run / runfolder.CURVE).write_text('{"step": 4, "loss": 1.0}\n')
    dest = tmp_path / "slim" / "run"
    assert runfolder.slim_copy(run, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted([runfolder.CONFIG, runfolder.CURVE, runfolder.STATUS,
                                                             runfolder.CHECKPOINT])
    saved = torch.load(dest / runfolder.CHECKPOINT, weights_only=False)
    assert set(saved) == {"config", "backbone", "step"} and saved["step"] == 4
    back = runfolder.load_weights(dest)
    assert _same(back["backbone"], 2) and back["config"] == CFG and runfolder.read_curve(dest)[0]["step"] == 4
    # a damaged newest checkpoint: the previous one is copied
    (run / runfolder.CHECKPOINT).write_bytes(b"\0" * 100)
    assert runfolder.slim_copy(run, tmp_path / "slim2")
    assert _same(runfolder.load_weights(tmp_path / "slim2")["backbone"], 3)
    # no checkpoint (a finished run's safetensors alone is not what this copies): nothing written
    (tmp_path / "b").mkdir()
    bare = _run(tmp_path / "b", safetensors_seed=1)
    assert not runfolder.slim_copy(bare, tmp_path / "slim3") and not (tmp_path / "slim3").exists()
