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


def test_demo_passes_eval_seeds_and_pins_flips(monkeypatch, tmp_path):
    cfgs = _record(monkeypatch)
    seen = []
    monkeypatch.setattr(experiments, "evaluate_run", lambda *a, **k: seen.append(k.get("seeds")))
    experiments.demo(tmp_path, ["eval.seeds=3"], released=False)
    assert seen == [3, 3]
    assert cfgs[0]["views"]["local_flip"] == cfgs[1]["views"]["local_flip"]
    assert _differences(cfgs[0], cfgs[1]) == {"sp.enabled", "name", "out_dir"}
