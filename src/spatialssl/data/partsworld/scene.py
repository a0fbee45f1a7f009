"""PartsWorld scenes: primitive rows (sphere/ellipsoid, box, frustum) and the pinhole camera."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch


# ----------------------------------------------------------------------------------------
# Primitives and scenes
# ----------------------------------------------------------------------------------------

NONE, ELLIPSOID, BOX, FRUSTUM = 0, 1, 2, 3
# primitive row layout (float32): type, part id, semantic id, centre xyz, rotation (3x3,
# row-major, world = R @ local + centre), size (ellipsoid radii | box half extents |
# frustum r_bottom, r_top, half height along local y), colour rgb, bounding radius.
F_TYPE, F_PART, F_SEM = 0, 1, 2
F_C = slice(3, 6)
F_R = slice(6, 15)
F_S = slice(15, 18)
F_COL = slice(18, 21)
F_BR = 21
NF = 22


def prim_row(kind: int, centre, size, rot=None, colour=(0.7, 0.7, 0.7), part: int = 0,
             sem: int = 0) -> np.ndarray:
    """One primitive as a float32 [NF] row.

    Args:
        kind: ELLIPSOID, BOX or FRUSTUM.
        centre: (3,) world centre.
        size: ellipsoid radii (3,) | box half extents (3,) | frustum (r_bottom, r_top, half_h).
        rot: (3, 3) world-from-local rotation, identity if None.
        colour: albedo rgb in [0, 1].
        part, sem: part id and semantic id written to the masks (0 = background).
    """
    r = np.eye(3) if rot is None else np.asarray(rot, dtype=np.float64)
    s = np.asarray(size, dtype=np.float64)
    if kind == ELLIPSOID:
        br = float(s.max())
    elif kind == BOX:
        br = float(np.sqrt((s * s).sum()))
    elif kind == FRUSTUM:
        br = float(np.sqrt(max(s[0], s[1]) ** 2 + s[2] ** 2))
    else:
        raise ValueError(f"unknown primitive kind {kind}")
    row = np.zeros(NF, dtype=np.float64)
    row[F_TYPE], row[F_PART], row[F_SEM] = kind, part, sem
    row[F_C] = centre
    row[F_R] = r.reshape(-1)
    row[F_S] = s
    row[F_COL] = colour
    row[F_BR] = br
    return row.astype(np.float32)


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


_AX_X = _rz(-math.pi / 2)  # local y axis -> world +x (cylinders lying along x)
_AX_Z = _rx(math.pi / 2)   # local y axis -> world +z


@dataclass
class Scene:
    """A batch of B scenes ready for :func:`trace`.

    Attributes:
        prims: float32 [B, P, NF] primitive rows, type 0 = padding.
        cam_pos: [B, 3] camera centre; cam_fwd, cam_right, cam_up: [B, 3] orthonormal basis.
        tan_half_fov: [B] tan of half the vertical field of view.
        light_dir: [B, 3] unit vector towards the light; light_col: [B, 3]; ambient: [B, 3].
        sky_top, sky_horizon: [B, 3] sky gradient colours (also the fog colour).
        tex_kind: int64 [B] ground texture (0 checker, 1 stripes, 2 noise, 3 rings, 4 dots,
            5 waves); tex_a, tex_b: [B, 3] its two colours; tex_scale: [B] period;
            tex_angle: [B] rotation; tex_phase: [B, 4] noise phases/frequencies.
        fog_near: [B] distance where fog starts.
    """

    prims: torch.Tensor
    cam_pos: torch.Tensor
    cam_fwd: torch.Tensor
    cam_right: torch.Tensor
    cam_up: torch.Tensor
    tan_half_fov: torch.Tensor
    light_dir: torch.Tensor
    light_col: torch.Tensor
    ambient: torch.Tensor
    sky_top: torch.Tensor
    sky_horizon: torch.Tensor
    tex_kind: torch.Tensor
    tex_a: torch.Tensor
    tex_b: torch.Tensor
    tex_scale: torch.Tensor
    tex_angle: torch.Tensor
    tex_phase: torch.Tensor
    fog_near: torch.Tensor

    def to(self, device) -> "Scene":
        return Scene(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


def look_at(cam_pos, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal (forward, right, up) for a camera at ``cam_pos`` looking at ``target``."""
    fwd = np.asarray(target, dtype=np.float64) - np.asarray(cam_pos, dtype=np.float64)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    return fwd, right, up


def make_scene(prims: list[np.ndarray], cam_pos, target, fov_deg: float = 40.0,
               light_dir=(0.3, 1.0, 0.2), light_col=(1.0, 1.0, 1.0), ambient=(0.3, 0.3, 0.3),
               sky_top=(0.3, 0.5, 0.9), sky_horizon=(0.8, 0.9, 1.0), tex_kind: int = 0,
               tex_a=(0.5, 0.5, 0.5), tex_b=(0.3, 0.3, 0.3), tex_scale: float = 0.5,
               fog_near: float = 100.0) -> Scene:
    """A one-image :class:`Scene` from hand-made primitive rows (tests, demos)."""
    fwd, right, up = look_at(cam_pos, target)
    ld = np.asarray(light_dir, dtype=np.float64)
    ld = ld / np.linalg.norm(ld)
    t = lambda x, dt=torch.float32: torch.tensor(np.asarray(x), dtype=dt).unsqueeze(0)  # noqa: E731
    p = np.stack(prims) if prims else np.zeros((1, NF), np.float32)
    return Scene(
        prims=t(p), cam_pos=t(cam_pos), cam_fwd=t(fwd), cam_right=t(right), cam_up=t(up),
        tan_half_fov=t(math.tan(math.radians(fov_deg) / 2)), light_dir=t(ld), light_col=t(light_col),
        ambient=t(ambient), sky_top=t(sky_top), sky_horizon=t(sky_horizon),
        tex_kind=t(tex_kind, torch.int64), tex_a=t(tex_a), tex_b=t(tex_b), tex_scale=t(tex_scale),
        tex_angle=t(0.0), tex_phase=t([1.0, 1.0, 0.0, 0.0]), fog_near=t(fog_near),
    )


