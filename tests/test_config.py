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
