"""report: pairs runs by framework, tests Δ by a paired bootstrap over test items, refuses
pairs that differ in more than SP, marks incomplete runs; md/html/PNGs from synthetic run
directories in the evaluation's file format (metrics/<task>.json, <task>_outcomes.pt)."""

import json
import math

import pytest
import torch
import yaml

from spatialssl import config as config_mod
from spatialssl import evals, report
from spatialssl.cli import main

EVAL = {"tasks": ["knn", "linear"], "n_train": 100, "n_test": 200, "knn_k": 20, "knn_t": 0.07, "seeds": 1}


def config(name, sp, **changes):
    cfg = {"name": name, "out_dir": f"runs/{name}", "framework": {"name": "dino"},
           "sp": {"enabled": sp, "weight": 0.5}, "train": {"steps": 30, "lr": 0.001, "progress": False},
           "backbone": {"name": "resnet_mini", "width": 16}, "data": {"name": "partsworld", "seed": 0},
           "views": {"local_flip": "per_image", "n_local": 4}}
    for key, v in changes.items():  # "views__local_flip" -> cfg["views"]["local_flip"]
        *head, last = key.split("__")
        d = cfg
        for h in head:
            d = d[h]
        d[last] = v
    return cfg


def fake_run(root, name, sp, seeds=1, offset=0.0, step=30, complete=True, eval_config=None, values=None,
             figures=True, data_config=None, **changes):
    """A run folder as pretrain + evaluate write it (values only, no outcomes files)."""
    d = root / name
    (d / "metrics").mkdir(parents=True)
    cfg = config(name, sp, **changes)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    with open(d / "metrics.jsonl", "w") as f:
        for s in range(10, step + 1, 10):
            row = {"step": s, "loss_fw": 5.0 - s / 10}
            if sp:
                row.update({"loss_sp": 0.5 - s / 100, "sp_r2_ds": s / 100})
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 40, "loss_f')  # a line cut short by an interrupted run is ignored

    def write(task, vals, std=None):
        rec = {"task": task, "values": vals, "framework": "dino", "sp": sp, "checkpoint": "abc", "seed": 0,
               "eval_config": dict(eval_config or EVAL), "step": step,
               "data_config": dict(data_config or cfg["data"]), "complete": complete, "n_test": 200}
        if seeds > 1:
            rec.update({"seeds": seeds, "std": std or {k: 0.01 for k in vals}})
        (d / "metrics" / f"{task}.json").write_text(json.dumps(rec))

    write("knn", {"top1": 0.3 + offset, "chance": 0.1, "k": 20, "random_top1": 0.15, **(values or {})})
    write("linear", {"top1": 0.5 + offset, "chance": 0.1, "best_lr": 0.1, "random_top1": 0.2,
                     "supervised_top1": 0.9})
    write("patch_pair", {"r2_ds": 0.4 + offset, "train_r2_ds": 0.9 + offset, "random_r2_ds": 0.05})
    write("depth", {"rmse": 2.0 - offset, "abs_rel": 0.2, "delta1": 0.7, "random_rmse": 3.0})
    write("finegrained", {"skipped": "data set has no fine_labels"})
    if not figures:
        return d
    sev = {f"acc_s{s}": 0.5 - 0.05 * s + offset for s in range(6)}
    write("robustness", {"clean_top1": 0.5 + offset, "mCA": 0.4, "rel_mCA": 0.8, "ood_top1": 0.35,
                         "acc_fog": 0.3, "acc_snow": 0.4, "corruptions": ["fog", "snow"], **sev})
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


def correct(n, acc, seed):
    """x [n]: 1.0 for a correct prediction, a fraction ``acc`` of them, in random positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n)
    x[torch.randperm(n, generator=g)[: round(acc * n)]] = 1.0
    return x


def set_top1(d, task, per_seed_x):
    """Write ``<task>_outcomes.pt`` (kind mean) and make the JSON's top-1 agree with it."""
    torch.save({"seeds": [{"top1": {"kind": "mean", "x": x}} for x in per_seed_x]},
               d / "metrics" / f"{task}_outcomes.pt")
    p = d / "metrics" / f"{task}.json"
    rec = json.loads(p.read_text())
    rec["values"]["top1"] = float(torch.stack(per_seed_x).mean(1).mean())
    p.write_text(json.dumps(rec))


def row(rows, label):
    return next(r for r in rows if r[0].startswith(label))


# ---------------------------------------------------------------------------- marks


def test_pairs_and_no_mark_without_outcomes(tmp_path):
    """Without per-item outcomes a Δ has no test: shown with †, never a sign-only ✓ / ✗."""
    runs = [report.read_run(fake_run(tmp_path, n, sp, offset=o)) for n, sp, o in
            [("dino_sp", True, 0.1), ("dino", False, 0.0), ("simclr", False, 0.0)]]
    runs[2].framework = "simclr"
    cols = report.columns(runs)
    assert [(b.name, s.name if s else None) for b, s in cols] == [("dino", "dino_sp"), ("simclr", None)]
    header, rows = report.table_rows(runs)
    assert header == ["metric", "dino", "dino_sp", "Δ (SP − base)", "simclr"]
    assert row(rows, "linear top-1")[1:4] == ["0.500", "0.600", "+0.100 †"]
    assert row(rows, "depth RMSE")[3] == "-0.100 †"
    assert not any("✓" in c or "✗" in c for r in rows for c in r)


def test_no_mark_without_outcomes_even_with_seed_std(tmp_path):
    """Several seeds with a std but no outcomes: still no mark (the std of the probe seed is
    not the test-set sampling error)."""
    runs = [report.read_run(fake_run(tmp_path, n, sp, seeds=3, offset=o)) for n, sp, o in
            [("dino", False, 0.0), ("dino_sp", True, 0.3)]]
    _, rows = report.table_rows(runs)
    assert row(rows, "linear top-1")[1:4] == ["0.500 ± 0.010", "0.800 ± 0.010", "+0.300 †"]


def test_diagnostics_and_floors_are_never_marked(tmp_path):
    """chance, k, best_lr, random_*, supervised_*, train_* get "–" in the Δ column, even when
    outcomes exist and the values differ; floors and references are shown under their metric."""
    dirs = [fake_run(tmp_path, "dino", False), fake_run(tmp_path, "dino_sp", True, offset=0.2,
                                                         values={"chance": 0.2, "k": 10})]
    for d, acc in zip(dirs, (0.3, 0.5)):
        set_top1(d, "knn", [correct(200, acc, 0)])
    runs = report.read_runs(dirs)
    _, rows = report.table_rows(runs)
    i = rows.index(row(rows, "kNN top-1 ↑"))
    assert rows[i + 1] == ["↳ random-init", "0.150", "0.150", "–"]
    j = rows.index(row(rows, "linear top-1 ↑"))
    assert rows[j + 1][0] == "↳ random-init" and rows[j + 2] == ["↳ supervised", "0.900", "0.900", "–"]
    pp = row(rows, "patch-pair R² ds (probe-train)")
    assert pp[1:] == ["0.900", "1.100", "–"] and "↑" not in pp[0]
    details = {t: rows for t, _, rows in report.detail_tables(runs)}
    for key in ("chance", "k", "random_top1"):
        assert row(details["knn"], key)[3] == "–", key
    for key in ("best_lr", "supervised_top1"):
        assert row(details["linear"], key)[3] == "–", key
    assert row(details["knn"], "top1")[3].endswith("✓")
    zero = [("patch_pair", "train_r2_ds"), ("patch_pair", "train_sign_acc_dx"), ("patch_pair", "random_r2_ds"),
            ("segmentation", "random_miou"), ("linear", "supervised_top1"), ("jigsaw", "top1_shuffled"),
            ("linear", "best_lr"), ("linear", "val_acc"), ("knn", "chance"), ("segmentation", "n_classes"),
            ("segmentation", "majority_miou"), ("knn", "k"), ("knn", "t"), ("knn", "n_train"), ("knn", "n_test"),
            ("jigsaw", "chance_tile"), ("jigsaw", "n"), ("depth", "mean_rmse"), ("depth", "valid_frac"),
            ("robustness", "n_ood"), ("nonesuch", "top1")]
    for task, k in zero:
        assert report.direction(task, k) == 0, (task, k)
    signs = [("knn", "top1", 1), ("segmentation", "miou", 1), ("segmentation", "iou_wheel", 1),
             ("patch_pair", "r2_dx", 1), ("patch_pair", "sign_acc_ds", 1), ("patch_pair", "mae", -1),
             ("depth", "rmse", -1), ("depth", "abs_rel", -1), ("depth", "delta1", 1), ("robustness", "mCA", 1),
             ("robustness", "acc_fog_s3", 1), ("jigsaw", "tile_acc_greedy", 1),
             ("finegrained", "linear_coarse_consistent", 1)]
    assert [report.direction(t, k) for t, k, _ in signs] == [s for _, _, s in signs]
    # the summary rows and the floors read the same declaration (evals.METRICS)
    assert all(sign == evals.direction(t, k) for t, k, _, sign in report.KEY_METRICS)
    assert evals.metric_keys("patch_pair", {"r2_ds": 0.1, "train_r2_ds": 0.2, "n_test": 9, "chance": 0.5}) == \
        ["r2_ds", "train_r2_ds"]
    assert evals.metric_keys("depth", {"rmse": 1.0, "mean_rmse": 2.0, "valid_frac": 0.9}) == ["rmse"]


def test_nan_is_a_dash_never_a_signed_mark(tmp_path):
    """Old metric files hold bare NaN (json allow_nan): the cell is "–", never "+nan ✗"."""
    dirs = [fake_run(tmp_path, "dino", False), fake_run(tmp_path, "dino_sp", True)]
    p = dirs[1] / "metrics" / "knn.json"
    p.write_text(p.read_text().replace('"top1": 0.3', '"top1": NaN'))
    p = dirs[0] / "metrics" / "depth.json"
    p.write_text(p.read_text().replace('"rmse": 2.0', '"rmse": Infinity'))
    _, rows = report.table_rows(report.read_runs(dirs))
    assert row(rows, "kNN top-1")[1:] == ["0.300", "–", "–"]
    assert row(rows, "depth RMSE")[1:] == ["–", "2.000", "–"]
    assert not any("nan" in c.lower() or "inf" in c.lower() for r in rows for c in r)
    assert report._diff(float("nan"), 0.5, 1) == "–" and report._diff(0.5, None, 1) == "–"
    assert [report._fmt(v, s, True) for v, s in [(20.0, None), (256.0, 0.0), (0.1, None), (float("nan"), 0.1)]] \
        == ["20", "256 ± 0", "0.100", "–"]
    assert [report._fmt(v, s) for v, s in [(2.0, None), (2.5, 0.01)]] == ["2.000", "2.500 ± 0.010"]


def test_identical_outcomes_are_not_significant(tmp_path):
    dirs = [fake_run(tmp_path, "dino", False), fake_run(tmp_path, "dino_sp", True)]
    for d in dirs:
        set_top1(d, "knn", [correct(200, 0.4, 0)])
    _, rows = report.table_rows(report.read_runs(dirs))
    assert row(rows, "kNN top-1")[3] == "+0.000 [+0.000, +0.000] ≈"


def test_clearly_better_and_worse_arms_are_marked(tmp_path):
    """400 items, 0.40 vs 0.60 (the SP arm right on every item the baseline gets right, and 80
    more): ✓; the reverse: ✗; 0.50 vs 0.51 with independent errors: ≈."""
    dirs = [fake_run(tmp_path, "dino", False), fake_run(tmp_path, "dino_sp", True)]
    base = correct(400, 0.4, 0)
    better = base.clone()
    better[(base == 0).nonzero()[:80, 0]] = 1.0
    set_top1(dirs[0], "knn", [base])
    set_top1(dirs[1], "knn", [better])
    set_top1(dirs[0], "linear", [better])
    set_top1(dirs[1], "linear", [base])
    runs = report.read_runs(dirs)
    _, rows = report.table_rows(runs)
    knn, lin = row(rows, "kNN top-1")[3], row(rows, "linear top-1")[3]
    assert knn.startswith("+0.200 [+0.1") and knn.endswith("✓")
    assert lin.startswith("-0.200 [-0.2") and lin.endswith("✗")
    t = report.paired_bootstrap([{"top1": {"kind": "mean", "x": correct(400, 0.5, 1)}}],
                                [{"top1": {"kind": "mean", "x": correct(400, 0.51, 2)}}], "top1")
    assert t.lo < 0 < t.hi and t.mark(1) == "≈"


def test_bootstrap_is_paired(tmp_path):
    """The SP arm = the baseline with 12 of 400 wrong items made right (Δ = +0.03). Paired, the
    interval is about ±0.017 and excludes 0; resampling the arms independently it would be
    about ±0.07 and include 0."""
    base = correct(400, 0.5, 3)
    sp = base.clone()
    sp[(base == 0).nonzero()[:12, 0]] = 1.0
    t = report.paired_bootstrap([{"top1": {"kind": "mean", "x": base}}], [{"top1": {"kind": "mean", "x": sp}}], "top1")
    assert t.delta == pytest.approx(0.03)
    assert 0.005 < t.lo < 0.03 < t.hi < 0.055 and t.mark(1) == "✓"
    dirs = [fake_run(tmp_path, "dino", False), fake_run(tmp_path, "dino_sp", True)]
    set_top1(dirs[0], "knn", [base])
    set_top1(dirs[1], "knn", [sp])
    _, rows = report.table_rows(report.read_runs(dirs))
    assert row(rows, "kNN top-1")[3].endswith("✓")


def test_bootstrap_is_reproducible_and_covers_the_truth():
    """Fixed seed: the same interval twice. Two arms of 500 items with accuracies 0.70 and 0.60
    drawn independently: the interval holds 0.1 and has the binomial width (±1.96·0.030)."""
    a, b = correct(500, 0.6, 4), correct(500, 0.7, 5)
    arm = lambda x: [{"top1": {"kind": "mean", "x": x}}]  # noqa: E731
    t1, t2 = report.paired_bootstrap(arm(a), arm(b), "top1"), report.paired_bootstrap(arm(a), arm(b), "top1")
    assert (t1.lo, t1.hi) == (t2.lo, t2.hi)
    se = math.sqrt((0.6 * 0.4 + 0.7 * 0.3) / 500)
    assert t1.lo < 0.1 < t1.hi
    assert (t1.hi - t1.lo) / 2 == pytest.approx(1.96 * se, rel=0.2)


def test_seed_spread_widens_the_interval():
    """Two eval seeds whose Δ disagree (+0.10 and 0.00 on the same 400 items): each seed's item
    bootstrap is narrow, but the between-seed spread (t with 1 df) makes the interval include 0."""
    base = correct(400, 0.4, 6)
    up = base.clone()
    up[(base == 0).nonzero()[:40, 0]] = 1.0
    arm = lambda xs: [{"top1": {"kind": "mean", "x": x}} for x in xs]  # noqa: E731
    t = report.paired_bootstrap(arm([base, base]), arm([up, base]), "top1")
    assert t.delta == pytest.approx(0.05) and t.n_seeds == 2
    assert t.lo < 0 < t.hi and t.mark(1) == "≈"
    h = 12.706 * math.sqrt(0.005) / math.sqrt(2)  # t(0.975, 1) · sd of (0.1, 0) / sqrt(2)
    assert t.hi - t.delta >= h - 1e-6
    same = report.paired_bootstrap(arm([base, base]), arm([up, up]), "top1")
    assert same.mark(1) == "✓" and same.hi - same.lo < 0.07  # agreeing seeds: no widening


def test_metric_kinds_known_answers():
    """Each outcome kind on the whole test set (all counts 1) gives its formula."""
    ones = torch.ones(1, 4, dtype=torch.float64)
    arr = lambda **k: {f: torch.as_tensor(v, dtype=torch.float64) for f, v in k.items()}  # noqa: E731
    assert float(report.metric_from_counts("mean", arr(x=[1, 0, 1, 1]), ones)) == pytest.approx(0.75)
    assert float(report.metric_from_counts("rmse", arr(sq=[1, 4, 9, 2]), ones)) == pytest.approx(2.0)
    kind, a, _ = report._outcome({"kind": "r2", "err2": [1.0, 1, 1, 1], "target": [10.0, 12, 14, 16]}, "r2")
    assert float(report.metric_from_counts(kind, a, ones)) == pytest.approx(1 - 4 / 20)  # centred
    raw = arr(err2=[1, 1, 1, 1], target=[10, 12, 14, 16])  # centred by the formula too, not only by _outcome
    assert float(report.metric_from_counts("r2", raw, ones)) == pytest.approx(1 - 4 / 20)
    # class 2 never present (union 0): left out of the mean, not counted as 0
    inter = [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]]
    union = [[2, 1, 0], [1, 1, 0], [1, 2, 0], [0, 0, 0]]
    m = report.metric_from_counts("miou", arr(inter=inter, union=union), ones)
    assert float(m) == pytest.approx((2 / 4 + 2 / 4) / 2)
    w = torch.tensor([[2.0, 0, 0, 2]], dtype=torch.float64)  # a resample: items 0, 0, 3, 3
    assert float(report.metric_from_counts("mean", arr(x=[1, 0, 1, 0]), w)) == pytest.approx(0.5)


def test_dense_kinds_are_tested(tmp_path):
    """rmse (lower is better) and miou outcomes: the arm with smaller errors / more overlap gets ✓."""
    g = torch.Generator().manual_seed(7)
    sq = torch.rand(300, generator=g) + 1.0
    base = [{"rmse": {"kind": "rmse", "sq": sq}, "miou": {"kind": "miou", "inter": torch.full((300, 3), 1.0),
                                                           "union": torch.full((300, 3), 2.0)}}]
    sp = [{"rmse": {"kind": "rmse", "sq": sq * 0.5}, "miou": {"kind": "miou", "inter": torch.full((300, 3), 1.5),
                                                               "union": torch.full((300, 3), 2.0)}}]
    t = report.paired_bootstrap(base, sp, "rmse")
    assert t.delta < 0 and t.mark(-1) == "✓" and t.mark(1) == "✗"
    t = report.paired_bootstrap(base, sp, "miou")
    assert t.delta == pytest.approx(0.25) and t.mark(1) == "✓"
    with pytest.raises(ValueError, match="item count"):
        report.paired_bootstrap(base, [{"rmse": {"kind": "rmse", "sq": sq[:10]}}], "rmse")


def test_outcomes_that_cannot_be_paired_give_no_test(tmp_path):
    """Different item counts, or one run without outcomes: Δ with †, and the reason in the report."""
    dirs = [fake_run(tmp_path, "dino", False, figures=False), fake_run(tmp_path, "dino_sp", True, offset=0.2,
                                                                      figures=False)]
    set_top1(dirs[0], "knn", [correct(200, 0.3, 0)])
    set_top1(dirs[1], "knn", [correct(100, 0.5, 0)])
    set_top1(dirs[1], "linear", [correct(200, 0.7, 0)])
    _, rows = report.table_rows(report.read_runs(dirs))
    assert row(rows, "kNN top-1")[3] == "+0.200 †"
    assert row(rows, "linear top-1")[3] == "+0.200 †"
    text = report.write_report(dirs, tmp_path / "out").read_text()
    assert "item count" in text and "no linear_outcomes.npz for dino" in text


# ---------------------------------------------------------------------------- comparable pairs


@pytest.mark.parametrize("change, key", [
    ({"backbone__width": 32}, "backbone.width"),
    ({"data__seed": 1}, "data.seed"),
    ({"train__steps": 60, "step": 60}, "train.steps"),
    ({"views__local_flip": "per_view"}, "views.local_flip"),
    ({"eval_config": {**EVAL, "knn_k": 10}}, "eval_config[knn].knn_k"),
    ({"data_config": {"name": "partsworld", "seed": 0, "n_eval": 50}}, "data_config[knn].n_eval"),
])
def test_mismatched_pair_is_refused(tmp_path, change, key):
    dirs = [fake_run(tmp_path, "dino", False, figures=False), fake_run(tmp_path, "dino_sp", True, figures=False,
                                                                         **change)]
    with pytest.raises(ValueError) as e:
        report.write_report(dirs, tmp_path / "out")
    assert key in str(e.value) and str(dirs[0]) in str(e.value) and str(dirs[1]) in str(e.value)
    # the default-flip mismatch names the --set that fixes it (issue 28); the others have no such fix
    assert ("--set views.local_flip=per_view" in str(e.value)) == (key == "views.local_flip")
    assert not (tmp_path / "out" / "report.md").exists()
    with pytest.raises(ValueError, match="not comparable"):
        report.summary_table(dirs)
    assert main(["report", *map(str, dirs), "--out", str(tmp_path / "out")]) == 2
    # allowed: marked loudly, Δ untested
    header, rows = report.table_rows(report.read_runs(dirs), allow_mismatch=True)
    assert header[3] == "Δ (SP − base) ⚠ NOT COMPARABLE" and row(rows, "kNN top-1")[3] == "+0.000 ‡"
    allowed = [key.split("[")[0], "data_config"]  # data.seed changes the eval's data_config too
    header, _ = report.table_rows(report.read_runs(dirs), allow_mismatch=allowed)
    assert header[3].endswith("NOT COMPARABLE")  # this key allowed: marked
    other = "data" if key.startswith("backbone") else "backbone"
    with pytest.raises(ValueError, match=key.split("[")[0]):  # another key allowed: still refused
        report.table_rows(report.read_runs(dirs), allow_mismatch=[other])
    if key == "views.local_flip":  # the whole report once (figures cost seconds)
        text = report.write_report(dirs, tmp_path / "out", allow_mismatch=True).read_text()
        assert ("dino and dino_sp are NOT COMPARABLE: they differ in views.local_flip ('per_image' vs 'per_view')"
                in text)
        assert "| dino / dino_sp | per_image / per_view | ⚠ NOT COMPARABLE: views.local_flip" in text


def test_sp_name_and_folder_may_differ_and_flip_policy_is_stated(tmp_path):
    dirs = [fake_run(tmp_path, "dino", False, figures=False),
            fake_run(tmp_path, "dino_sp", True, figures=False, sp__weight=1.0, train__progress=True,
                     data__workers=4)]  # decoding processes (training and eval) change no number
    runs = report.read_runs(dirs)
    cols = report.columns(runs)
    _, pairs = report._pairs_section(cols, report.check_pairs(cols))
    assert pairs == [["dino / dino_sp", "per_image / per_image", "no (SP alone)"]]
    dirs.append(fake_run(tmp_path, "dino_lr", False, figures=False, train__lr=0.1))
    base, _ = report.columns(report.read_runs(dirs))[0]
    assert base.name == "dino"


def test_pairing_prefers_a_comparable_mate(tmp_path):
    """A baseline trained on other data does not take the SP run's comparable baseline."""
    dirs = [fake_run(tmp_path, "other", False, figures=False, data__seed=5),
            fake_run(tmp_path, "dino_sp", True, figures=False), fake_run(tmp_path, "dino", False, figures=False)]
    cols = report.columns(report.read_runs(dirs))
    assert [(b.name, s.name if s else None) for b, s in cols] == [("other", None), ("dino", "dino_sp")]
    report.table_rows(report.read_runs(dirs))  # no pair differs: not refused


def clearly_better(dirs, task="knn"):
    """400 items, 0.40 vs 0.60, the SP arm right wherever the baseline is: a ✓ when tested."""
    base = correct(400, 0.4, 0)
    better = base.clone()
    better[(base == 0).nonzero()[:80, 0]] = 1.0
    set_top1(dirs[0], task, [base])
    set_top1(dirs[1], task, [better])


def test_pair_differing_beyond_sp_is_refused_and_never_marked(tmp_path, capsys):
    """A pair that also differs in train.lr and framework.temperature (keys outside sp.* that
    change numbers) is refused, naming both keys and --allow-mismatch; reported on purpose it
    is NOT COMPARABLE and gets no mark, although its outcomes differ clearly.
    Plant: the old rule (only backbone, data, train.steps, views.local_flip and the eval
    settings blocking; other train / framework keys listed but marked): ✓ appears."""
    dirs = [fake_run(tmp_path, "dino", False, figures=False),
            fake_run(tmp_path, "dino_sp", True, figures=False, train__lr=0.01, framework__temperature=0.2)]
    clearly_better(dirs)
    with pytest.raises(ValueError) as e:
        report.table_rows(report.read_runs(dirs))
    assert "train.lr (0.001 vs 0.01)" in str(e.value) and "framework.temperature (0.1 vs 0.2)" in str(e.value)
    assert "--allow-mismatch" in str(e.value)
    out = tmp_path / "out"
    assert main(["report", *map(str, dirs), "--out", str(out)]) == 2
    assert "--allow-mismatch" in capsys.readouterr().err and not (out / "report.md").exists()
    assert main(["report", *map(str, dirs), "--out", str(out), "--allow-mismatch"]) == 0
    text = (out / "report.md").read_text()
    assert "dino and dino_sp are NOT COMPARABLE: they differ in framework.temperature (0.1 vs 0.2); " \
           "train.lr (0.001 vs 0.01)" in text
    assert row([r.split(" | ") for r in text.splitlines()], "| kNN top-1")[3].startswith("+0.200 ‡")
    assert not [line for line in text.splitlines() if line.startswith("| ") and ("✓" in line or "✗" in line)]


@pytest.mark.parametrize("key, value", [("data__workers", 4), ("data__prefetch", 8), ("train__channels_last", True),
                                        ("train__compile", True), ("device", "cuda"), ("train__num_threads", 1)])
def test_number_free_keys_keep_the_marks(tmp_path, key, value):
    """A pair that differs in a key of config.NUMBER_FREE (decoding processes, rounding) is
    compared as if it differed by SP alone: tested and marked, and the resume check lets the
    key change too (one list). Plant: data.workers / train.channels_last left out of the
    list (the old report's and the old resume's rules disagreed): refused."""
    dirs = [fake_run(tmp_path, "dino", False, figures=False),
            fake_run(tmp_path, "dino_sp", True, figures=False, **{key: value})]
    clearly_better(dirs)
    runs = report.read_runs(dirs)
    _, rows = report.table_rows(runs)
    assert row(rows, "kNN top-1")[3].endswith("✓")
    cols = report.columns(runs)
    assert report._pairs_section(cols, report.check_pairs(cols))[1][0][2] == "no (SP alone)"
    dotted = key.replace("__", ".")
    saved = config_mod.resolve([], [])
    unsafe, safe = config_mod.resume_changes(saved, config_mod.resolve([], [f"{dotted}={str(value).lower()}"]))
    assert not unsafe and dotted in safe


def pp_outcomes(d, err2, target, group, value, floor):
    """patch_pair outcomes of R² ds (kind r2, with the image of each pair when ``group`` is
    given) and the JSON's r2_ds / random_r2_ds."""
    o = {"kind": "r2", "err2": err2, "target": target}
    if group is not None:
        o["group"] = group
    torch.save({"seeds": [{"r2_ds": o}]}, d / "metrics" / "patch_pair_outcomes.pt")
    p = d / "metrics" / "patch_pair.json"
    rec = json.loads(p.read_text())
    rec["values"].update({"r2_ds": value, "random_r2_ds": floor})
    p.write_text(json.dumps(rec))


def nine_images():
    """9 held-out images x 8 pairs: SP's errors lower on the pairs of some images, higher on
    others (what a pair's error depends on is mostly its image), Δ R² ≈ +0.37."""
    g = torch.Generator().manual_seed(0)
    group = torch.arange(9).repeat_interleave(8)
    target = torch.randn(72, generator=g)
    effect = torch.tensor([1.6, 1.2, 1.0, 0.8, 0.6, -0.2, -0.4, -0.8, -0.6])[group]
    noise = 0.05 * torch.randn(72, generator=g)
    return group, target, 1.0 + effect / 2 + noise, 1.0 - effect / 2 + noise


def test_patch_pairs_are_resampled_by_image(tmp_path):
    """9 images x 8 pairs: resampling the 72 pairs as if independent gives an interval that
    excludes 0 (the old ✓); resampling the 9 images, all pairs of an image together, one
    that includes 0: ≈. Plant: paired_bootstrap ignoring ``group`` (pair-level resampling):
    the first assertion fails. Outcomes without image ids (older files): no test."""
    group, target, base, sp = nine_images()
    arm = lambda e, g: [{"r2_ds": {"kind": "r2", "err2": e, "target": target, "group": g}}]  # noqa: E731
    t = report.paired_bootstrap(arm(base, group), arm(sp, group), "r2_ds", grouped=True)
    assert t.n_items == 9 and t.lo < 0 < t.hi and t.mark(1) == "≈"
    pairs = report.paired_bootstrap(arm(base, None), arm(sp, None), "r2_ds")  # what the old report did
    assert pairs.n_items == 72 and pairs.lo > 0 and pairs.mark(1) == "✓"
    assert t.delta == pytest.approx(pairs.delta)
    with pytest.raises(ValueError, match="other images"):
        report.paired_bootstrap(arm(base, group), arm(sp, group.roll(1)), "r2_ds")

    dirs = [fake_run(tmp_path, "dino", False, figures=False), fake_run(tmp_path, "dino_sp", True, figures=False)]
    pp_outcomes(dirs[0], base, target, group, 0.2, 0.05)
    pp_outcomes(dirs[1], sp, target, group, 0.2 + t.delta, 0.05)
    _, rows = report.table_rows(report.read_runs(dirs))
    assert row(rows, "patch-pair R² ds ↑")[3].endswith("≈")
    for d in dirs:  # evaluated before pairs carried their image: no test, and the report says why
        pp_outcomes(d, base, target, None, 0.2, 0.05)
    tests = {}
    _, rows = report.table_rows(report.read_runs(dirs), tests=tests)
    assert row(rows, "patch-pair R² ds ↑")[3] == "+0.000 †"
    assert "no image of each item" in tests[("dino", "dino_sp", "patch_pair", "r2_ds")]


def test_at_or_below_the_floor_in_both_arms_is_flagged_not_marked(tmp_path):
    """Both runs at or below their random-init floor: "≤ floor" before the verdict, which
    stays (two 5-step runs scoring under a random network: "≤ floor; ✓"); one arm above its
    floor: marked as usual. Lower-is-better metrics: at or above the floor. Plants: no floor
    check -> no note on the first row; the note in place of the verdict -> no ✓."""
    dirs = [fake_run(tmp_path, "dino", False, figures=False), fake_run(tmp_path, "dino_sp", True, figures=False)]
    clearly_better(dirs)  # top-1 0.40 vs 0.60; knn's random_top1 is 0.15: above the floor
    for d in dirs:
        p = d / "metrics" / "knn.json"
        rec = json.loads(p.read_text())
        rec["values"]["random_top1"] = 0.61  # both arms below their floor
        p.write_text(json.dumps(rec))
    p = dirs[0] / "metrics" / "depth.json"
    rec = json.loads(p.read_text())
    rec["values"].update({"rmse": 3.5, "random_rmse": 3.0})  # both arms' RMSE above their floor (3.0)
    p.write_text(json.dumps(rec))
    p = dirs[1] / "metrics" / "depth.json"
    rec = json.loads(p.read_text())
    rec["values"].update({"rmse": 3.2})
    p.write_text(json.dumps(rec))
    _, rows = report.table_rows(report.read_runs(dirs))
    cell = row(rows, "kNN top-1")[3]
    assert cell.startswith("+0.200 [+0.1") and cell.endswith("≤ floor; ✓")
    assert row(rows, "depth RMSE")[3] == "-0.300 † ≤ floor"
    details = {t: rows for t, _, rows in report.detail_tables(report.read_runs(dirs))}
    assert row(details["knn"], "top1")[3].endswith("≤ floor; ✓")
    p = dirs[1] / "metrics" / "knn.json"
    rec = json.loads(p.read_text())
    rec["values"]["random_top1"] = 0.55  # the SP arm now above its floor: a mark again
    p.write_text(json.dumps(rec))
    _, rows = report.table_rows(report.read_runs(dirs))
    assert row(rows, "kNN top-1")[3].endswith("✓")
    assert report.at_floor(-1, 2.0, 2.0) and not report.at_floor(-1, 1.9, 2.0) and not report.at_floor(1, 0.5, None)


# ---------------------------------------------------------------------------- run folders


def test_incomplete_run_is_marked(tmp_path):
    dirs = [fake_run(tmp_path, "dino", False, figures=False),
            fake_run(tmp_path, "dino_sp", True, figures=False, step=10, complete=False)]
    header, _ = report.table_rows(report.read_runs(dirs))
    assert header[2] == "dino_sp ⚠ INCOMPLETE (step 10 of 30)" and header[1] == "dino"
    text = report.write_report(dirs, tmp_path / "out").read_text()
    assert "dino_sp is incomplete: step 10 of 30" in text
    # metrics from before the step / complete fields: the training curve tells
    old = fake_run(tmp_path / "old", "dino", False, figures=False, step=20)
    for p in (old / "metrics").glob("*.json"):
        rec = json.loads(p.read_text())
        del rec["step"], rec["complete"]
        p.write_text(json.dumps(rec))
    assert report.read_run(old).incomplete() == "step 20 of 30"
    # complete: false is enough, also where the config does not say how long the run was
    bare = fake_run(tmp_path / "bare", "dino", False, figures=False, step=10, complete=False)
    (bare / "config.yaml").unlink()
    assert report.read_run(bare).incomplete() == "step 10"
    assert report.read_run(dirs[0]).incomplete() is None


def test_missing_run_folder_is_an_error(tmp_path, capsys):
    good = fake_run(tmp_path, "dino", False, figures=False)
    with pytest.raises(FileNotFoundError, match="nope"):
        report.write_report([good, tmp_path / "nope"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope"):
        report.summary_table([tmp_path / "nope"])
    assert main(["report", str(good), str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "bad" / "metrics").mkdir(parents=True)
    (tmp_path / "bad" / "metrics" / "knn.json").write_text("{")
    with pytest.raises(ValueError, match="knn.json"):
        report.read_run(tmp_path / "bad")


def test_write_report(tmp_path):
    dirs = [fake_run(tmp_path, "dino", False, seeds=3), fake_run(tmp_path, "dino_sp", True, seeds=3, offset=0.05)]
    set_top1(dirs[0], "linear", [correct(200, 0.5, s) for s in range(3)])
    set_top1(dirs[1], "linear", [correct(200, 0.5, s) for s in range(3)])
    md = report.write_report(dirs, tmp_path / "out", "test report")
    text = md.read_text()
    assert "| linear top-1 ↑ | 0.500 ± 0.010 | 0.500 ± 0.010 | +0.000 [+0.000, +0.000] ≈ |" in text
    assert "| ↳ random-init | 0.200 ± 0.010 | 0.200 ± 0.010 | – |" in text
    assert "| ↳ supervised | 0.900 ± 0.010 | 0.900 ± 0.010 | – |" in text
    assert "paired bootstrap" in text and "data set has no fine_labels" in text
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
    dirs = [fake_run(tmp_path / "a", "run", False, figures=False), fake_run(tmp_path / "b", "run", True, figures=False)]
    assert [r.label for r in report.read_runs(dirs)] == ["a/run", "b/run"]


def test_mca_over_clean_is_never_floored(tmp_path):
    """mCA / clean's random-init value (an untrained network is as bad on clean as on corrupted
    images) is no floor: both arms below it get no "≤ floor" (plant: floor_meaningful always
    True -> "≤ floor" on the row); mCA itself is floored as usual."""
    dirs = [fake_run(tmp_path, "dino", False), fake_run(tmp_path, "dino_sp", True, offset=0.05)]
    for d in dirs:
        p = d / "metrics" / "robustness.json"
        rec = json.loads(p.read_text())
        rec["values"].update({"random_rel_mCA": 0.95, "random_mCA": 0.9})  # above both arms
        p.write_text(json.dumps(rec))
    _, rows = report.table_rows(report.read_runs(dirs))
    assert "floor" not in row(rows, "mCA / clean")[3]
    assert "≤ floor" in row(rows, "mean corruption acc. (mCA)")[3]


def test_single_run_verdicts(tmp_path):
    """A run on its own: "above floor" only when the interval clears the floor (below it for a
    lower-is-better metric), "at floor" otherwise, "no floor" for mCA / clean; the interval
    comes from the run's own outcomes (plant: the verdict from the value alone -> the
    straddling case reads "above floor")."""
    from spatialssl.report import single

    assert single.verdict(1, 0.30, 0.40, 0.25) == "above floor"
    assert single.verdict(1, 0.20, 0.40, 0.25) == "at floor"  # the value may be above; the interval is not
    assert single.verdict(-1, 2.0, 2.5, 3.0) == "above floor" and single.verdict(-1, 2.0, 3.2, 3.0) == "at floor"
    assert single.verdict(1, 0.1, 0.2, 0.9, floor_ok=False) == "no floor" and single.verdict(0, 0, 1, 0) == "–"
    d = fake_run(tmp_path, "dino", False, figures=False)
    clearly_better([d, fake_run(tmp_path, "dino_sp", True, figures=False)])  # writes knn outcomes (top-1 0.40)
    _, header, rows = single.table(d)
    knn = row(rows, "kNN top-1 ↑")
    lo, hi = (float(x) for x in knn[2].strip("[]").split(", "))
    assert lo < 0.40 < hi and knn[3] == "0.150" and knn[6] == "above floor"
    path, text = single.write(d)
    assert path == d / "metrics" / "summary.md" and "| kNN top-1 ↑ |" in text
