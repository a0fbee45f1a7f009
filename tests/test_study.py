"""spatialssl.study: the plan (grid order, arms that differ by what they should, tuning
points), the picks (on validation only), the marks (verdicts beside floors, Holm), the
provenance flags, and the runner end to end on the CPU at the tiny budgets (a partial run
that resumes, workers in subprocesses, tuning then finals, a second call that runs nothing,
a time limit that starts nothing it cannot finish)."""

import json
import math
import time
from pathlib import Path

import pytest

from spatialssl import study
from spatialssl.errors import UserError
from spatialssl.study import plan, summary as summ
from spatialssl.study.scheduler import expected_times, measured_times
from spatialssl.study.worker import card_name, run_cell

REPO = Path(__file__).resolve().parents[1]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_grid_order():
    names = [c.name for c in study.grid()]
    assert len(names) == len(set(names)) == 5 * 2 * 3 * 2 + 2
    # seed 0 of every framework pair on the CNN first, arms adjacent; then the ViT-S/16 pair
    assert names[:10] == [f"{fw}{sp}-cnn-s0" for fw in study.FRAMEWORKS for sp in ("", "_sp")]
    assert names[10:12] == ["dino-vits16-s0", "dino_sp-vits16-s0"]
    assert all(n.endswith(("-cnn-s1", "-cnn-s2")) for n in names[12:32])
    assert all("-vit_tiny-" in n for n in names[32:])
    assert all(study.parse_cell(n).name == n for n in names)
    # three arms: the control beside base and SP, except where SP reuses the framework's views
    fair = [c.name for c in study.grid(["simclr", "dino"], ["cnn"], [0], study.BUDGETS["cpu_tuned"])]
    assert fair == ["simclr-cnn-s0", "simclr_ctl-cnn-s0", "simclr_sp-cnn-s0", "dino-cnn-s0", "dino_sp-cnn-s0"]
    assert study.parse_cell("byol_ctl-cnn-s2") == study.Cell("byol", "ctl", "cnn", 2)


def test_cpu_grey_is_the_cpu_recipe_on_a_grey_background(tmp_path):
    for cell in (study.Cell("byol", "base", "cnn", 0), study.Cell("dino", "sp", "cnn", 1)):
        a = _flat(study.cell_config(cell, study.BUDGETS["cpu"], tmp_path, study.ALL_TASKS))
        g = _flat(study.cell_config(cell, study.BUDGETS["cpu_grey"], tmp_path, study.ALL_TASKS))
        assert {k for k in a if a[k] != g[k]} == {"data.background", "train.steps"}
        assert (g["data.background"], g["train.steps"], a["data.background"]) == ("grey", 2000, "scene")


def test_cpu_tuned_is_cpu_grey_with_a_validation_split(tmp_path):
    """cpu_tuned trains on as many images as cpu_grey (9,000 less 1,000 held out), nothing else
    changes at the default point."""
    cell = study.Cell("byol", "sp", "cnn", 0)
    g = _flat(study.cell_config(cell, study.BUDGETS["cpu_grey"], tmp_path, study.ALL_TASKS))
    t = _flat(study.cell_config(cell, study.BUDGETS["cpu_tuned"], tmp_path, study.ALL_TASKS))
    assert {k for k in g if g[k] != t[k]} == {"data.n_train", "data.holdout", "out_dir"}
    assert t["data.n_train"] - t["data.holdout"] == g["data.n_train"] == 8000


@pytest.mark.parametrize("budget", ["tiny", "gpu", "cpu_tuned"])
def test_arms_differ_only_in_sp_and_its_targets(budget, tmp_path):
    """Every arm resolves with the same local flip policy; base and SP differ in sp.enabled,
    the control and SP only in sp.targets (plant: the control without ``shuffled`` -> fails)."""
    b = study.BUDGETS[budget]
    for base in [c for c in study.grid(backbones=list(b.train), budget=b) if c.arm == "base"]:
        cfg = {a: _flat(study.cell_config(study.Cell(base.framework, a, base.backbone, base.seed), b, tmp_path,
                                          study.ALL_TASKS)) for a in plan.arms_of(base.framework, b)}
        diff = lambda x, y: {k for k in cfg[x] if cfg[x][k] != cfg[y][k]} - {"name", "out_dir"}  # noqa: E731
        assert diff("base", "sp") == {"sp.enabled"}, (base.name, diff("base", "sp"))
        assert cfg["base"]["views.local_flip"] == cfg["sp"]["views.local_flip"] == "per_image"
        assert cfg["base"]["seed"] == base.seed and cfg["base"]["data.seed"] == 0
        if "ctl" in cfg:
            assert diff("ctl", "sp") == {"sp.targets"}
            assert (cfg["ctl"]["sp.targets"], cfg["sp"]["sp.targets"]) == ("shuffled", "geometry")
        if base.backbone == "vits16" and budget == "gpu":
            assert (cfg["base"]["views.global_size"], cfg["base"]["data.canvas_size"]) == (224, 448)
        if base.backbone == "cnn" and base.framework != "ibot":
            assert cfg["base"]["backbone.name"] == "resnet_mini"
    dino = _flat(study.cell_config(study.Cell("dino", "base", "cnn", 0), b, tmp_path, ["knn"]))
    assert dino["framework.head_batch_norm"] is True  # configs/demo_dino.yaml, as compare uses


def test_tuning_points_resolve_against_each_arm(tmp_path):
    b = study.BUDGETS["cpu_tuned"]
    points = plan.grid_points(b.tune)
    assert len(points) == 6 and plan.is_default(points[0])  # the default point first
    cells = plan.tuning_cells(["simclr", "dino"], ["cnn"], b)
    assert len(cells) == 6 * 3 + 6 * 2 and len({c.name for c in cells}) == len(cells)
    lr2 = (("train.lr", "x2"), ("train.schedule_steps", "x1.5"))
    cfg = study.cell_config(study.Cell("dino", "sp", "cnn", 0, lr2, tuning=True), b, tmp_path, ["knn"])
    assert cfg["train"]["lr"] == pytest.approx(0.001) and cfg["train"]["schedule_steps"] == 3000  # dino: 5e-4 x 2
    cfg = study.cell_config(study.Cell("byol", "ctl", "cnn", 0, lr2, tuning=True), b, tmp_path, ["knn"])
    assert cfg["train"]["lr"] == pytest.approx(0.004) and cfg["sp"]["targets"] == "shuffled"
    with pytest.raises(UserError, match="unknown config key 'train.learning_rate'"):
        plan.parse_tune(["train.learning_rate=x1,x2"])
    with pytest.raises(UserError, match="neither a number"):
        plan.parse_tune(["train.lr=x1,fast"])


def _write_val(results, cell, score, split="holdout", holdout=16):
    d = plan.results_dir(cell, results)
    (d / "val" / "metrics").mkdir(parents=True, exist_ok=True)
    (d / "cell.json").write_text(json.dumps({"budget": "tiny_tuned", "complete": True}))
    for task in ("linear", "knn"):
        (d / "val" / "metrics" / f"{task}.json").write_text(json.dumps(
            {"values": {"top1": score}, "eval_config": {"split_test": split}, "data_config": {"holdout": holdout}}))


def test_picks_come_from_validation_only(tmp_path):
    """The pick is the best validation score, ties to the default; a score written on the test
    split is refused (plant: val_score without its split check -> the pick comes from test)."""
    b = study.BUDGETS["tiny_tuned"]
    pts = plan.grid_points(b.tune)
    cells = [study.Cell("simclr", "base", "cnn", 0, p, tuning=True) for p in pts]
    assert study.pick("simclr", "base", "cnn", tmp_path, b, ["knn"]) is None  # nothing done yet
    _write_val(tmp_path, cells[0], 0.50)
    _write_val(tmp_path, cells[1], 0.60)
    assert study.pick("simclr", "base", "cnn", tmp_path, b, ["knn"]) is None  # the other arms not done yet
    for arm in ("ctl", "sp"):
        for p in pts:
            _write_val(tmp_path, study.Cell("simclr", arm, "cnn", 0, p, tuning=True), 0.4)
    pk = study.pick("simclr", "base", "cnn", tmp_path, b, ["knn"])
    assert pk.point == pts[1] and pk.score == 0.60 and pk.overrides == ["train.lr=0.001"]
    _write_val(tmp_path, cells[1], 0.50)  # a tie goes to the default point
    assert study.pick("simclr", "base", "cnn", tmp_path, b, ["knn"]).point == pts[0]
    _write_val(tmp_path, cells[1], 0.99, split="test")
    with pytest.raises(UserError, match="tune on the test data"):
        study.pick("simclr", "base", "cnn", tmp_path, b, ["knn"])
    _write_val(tmp_path, cells[1], 0.99, holdout=0)
    with pytest.raises(UserError, match="data.holdout"):
        study.pick("simclr", "base", "cnn", tmp_path, b, ["knn"])


def test_edge_picks_widen_the_grid_for_every_arm(tmp_path):
    """A pick on the top of the lr grid adds x4 for every arm of the framework (the schedule's
    two values are never "an edge"); picks wait for the new cells; a pick inside the widened
    grid is no edge; after ``widen`` extensions a pick still on the edge is flagged. Plant:
    framework_grid without its widening -> the x2 pick is final and no x4 cell is planned."""
    b = study.BUDGETS["cpu_tuned"]
    arms = plan.arms_of("byol", b)

    def write(points, score):
        for p in points:
            for a in arms:
                c = study.Cell("byol", a, "cnn", 0, p, tuning=True)
                _write_val(tmp_path, c, score(dict(p)))
                rec = json.loads((plan.results_dir(c, tmp_path) / "cell.json").read_text())
                (plan.results_dir(c, tmp_path) / "cell.json").write_text(json.dumps({**rec, "budget": "cpu_tuned"}))

    lr_score = {"x0.5": 0.3, "x1": 0.4, "x2": 0.5, "x4": 0.45, "x8": 0.7}
    score = lambda p: lr_score[p["train.lr"]] + (0.01 if p["train.schedule_steps"] == "x1.5" else 0)  # noqa: E731
    write(plan.grid_points(b.tune), score)
    tune, settled = plan.framework_grid("byol", "cnn", tmp_path, b, ["knn"])
    assert dict(tune)["train.lr"] == ("x0.5", "x1", "x2", "x4") and not settled
    assert study.pick("byol", "base", "cnn", tmp_path, b, ["knn"]) is None  # waits for the x4 cells
    todo = [c.name for c in plan.tuning_cells(["byol"], ["cnn"], b, tmp_path, ["knn"])
            if study.cell_status(c, tmp_path, tmp_path / "runs", b, ["knn"]) != "done"]
    assert sorted(todo) == sorted(f"byol{s}-cnn-s0-lrx4_sched{t}" for s in ("", "_ctl", "_sp") for t in ("x1", "x1.5"))
    write([p for p in plan.grid_points(tune) if dict(p)["train.lr"] == "x4"], score)
    pk = study.pick("byol", "ctl", "cnn", tmp_path, b, ["knn"])
    assert dict(pk.point) == {"train.lr": "x2", "train.schedule_steps": "x1.5"} and pk.edges == []
    lr_score["x4"] = 0.6  # x4 best: widened again (x8), where the pick stays on the edge: flagged
    write([p for p in plan.grid_points(tune) if dict(p)["train.lr"] == "x4"], score)
    tune, _ = plan.framework_grid("byol", "cnn", tmp_path, b, ["knn"])
    assert dict(tune)["train.lr"][-1] == "x8"
    write([p for p in plan.grid_points(tune) if dict(p)["train.lr"] == "x8"], score)
    pk = study.pick("byol", "sp", "cnn", tmp_path, b, ["knn"])
    assert dict(pk.point)["train.lr"] == "x8" and pk.edges == ["train.lr"]
    assert pk.overrides[0] == "train.lr=0.016"  # x8 of BYOL's 0.002


def test_marks_keep_the_verdict_beside_the_floor():
    """A loss at the floor is still a loss: "≤ floor; ✗ (p ...)" (plant: the old rule, no
    verdict under the floor -> fails); a metric without a meaningful floor is never floored."""
    text, p, v = summ.delta_cell([0.5, 0.5, 0.5], [0.4, 0.41, 0.42], 1, (0.7, 0.7))
    assert text.startswith("-0.090 ± 0.010 ≤ floor; ✗ (p ") and v == "✗" and p < 0.05
    text, _, v = summ.delta_cell([0.5, 0.5, 0.5], [0.4, 0.41, 0.42], 1, (0.7, 0.7), floor_ok=False)
    assert "floor;" not in text and "no floor" in text and v == "✗"
    assert summ.delta_cell([0.5], [0.6], 1, (None, None))[0] == "+0.100 † (1 seed)"
    assert summ.delta_cell([0.5] * 3, [0.6, 0.7, 0.6], 0, (None, None))[0] == "–"
    assert summ.delta_cell([0.5] * 3, [0.6, 0.61, 0.62], -1, (None, None))[2] == "✗"
    assert summ.delta_cell([0.5] * 3, [0.6, 0.4, 0.55], 1, (None, None))[2] == "≈"
    from spatialssl.evals import floor_meaningful

    assert not floor_meaningful("robustness", "rel_mCA") and floor_meaningful("robustness", "mCA")


def test_holm():
    assert summ.holm([0.001, 0.02, 0.04]) == [True, True, True]  # 0.001 <= .05/3, 0.02 <= .05/2, 0.04 <= .05
    assert summ.holm([0.001, 0.03, 0.04]) == [True, False, False]  # 0.03 > 0.05 / 2: it and all after it fail
    assert summ.holm([0.01, 0.012, 0.3]) == [True, True, False]
    assert summ.holm([0.2, 0.001]) == [False, True]


class _FakeRun:
    def __init__(self, path):
        self.path = path


def test_provenance_flags_arms_on_different_machines(tmp_path):
    """Plant: provenance_section without its comparison -> the differing pair is not flagged."""
    groups = {"cnn": {"byol": []}}
    for s, cpus in ((0, ("AMD EPYC", "AMD EPYC")), (1, ("Intel Xeon", "AMD EPYC"))):
        g = {}
        for arm, cpu in zip(("base", "sp"), cpus):
            d = tmp_path / f"{arm}{s}"
            d.mkdir()
            (d / "card.txt").write_text(f"device: cpu: {cpu}\ncpu: {cpu}\ntorch: 2.14.1\ncommit: abc\n")
            g[arm] = _FakeRun(d)
        groups["cnn"]["byol"].append((s, g))
    text = "\n".join(summ.provenance_section(groups))
    assert "| byol (cnn) | 0 |" in text and "⚠ device, cpu" in text
    assert "byol seed 1 (device, cpu)" in text and "byol seed 0" not in text.split("⚠ Arms")[1]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "card.txt").write_text("cpu\n")  # a card of the earlier studies
    from spatialssl.study.worker import read_card

    (tmp_path / "old" / "commit.txt").write_text("abc123\n")
    assert read_card(tmp_path / "old") == {"device": "cpu (model not recorded)", "commit": "abc123"}


def _calls(results):
    return [json.loads(line) for line in (results / "calls.jsonl").read_text().splitlines()]


def test_study_tiny_end_to_end(tmp_path):
    """The earlier two-arm budget: partial cell resumes, subprocess workers, skip when done,
    time limit."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    tasks = ["knn", "linear", "patch_pair"]
    budget = study.BUDGETS["tiny"]
    cell = study.parse_cell("dino-cnn-s0")
    steps = study.cell_config(cell, budget, runs, tasks)["train"]["steps"]
    argv = ["--budget", "tiny", "--frameworks", "dino", "--backbones", "cnn", "--seeds", "0",
            "--tasks", ",".join(tasks), "--results", str(results), "--runs", str(runs)]
    assert run_cell(cell, budget, results, runs, tasks, deadline=time.time() + 5.0) == "partial"
    from spatialssl import runfolder

    part = runfolder.last_step(runs / cell.name)
    assert 0 < part < steps and (runs / cell.name / "checkpoint.pt").exists()
    assert study.cell_status(cell, results, runs, budget, tasks) == "partial"

    t0 = time.time()
    assert study.main(argv + ["--workers", "2"]) == 0
    first = time.time() - t0
    assert "resumed from" in (results / cell.name / "worker.log").read_text()
    for name in ("dino-cnn-s0", "dino_sp-cnn-s0"):
        d = results / name
        for f in ("config.yaml", "train.log", "metrics.jsonl", "command.txt", "commit.txt", "card.txt"):
            assert (d / f).stat().st_size > 0, (name, f)
        assert sorted(p.stem for p in (d / "metrics").glob("*.json")) == sorted(tasks)
        assert (d / "metrics" / "knn_outcomes.npz").exists()  # seed 0 keeps its compact outcomes
        card = (d / "card.txt").read_text()
        assert f"device: {card_name()}" in card and "torch: " in card and "lightly: " in card and "commit: " in card
        assert not [p for p in d.rglob("*") if p.name == "checkpoint.pt" or p.name.endswith(".safetensors")
                    or p.name in ("features", "tb")], "checkpoints, feature caches, TensorBoard stay in --runs"
        rec = json.loads((d / "cell.json").read_text())
        assert rec["complete"] and rec["steps_done"] == steps and rec["provenance"]["torch"]
    assert set(_calls(results)[-1]["started"]) == {"dino-cnn-s0", "dino_sp-cnn-s0"}
    text = (results / "summary.md").read_text()
    assert "| kNN top-1 ↑ |" in text and "teacher entropy, batch mean" in text and "## Provenance" in text
    assert (results / "report" / "report.md").exists()
    assert (results / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    mtime = (results / "dino-cnn-s0" / "metrics" / "knn.json").stat().st_mtime
    t0 = time.time()
    assert study.main(argv) == 0  # a second call runs nothing
    assert _calls(results)[-1]["started"] == []
    assert (results / "dino-cnn-s0" / "metrics" / "knn.json").stat().st_mtime == mtime
    assert time.time() - t0 < first / 2

    pre, ev = expected_times(study.parse_cell("dino-cnn-s1"), budget, measured_times(results, budget))
    assert not math.isclose(pre, budget.expected["cnn"][0])  # measured, not the prior
    limit = 2 * budget.margin_s + 0.5 * (pre + ev)
    assert study.main([*argv[:7], "0,1", *argv[8:], "--time-limit", str(limit)]) == 0
    last = _calls(results)[-1]
    assert last["started"] == [] and set(last["not_started"]) == {"dino-cnn-s1", "dino_sp-cnn-s1"}


def test_tuned_study_end_to_end(tmp_path, capsys):
    """Three arms tuned alike on validation, then each arm's finals at its pick: the tuning
    seed's final cell reuses its tuning run; the summary has the tuning table, default vs
    default, best vs best with the control, Holm and provenance."""
    results, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["--budget", "tiny_tuned", "--frameworks", "simclr", "--seeds", "0", "--tasks", "knn,linear",
            "--results", str(results), "--runs", str(runs)]
    assert study.main(argv) == 0
    started = _calls(results)[-1]["started"]
    tunes = [n for n in started if n.count("-") == 3]
    assert len(tunes) == 6 and len(started) == 9  # 2 points x 3 arms, then 3 finals
    for arm in ("simclr", "simclr_ctl", "simclr_sp"):
        d = results / f"{arm}-cnn-s0"
        rec = json.loads((d / "cell.json").read_text())
        assert rec["complete"] and rec["run"].startswith(f"{arm}-cnn-s0-lrx")  # its pick's tuning run
        val = json.loads((results / "tune" / f"{arm}-cnn-s0-lrx1" / "val" / "metrics" / "linear.json").read_text())
        assert val["eval_config"]["split_test"] == "holdout" and val["data_config"]["holdout"] == 16
        test = json.loads((d / "metrics" / "linear.json").read_text())
        assert test["eval_config"]["split_test"] == "test"
    text = (results / "summary.md").read_text()
    assert "## Tuning" in text and "lrx1 (default)" in text and "## Default vs default" in text
    assert "simclr control" in text and "Δ SP − better of base, control" in text and "## Provenance" in text
    assert not list(runs.glob("simclr*-cnn-s0"))  # no final trained twice
    out = capsys.readouterr().out
    study.main(argv + ["--readme-table"])
    table = capsys.readouterr().out
    assert table.startswith("| metric | simclr | simclr control | simclr + SP |") and "kNN top-1" in table
    assert out


def _blocks(text):
    import re

    return re.findall(r"<!-- study table: (\S+) (\S+) -->\n(.*?)<!-- /study table -->", text, re.S)


@pytest.mark.parametrize("page", ["README.md", "docs/study.md"])
def test_result_tables_are_generated(page):
    """Every study table in README.md and docs/study.md is what `spatialssl compare
    --readme-table` prints for the committed results (plant: edit a digit in README's
    table -> fails)."""
    blocks = _blocks((REPO / page).read_text())
    assert blocks, f"{page} has no generated study table"
    for budget, frameworks, body in blocks:
        res = REPO / "results" / "study" / budget
        expected = summ.readme_table(study.BUDGETS[budget], frameworks.split(","), ["cnn"], study.SEEDS, res,
                                     study.ALL_TASKS)
        assert body.strip() == expected.strip(), (f"{page}'s {budget} table is out of date: run `spatialssl compare "
                                                  f"--budget {budget} --frameworks {frameworks} --out {res.relative_to(REPO)} "
                                                  f"--readme-table`")
