"""SSL frameworks, one small file each, in one registry.

>>> fw = create_framework(cfg, backbone, total_steps=1000)   # cfg["framework"]["name"] picks it
"""

from __future__ import annotations

from typing import Callable

from ..backbones import Backbone
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


def create_framework(cfg: dict, backbone: Backbone, total_steps: int) -> Framework:
    name = cfg["framework"]["name"]
    if name not in REGISTRY:
        raise ValueError(f"unknown framework '{name}' (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name](cfg, backbone, total_steps)


# importing registers them
from . import dino  # noqa: E402,F401

for _optional in ("ibot", "mocov3", "simclr", "byol"):
    try:
        __import__(f"{__name__}.{_optional}")
    except ModuleNotFoundError as e:  # not written yet
        if e.name != f"{__name__}.{_optional}":
            raise
