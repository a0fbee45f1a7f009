"""runfolder: the one reader of a run's metrics.jsonl (trainer resume, report, study)."""

from spatialssl import runfolder
from spatialssl.engine import monitor


def _write(run, text):
    run.mkdir()
    (run / "metrics.jsonl").write_text(text)
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
