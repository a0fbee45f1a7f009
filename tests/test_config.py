import pytest

from spatialssl import config


def test_unknown_key_is_named():
    with pytest.raises(config.ConfigError, match=r"unknown config key 'train.stepz'.*steps"):
        config.resolve([], ["train.stepz=3"])


def test_bad_value_type_and_choice_are_named():
    with pytest.raises(config.ConfigError, match=r"'train.steps' must be an integer"):
        config.resolve([], ["train.steps=many"])
    with pytest.raises(config.ConfigError, match=r"'views.local_flip' must be one of"):
        config.resolve([], ["views.local_flip=sideways"])
    with pytest.raises(config.ConfigError, match=r"'sp.max_iou'"):
        config.resolve([], ["sp.max_iou=1.5"])


def test_presets_overrides_and_derived_values():
    cfg = config.resolve(["demo"], ["train.steps=7", "sp.enabled=true"])
    assert cfg["train"]["steps"] == 7
    assert cfg["views"]["local_flip"] == "per_image"  # auto -> per_image with SP
    cfg = config.resolve([], ["sp.enabled=false"])
    assert cfg["views"]["local_flip"] == "per_view"
    with pytest.raises(config.ConfigError, match="no config preset 'nope'"):
        config.resolve(["nope"])


def test_int_accepted_for_float_and_lists_checked():
    cfg = config.resolve([], ["sp.weight=1", "views.local_scale=[0.1, 0.2]"])
    assert cfg["sp"]["weight"] == 1.0 and isinstance(cfg["sp"]["weight"], float)
    with pytest.raises(config.ConfigError, match="views.local_scale"):
        config.resolve([], ["views.local_scale=[0.1]"])


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("5e-4", 5e-4), ("1e6", 1e6), ("-1e-3", -1e-3),
                                         ("1.0e-4", 1e-4), ("+2E-3", 2e-3)])
def test_yaml_12_floats_in_overrides(text, value):
    """PyYAML (YAML 1.1) reads 1e-4 as a string; a learning rate is written that way."""
    key = "train.min_lr" if value < 0 else "train.lr"
    if value < 0:  # a negative number is a number (rejected by the range check, not the type check)
        with pytest.raises(config.ConfigError, match=r"'train.min_lr' must be >= 0"):
            config.resolve([], [f"{key}={text}"])
        return
    assert config.resolve([], [f"{key}={text}"])["train"]["lr"] == pytest.approx(value)


def test_yaml_12_floats_in_files_and_lists(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  lr: 1e-4\n  min_lr: 1e-6\nsp:\n  weight: 5e-1\neval:\n  linear_lr: [1e-1, 1e-2]\n")
    cfg = config.resolve([str(p)])
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["min_lr"] == 1e-6 and cfg["sp"]["weight"] == 0.5
    assert cfg["eval"]["linear_lr"] == [0.1, 0.01]
    assert config.load_yaml("1e") == "1e" and config.load_yaml("x1e5") == "x1e5"  # not numbers


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  steps: 10\n  lr: [0.1,\n")
    with pytest.raises(config.ConfigError, match=r"config file .*bad.yaml is not valid YAML \(line \d+"):
        config.resolve([str(p)])
    with pytest.raises(config.ConfigError, match=r"--set train.lr is not valid YAML"):
        config.resolve([], ["train.lr=[0.1,"])


@pytest.mark.parametrize("override, message", [
    ("train.log_every=0", r"'train.log_every' must be >= 1"),
    ("train.checkpoint_every=0", r"'train.checkpoint_every' must be >= 1"),
    ("train.collapse_every=0", r"'train.collapse_every' must be >= 1"),
    ("train.lr=-1", r"'train.lr' must be > 0"),
    ("train.lr=0", r"'train.lr' must be > 0"),
    ("eval.knn_k=0", r"'eval.knn_k' must be >= 1"),
    ("sp.pair_candidates=0", r"'sp.pair_candidates' must be >= 1"),
    ("views.local_size=0", r"'views.local_size' must be >= 1"),
    ("data.max_pixels=-1", r"'data.max_pixels' must be >= 0"),
])
def test_ranges_are_checked(override, message):
    with pytest.raises(config.ConfigError, match=message):
        config.resolve([], [override])


@pytest.mark.parametrize("fw, name", [("simclr", "SimCLR"), ("byol", "BYOL"), ("mocov3", "MoCoV3")])
def test_two_view_frameworks_need_two_global_views(fw, name, tmp_path, tiny_overrides, random_canvases):
    """The framework class says how many global views it needs (``min_global_views``);
    ``pretrain`` checks it before it makes the run folder."""
    from spatialssl.engine.trainer import pretrain
    from spatialssl.frameworks import REGISTRY

    assert {n for n, cls in REGISTRY.items() if cls.min_global_views >= 2} >= {"simclr", "byol", "mocov3"}
    cfg = config.resolve([], [*tiny_overrides, f"framework.name={fw}", "views.n_global=1", "train.steps=1",
                              f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(config.ConfigError, match=rf"'views.n_global' must be >= 2 for framework '{fw}' \({name}"):
        pretrain(cfg, data=random_canvases)
    assert not (tmp_path / "run").exists()
    REGISTRY["dino"].check_config(config.resolve([], ["framework.name=dino", "views.n_global=1"]))


def test_resume_changes_split_safe_from_unsafe():
    saved = config.resolve([], ["train.batch_size=16"])
    new = config.resolve([], ["train.batch_size=32", "train.lr=1e-3", "train.log_every=5", "eval.knn_k=5",
                              "out_dir=elsewhere"])
    unsafe, safe = config.resume_changes(saved, new)
    assert unsafe == {"train.batch_size": (16, 32), "train.lr": (5e-4, 1e-3)}
    assert set(safe) == {"train.log_every", "eval.knn_k", "out_dir"}
    assert config.resume_changes(saved, saved) == ({}, {})
    # a key the saved config lacks (added to the defaults since) counts as its default
    old = config.resolve([], ["train.batch_size=16"])
    del old["data"]["max_pixels"]
    assert config.resume_changes(old, saved) == ({}, {})
    assert "data.max_pixels" in config.resume_changes(old, config.resolve([], ["train.batch_size=16",
                                                                                "data.max_pixels=5"]))[0]


def test_every_shipped_preset_resolves_and_sp_presets_enlarge_no_local_view():
    """Every configs/*.yaml resolves; with SP on, none warns (no local view enlarged more than
    1.1x, no fallback rate above 5%: docs/sp.md "Resampling"), global views included."""
    from spatialssl import sp

    names = sorted(p.stem for p in config.CONFIG_DIR.glob("*.yaml"))
    assert {"dino_sp", "demo", "imagenet100_vits16_dino", "imagenet100_vits16_dino_sp"} <= set(names)
    for name in names:
        cfg = config.resolve([name], ["sp.enabled=true"])
        assert sp.config_warnings(cfg) == [], name


def test_imagenet_presets_differ_by_sp_alone():
    base = config.flatten(config.resolve(["imagenet100_vits16_dino"]))
    with_sp = config.flatten(config.resolve(["imagenet100_vits16_dino_sp"]))
    assert {k for k in base if base[k] != with_sp[k]} == {"name", "out_dir", "sp.enabled"}  # out_dir: runs/<name>
    assert base["views.local_flip"] == "per_image" and base["data.name"] == "shards"
    assert base["train.steps"] * base["train.batch_size"] >= 100 * 126_689  # 100 epochs


def test_resolving_a_preset_imports_no_torch():
    """``import spatialssl.config`` / ``spatialssl.cli`` and ``config.resolve`` (warnings on)
    import no torch: ``spatialssl config`` answers in about a second, not the seconds torch
    and the SP pair sampler took (the sampler's fallback warning is logged when views are
    built for training, ``views.MultiCrop.from_config``)."""
    import subprocess
    import sys

    code = ("import sys; from spatialssl import config, cli; "
            "config.resolve(['dino_sp']); config.resolve([], ['data.canvas_size=64']); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
    assert "local views (96 px) are upsampled" in out.stderr  # the torch-free warnings are still logged


@pytest.mark.parametrize("key,want", [("train.learning_rate", "train.lr"), ("train.stpes", "train.steps"),
                                      ("train.batch", "train.batch_size"), ("sp.wieght", "sp.weight")])
def test_unknown_key_suggests_the_closest(key, want):
    """A mistyped key names the closest known one (plant: no hint -> fails)."""
    with pytest.raises(config.ConfigError, match=f"did you mean '{want}'"):
        config.resolve([], [f"{key}=1"])


def test_a_bad_value_is_echoed():
    with pytest.raises(config.ConfigError, match="must be >= 1, got -5"):
        config.resolve([], ["train.steps=-5"])


def test_a_bad_key_in_a_preset_file_names_the_file(tmp_path):
    """(issue 28; plant: no file in the message -> fails)"""
    p = tmp_path / "mine.yaml"
    p.write_text("base: demo\ntrain:\n  stepz: 3\n")
    with pytest.raises(config.ConfigError, match=r"mine\.yaml: unknown config key 'train.stepz' \(did you mean"):
        config.resolve([str(p)])


def test_partsworld_keys_on_folder_data_are_named_as_ignored(caplog):
    """(issue 28) -c demo sets data.n_train; on folder data it is ignored, and said so."""
    import logging

    with caplog.at_level(logging.WARNING, logger="spatialssl"):
        config.resolve(["demo"], ["data.name=folder", "data.root=/some/where", "data.background=grey"])
    assert "data.n_train=6000" in caplog.text and "data.background=grey" in caplog.text
    assert "read by PartsWorld only and ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spatialssl"):
        config.resolve(["demo"], ["data.background=grey"])
    assert "read by PartsWorld only" not in caplog.text
