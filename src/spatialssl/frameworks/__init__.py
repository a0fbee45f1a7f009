"""SSL frameworks, one small file each, in one registry.

>>> fw = create_framework(cfg, backbone, total_steps=1000)   # cfg["framework"]["name"] picks it
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Callable

from ..backbones import Backbone
from ..config import ConfigError
from .base import Framework

REGISTRY: dict[str, type[Framework]] = {}


def register(name: str) -> Callable[[type[Framework]], type[Framework]]:
    """Class decorator adding a framework to the registry under ``name``."""

    def deco(cls: type[Framework]) -> type[Framework]:
        if name in REGISTRY:
            raise ValueError(f"framework '{name}' registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def framework_class(name: str) -> type[Framework]:
    """The registered framework ``name``; an unknown name is a ``ConfigError`` listing the known ones."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown framework '{name}' (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def create_framework(cfg: dict, backbone: Backbone, total_steps: int) -> Framework:
    return framework_class(cfg["framework"]["name"])(cfg, backbone, total_steps)


def unused_keys(name: str, keys: Iterable[str]) -> list[str]:
    """Those of ``keys`` (``framework.x`` names) that framework ``name`` does not read
    (none where the framework does not declare ``config_keys``)."""
    declared = framework_class(name).config_keys
    if declared is None:
        return []
    return [k for k in keys if k.startswith("framework.") and k.split(".", 1)[1] not in (*declared, "name")]


# importing registers them
from . import byol, dino, ibot, mocov3, simclr  # noqa: E402,F401
