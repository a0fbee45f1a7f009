"""benchmarks/study.py: the grid's order and pairing, and one pair end to end on the CPU at
the ``tiny`` budget (a partial run that resumes, workers in subprocesses, a second call
that runs nothing, a time limit that starts nothing it cannot finish)."""

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", REPO / "benchmarks" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["study"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_grid_order(study):
    names = [c.name for c in study.grid()]
    assert len(names) == len(set(names)) == 5 * 2 * 3 * 2 + 2
    # seed 0 of every framework pair on the CNN first, arms adjacent; then the ViT-S/16 pair
    assert names[:10] == [f"{fw}{sp}-cnn-s0" for fw in study.FRAMEWORKS for sp in ("", "_sp")]
    assert names[10:12] == ["dino-vits16-s0", "dino_sp-vits16-s0"]
    # then the further CNN seeds, then every ViT-Tiny cell
    assert all(n.endswith(("-cnn-s1", "-cnn-s2")) for n in names[12:32])
    assert all("-vit_tiny-" in n for n in names[32:])
    assert all(study.parse_cell(n).name == n for n in names)


def test_cpu_grey_is_the_cpu_recipe_on_a_grey_background(study, tmp_path):
    """The cpu_grey budget's cells are the cpu budget's, with a grey background and the
    learning curve's 2,000 steps, and nothing else changed (the learning curve's runs and the
    released checkpoints say so)."""
    for cell in (study.Cell("byol", False, "cnn", 0), study.Cell("dino", True, "cnn", 1)):
        a = _flat(study.cell_config(cell, study.BUDGETS["cpu"], tmp_path, study.ALL_TASKS))
        g = _flat(study.cell_config(cell, study.BUDGETS["cpu_grey"], tmp_path, study.ALL_TASKS))
        assert {k for k in a if a[k] != g[k]} == {"data.background", "train.steps"}
        assert (g["data.background"], g["train.steps"], a["data.background"]) == ("grey", 2000, "scene")


@pytest.mark.parametrize("budget", ["tiny", "gpu"])
def test_pairs_differ_only_in_sp(study, budget, tmp_path):
    """Both arms of every pair resolve, pin the same local flip policy, and differ in sp.enabled only."""
    b = study.BUDGETS[budget]
    cells = study.grid()
    for base in [c for c in cells if not c.sp]:
        mate = study.Cell(base.framework, True, base.backbone, base.seed)
        a = _flat(study.cell_config(base, b, tmp_path, study.ALL_TASKS))
        s = _flat(study.cell_config(mate, b, tmp_path, study.ALL_TASKS))
        diff = {k for k in a if a[k] != s[k]}
        assert diff == {"sp.enabled", "name", "out_dir"}, (base.name, diff)
        assert a["views.local_flip"] == "per_image"
        assert a["seed"] == base.seed and a["data.seed"] == 0
        if base.backbone == "vits16":  # the real preset: ViT-S/16, 224 / 96 px views of 448 px canvases
            assert (a["backbone.name"], a["backbone.patch_size"]) == ("vit_small", 16)
            if budget == "gpu":
                assert (a["views.global_size"], a["views.local_size"], a["data.canvas_size"]) == (224, 96, 448)
        if base.backbone == "cnn" and base.framework != "ibot":
            assert a["backbone.name"] == "resnet_mini"
        if base.backbone == "vit_tiny":
            assert (a["backbone.name"], a["backbone.patch_size"], a["views.global_size"]) == ("vit_tiny", 8, 64)
    dino = _flat(study.cell_config(study.Cell("dino", False, "cnn", 0), b, tmp_path, ["knn"]))
    assert dino["framework.head_batch_norm"] is True  # configs/demo_dino.yaml, as compare uses


def _calls(results):
    return [json.loads(line) for line in (results / "calls.jsonl").read_text().splitlines()]


def test_study_tiny_end_to_end(study, tmp_path):
    results, runs = tmp_path / "results", tmp_path / "runs"
    tasks = ["knn", "linear", "patch_pair"]
    budget = study.BUDGETS["tiny"]
    steps = study.cell_config(study.parse_cell("dino-cnn-s0"), budget, runs, tasks)["train"]["steps"]
    argv = ["--budget", "tiny", "--frameworks", "dino", "--backbones", "cnn", "--seeds", "0",
            "--tasks", ",".join(tasks), "--results", str(results), "--runs", str(runs)]

    # a worker whose deadline leaves time for only part of the run stops with a checkpoint
    cell = study.parse_cell("dino-cnn-s0")
    status = study.run_cell(cell, budget, results, runs, tasks, deadline=time.time() + 5.0)
    assert status == "partial"
    part = study.done_steps(runs / cell.name)
    assert 0 < part < steps and (runs / cell.name / "checkpoint.pt").exists()
    assert study.cell_status(cell, results, runs, budget, tasks) == "partial"

    # the grid (both arms, two worker subprocesses): the partial cell resumes, the other starts
    t0 = time.time()
    assert study.main(argv + ["--workers", "2"]) == 0
    first = time.time() - t0
    assert "resumed from" in (results / cell.name / "worker.log").read_text()
    assert "resumed from" not in (results / "dino_sp-cnn-s0" / "worker.log").read_text()
    for name in ("dino-cnn-s0", "dino_sp-cnn-s0"):
        d = results / name
        for f in ("config.yaml", "train.log", "metrics.jsonl", "command.txt", "commit.txt", "card.txt"):
            assert (d / f).stat().st_size > 0, (name, f)
        assert sorted(p.stem for p in (d / "metrics").glob("*.json")) == sorted(tasks)
        assert json.loads((d / "metrics" / "linear.json").read_text())["seeds"] == budget.eval_seeds
        assert (d / "card.txt").read_text().strip() == study.card_name()
        assert study.card_name().startswith("cpu: ")  # the CPU's model: bf16 numbers differ by CPU
        assert not [p for p in d.rglob("*") if p.name == "checkpoint.pt" or p.name.endswith(".safetensors")
                    or p.name in ("features", "tb")], "checkpoints, feature caches, TensorBoard stay in --runs"
        rec = json.loads((d / "cell.json").read_text())
        assert rec["complete"] and rec["steps_done"] == steps
        assert (runs / name / "checkpoint.pt").exists()
    assert _calls(results)[-1]["started"] == ["dino-cnn-s0", "dino_sp-cnn-s0"]
    summary = (results / "summary.md").read_text()
    assert "| kNN top-1 ↑ |" in summary and "teacher entropy, batch mean" in summary
    assert (results / "report" / "report.md").exists()
    # the figure of the summary's key rows (plant: write_tables not calling figure -> no PNG, fails)
    assert (results / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = [study.parse_cell(n) for n in ("dino-cnn-s0", "dino_sp-cnn-s0")]
    panels = study.figure(cells, results, budget, tasks)
    assert panels[:3] == ["cnn: kNN top-1", "cnn: linear top-1", "cnn: patch-pair R² dx"], panels

    # a second call runs nothing again
    mtime = (results / "dino-cnn-s0" / "metrics" / "knn.json").stat().st_mtime
    t0 = time.time()
    assert study.main(argv) == 0
    assert _calls(results)[-1]["started"] == []
    assert (results / "dino-cnn-s0" / "metrics" / "knn.json").stat().st_mtime == mtime
    assert time.time() - t0 < first / 2

    # a time limit below a cell's expected time (measured: the cells above) starts nothing
    pre, ev = study.expected_times(study.parse_cell("dino-cnn-s1"), budget, study.measured_times(results, budget))
    assert not math.isclose(pre, budget.expected["cnn"][0])  # measured, not the prior
    limit = 2 * budget.margin_s + 0.5 * (pre + ev)
    assert study.main([*argv[:7], "0,1", *argv[8:], "--time-limit", str(limit)]) == 0
    last = _calls(results)[-1]
    assert last["started"] == [] and last["not_started"] == ["dino-cnn-s1", "dino_sp-cnn-s1"]
    assert not (runs / "dino-cnn-s1").exists()


def test_failed_cells_are_skipped(study, tmp_path, capsys):
    """A cell whose worker raised (a non-finite loss, a bug) is not run again on every call."""
    results = tmp_path / "results"
    for name in ("dino-cnn-s0", "dino_sp-cnn-s0"):
        (results / name).mkdir(parents=True)
        (results / name / "cell.json").write_text(json.dumps({"budget": "tiny", "failed": "NonFiniteLoss: x"}))
    argv = ["--budget", "tiny", "--frameworks", "dino", "--backbones", "cnn", "--seeds", "0", "--tasks", "knn",
            "--results", str(results), "--runs", str(tmp_path / "runs")]
    assert study.main(argv) == 0
    assert _calls(results)[-1]["started"] == [] and _calls(results)[-1]["not_started"] == []
    assert "skipping 2 failed cell(s)" in capsys.readouterr().out
    # a cell of another budget in the same folder is an error, not silently reused
    (results / "dino-cnn-s0" / "cell.json").write_text(json.dumps({"budget": "gpu", "complete": True}))
    with pytest.raises(SystemExit, match="budget 'gpu'"):
        study.main(argv)


def test_summary_marks_follow_the_report_rule(study):
    """The summary's Δ over pretraining seeds is marked by report.mark: one seed gets no mark
    (the old rule marked its sign), a diagnostic none, a clear effect over 3 seeds ✓ (✗ for a
    lower-is-better metric), both arms under their random-init floor "≤ floor". Plant: the
    old sign-only rule for one seed: "+0.100 ✓ (1 seed)"."""
    assert study._paired([0.5], [0.6], 1) == "+0.100 † (1 seed)"
    assert study._paired([0.5, 0.5, 0.5], [0.6, 0.7, 0.6], 0) == "–"
    assert study._paired([0.5, 0.5, 0.5], [0.6, 0.61, 0.62], 1).startswith("+0.110 ± 0.010 ✓ (p ")
    assert study._paired([0.5, 0.5, 0.5], [0.6, 0.61, 0.62], -1).startswith("+0.110 ± 0.010 ✗")
    assert study._paired([0.5, 0.5, 0.5], [0.6, 0.4, 0.55], 1).startswith("+0.017 ± 0.104 ≈")
    assert study._paired([0.5, 0.5, 0.5], [0.6, 0.61, 0.62], 1, (0.7, 0.7)).startswith("+0.110 ± 0.010 ≤ floor")
    assert study._paired([0.5, 0.5, 0.5], [0.6, 0.61, 0.62], 1, (0.7, 0.6)).startswith("+0.110 ± 0.010 ✓")
