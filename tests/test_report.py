"""report: pairs runs by framework, writes md/html/PNGs from synthetic run directories."""

import json

import torch
import yaml

from spatialssl import report


def fake_run(root, name, sp, seeds=1, offset=0.0):
    d = root / name
    (d / "metrics").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"name": name, "framework": {"name": "dino"}, "sp": {"enabled": sp},
                                                   "train": {"steps": 30}, "backbone": {"name": "resnet_mini"}}))
    with open(d / "metrics.jsonl", "w") as f:
        for s in range(0, 30, 10):
            row = {"step": s, "loss_fw": 5.0 - s / 10}
            if sp:
                row.update({"loss_sp": 0.5 - s / 100, "sp_r2_ds": s / 100})
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 30, "loss_f')  # a line cut short by an interrupted run is ignored

    def write(task, values, std=None):
        rec = {"task": task, "values": values, "framework": "dino", "sp": sp, "checkpoint": "abc"}
        if seeds > 1:
            rec.update({"seeds": seeds, "std": std or {k: 0.01 for k in values}})
        (d / "metrics" / f"{task}.json").write_text(json.dumps(rec))

    write("knn", {"top1": 0.3 + offset, "chance": 0.1})
    write("linear", {"top1": 0.5 + offset, "chance": 0.1, "best_lr": 0.1})
    write("depth", {"rmse": 2.0 - offset, "abs_rel": 0.2, "delta1": 0.7})
    sev = {f"acc_s{s}": 0.5 - 0.05 * s + offset for s in range(6)}
    write("robustness", {"clean_top1": 0.5 + offset, "mCA": 0.4, "rel_mCA": 0.8, "ood_top1": 0.35,
                         "acc_fog": 0.3, "acc_snow": 0.4, "corruptions": ["fog", "snow"], **sev})
    write("finegrained", {"skipped": "data set has no fine_labels"})
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 3, 24, 24), dtype=torch.uint8, generator=g)
    torch.save({"original": img, "shuffled": img.flip(-1), "reconstructed": img,
                "correct": torch.rand(3, 9, generator=g) > 0.3, "n": 3}, d / "metrics" / "jigsaw_examples.pt")
    sem = torch.randint(0, 4, (3, 24, 24), generator=g)
    torch.save({"images": img, "target": sem, "pred": sem.roll(1, 1), "class_names": ["bg", "a", "b", "c"]},
               d / "metrics" / "segmentation_examples.pt")
    dep = 1 + 9 * torch.rand(3, 24, 24, generator=g)
    torch.save({"images": img, "target": dep, "pred": dep + 0.1, "valid": dep < 9}, d / "metrics" / "depth_examples.pt")
    return d


def test_pairs_and_differences(tmp_path):
    runs = [report.read_run(fake_run(tmp_path, n, sp, offset=o)) for n, sp, o in
            [("dino_sp", True, 0.1), ("dino", False, 0.0), ("simclr", False, 0.0)]]
    runs[2].framework = "simclr"
    cols = report.columns(runs)
    assert [(b.name, s.name if s else None) for b, s in cols] == [("dino", "dino_sp"), ("simclr", None)]
    header, rows = report.table_rows(runs)
    assert header == ["metric", "dino", "dino_sp", "Δ (SP − base)", "simclr"]
    lin = next(r for r in rows if r[0].startswith("linear top-1"))
    assert lin[1:4] == ["0.500", "0.600", "+0.100 ✓"]
    rmse = next(r for r in rows if r[0].startswith("depth RMSE"))
    assert rmse[3] == "-0.100 ✓"  # lower is better


def test_marks_respect_probe_spread_over_seeds(tmp_path):
    """With several evaluation seeds, a difference within 2 combined stds is marked ≈, not ✓."""
    runs = [report.read_run(fake_run(tmp_path, n, sp, seeds=3, offset=o)) for n, sp, o in
            [("dino", False, 0.0), ("dino_sp", True, 0.02)]]  # std 0.01 each: 2 x 0.014 > 0.02
    _, rows = report.table_rows(runs)
    lin = next(r for r in rows if r[0].startswith("linear top-1"))
    assert lin[1:4] == ["0.500 ± 0.010", "0.520 ± 0.010", "+0.020 ≈"]
    assert report._diff(0.5, 0.6, 1, 0.01, 0.01) == "+0.100 ✓"
    assert report._diff(0.5, 0.4, 1, 0.01, 0.01) == "-0.100 ✗"


def test_write_report(tmp_path):
    dirs = [fake_run(tmp_path, "dino", False, seeds=3), fake_run(tmp_path, "dino_sp", True, seeds=3, offset=0.05)]
    md = report.write_report(dirs, tmp_path / "out", "test report")
    text = md.read_text()
    assert "| linear top-1 ↑ | 0.500 ± 0.010 | 0.550 ± 0.010 | +0.050 ✓ |" in text
    assert "data set has no fine_labels" in text
    for png in ("loss_curves", "metrics", "robustness", "jigsaw_examples", "segmentation_examples", "depth_examples"):
        assert (tmp_path / "out" / f"{png}.png").stat().st_size > 1000
        assert f"{png}.png" in text
    assert "<table>" in (tmp_path / "out" / "report.html").read_text()
    assert report.summary_table(dirs).startswith("| metric | dino | dino_sp |")


def test_empty_run_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no metrics" in report.summary_table([tmp_path / "empty"])
    assert report.write_report([tmp_path / "empty"], tmp_path / "out").exists()


def test_labels_are_unique(tmp_path):
    dirs = [fake_run(tmp_path / "a", "run", False), fake_run(tmp_path / "b", "run", True)]
    assert [r.label for r in report.read_runs(dirs)] == ["a/run", "b/run"]
