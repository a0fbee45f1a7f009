"""``run_pair`` / ``compare`` / ``demo``: the two arms of a comparison differ by SP alone."""

from __future__ import annotations

from pathlib import Path

from spatialssl import experiments


def _record(monkeypatch) -> list[dict]:
    cfgs: list[dict] = []

    def fake_pretrain(cfg):
        cfgs.append(cfg)
        return Path(cfg["out_dir"])

    monkeypatch.setattr(experiments, "pretrain", fake_pretrain)
    monkeypatch.setattr(experiments, "evaluate_run", lambda *a, **k: None)
    monkeypatch.setattr(experiments, "_report", lambda *a, **k: None)
    return cfgs


def _differences(a: dict, b: dict, where: str = "") -> set[str]:
    out = set()
    for k in a:
        if isinstance(a[k], dict):
            out |= _differences(a[k], b[k], f"{where}{k}.")
        elif a[k] != b[k]:
            out.add(f"{where}{k}")
    return out


def test_run_pair_pins_the_flip_policy(monkeypatch, tmp_path):
    cfgs = _record(monkeypatch)
    experiments.run_pair("dino", experiments.framework_presets("dino"), ["framework.name=dino"], tmp_path, "knn", [])
    off, on = cfgs
    assert off["views"]["local_flip"] == on["views"]["local_flip"] == "per_image"  # auto would give per_view to off
    assert _differences(off, on) == {"sp.enabled", "name", "out_dir"}


def test_compare_flip_ablation_runs_each_policy_with_and_without_sp(monkeypatch, tmp_path):
    cfgs = _record(monkeypatch)
    experiments.compare(["dino"], "tiny", tmp_path, "knn", flips=["per_view", "none"])
    got = [(c["name"], c["views"]["local_flip"], c["sp"]["enabled"]) for c in cfgs]
    assert got == [("dino_per_view", "per_view", False), ("dino_per_view_sp", "per_view", True),
                   ("dino_none", "none", False), ("dino_none_sp", "none", True)]


def test_demo_passes_eval_seeds_and_pins_flips(tmp_path):
    """The demo is the study runner's pair: its two cells carry the demo's probe seeds and
    tasks (or the overrides'), one flip policy, and differ by SP alone."""
    from spatialssl import study

    budget, cells, tasks = experiments.demo_plan(["eval.seeds=3", "eval.tasks=[knn,linear]"])
    assert [c.name for c in cells] == ["byol-cnn-s0", "byol_sp-cnn-s0"] and tasks == ["knn", "linear"]
    cfgs = [study.cell_config(c, budget, tmp_path, tasks) for c in cells]
    assert cfgs[0]["eval"]["seeds"] == cfgs[1]["eval"]["seeds"] == 3
    assert cfgs[0]["views"]["local_flip"] == cfgs[1]["views"]["local_flip"] == "per_image"
    assert _differences(cfgs[0], cfgs[1]) == {"sp.enabled", "name", "out_dir"}
    assert cfgs[0]["train"]["steps"] == 400 and cfgs[0]["framework"]["name"] == "byol"
    default = experiments.demo_plan([])
    assert default[0].eval_seeds == 1 and len(default[2]) == 8  # configs/demo.yaml's eval


def test_released_pairs_load_from_safetensors_and_pair_by_sp_alone(monkeypatch, tmp_path):
    """``released_runs`` reads checkpoints/<cell>/ as benchmarks/release.py writes it
    (backbone.safetensors + config.yaml + status.json), evaluates each copy, and the two arms
    of a released pair are comparable in the report (they differ by SP alone). Plant: the
    old loader (``*/checkpoint.pt``) finds nothing -> fails; the demo's data section replacing
    the run's ``data.background`` -> fails."""
    import json

    import yaml

    from spatialssl import config, report
    from spatialssl.backbones import create_backbone, export_timm_state_dict

    released = tmp_path / "checkpoints"
    cache = tmp_path / "cache"
    base = ["framework.name=simclr", "train.steps=4", "data.n_train=64", "data.n_eval=32",
            f"data.cache_dir={cache}", "views.local_flip=per_image", "seed=0"]
    for sp in (False, True):
        cell = f"simclr{'_sp' if sp else ''}-cnn-s0"
        cfg = config.resolve(experiments.framework_presets("simclr"),
                             [*base, f"sp.enabled={str(sp).lower()}", f"name={cell}", f"out_dir=runs/study/cpu/{cell}",
                              "data.background=grey"])
        d = released / cell
        d.mkdir(parents=True)
        export_timm_state_dict(create_backbone(cfg["backbone"]), str(d / "backbone.safetensors"))
        (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        (d / "status.json").write_text(json.dumps({"step": 4, "steps": 4, "complete": True}))
    monkeypatch.setattr(experiments, "RELEASED", released)
    data = config.resolve(["demo"], [f"data.cache_dir={cache}", "data.n_train=64", "data.n_eval=32"])["data"]
    dirs = experiments.released_runs(tmp_path / "demo", ["knn"], ["eval.n_train=32", "eval.n_test=16"], data)
    assert [d.name for d in dirs] == ["released_simclr-cnn-s0", "released_simclr_sp-cnn-s0"]
    for d in dirs:
        assert (d / "metrics" / "knn.json").exists()
        assert "released, CPU study 4 steps, grey background, seed 0" in yaml.safe_load((d / "config.yaml").read_text())["name"]
        # probed on images drawn as the run was trained on (grey), not the demo's scene
        assert json.loads((d / "metrics" / "knn.json").read_text())["data_config"]["background"] == "grey"
    runs = report.read_runs(dirs)
    cols = report.columns(runs)
    assert len(cols) == 1 and cols[0][1] is not None
    report.check_pairs(cols)  # raises when the pair differs outside sp.* and the number-free keys
