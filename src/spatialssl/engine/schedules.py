"""Compatibility alias: the schedules live in ``spatialssl.schedules`` (frameworks use them
too, and a framework should not reach up into the engine)."""

from ..schedules import cosine, linear_then_constant

__all__ = ["cosine", "linear_then_constant"]
