"""PartsWorld: the built-in procedural 3D parts-scene data set.

Every image shows one **compound object** (a category such as ``snowman`` or ``car``) built
from analytic primitives -- ellipsoids/spheres, oriented boxes, and capped frustums (which
cover cylinders and cones) -- standing on a textured ground plane under a sky gradient.
Scenes are rendered by vectorised ray casting in torch, batched over images x pixels x
primitives, on CPU or GPU:

* primary rays are culled against each primitive's bounding sphere with one batched matmul,
  the surviving (ray, primitive) pairs are intersected analytically, the nearest hit wins;
* shading is diffuse + ambient from one directional light, with shadows (a shadow ray per
  visible point, cast against the same primitives);
* the ground is a textured plane (checker / stripes / noise; the ``ood`` split uses rings /
  dots / waves) with distance fog towards the horizon colour.

Per image (see :class:`~spatialssl.data.canvases.CanvasSet`):

* ``images``: uint8 [N, 3, H, W] RGB;
* ``depth``: float32 [N, H, W], camera z (distance along the optical axis) in scene units,
  clipped to ``cfg.far``; sky pixels (and ground beyond ``far``) equal ``cfg.far``;
* ``semantic``: int64 [N, H, W], category id + 1 on the object, 0 elsewhere (ground, sky
  **and distractor primitives**);
* ``parts``: int64 [N, H, W], global part id (``meta["part_names"][id]``), 0 elsewhere
  (distractors included);
* ``labels``: int64 [N] category id; ``fine_labels``: int64 [N] global fine id
  ``category * VARIANTS + variant``.

Splits ``train``/``val``/``test`` share one appearance distribution; ``ood`` has the same
categories and variants under unseen part palettes, ground textures, lighting and skies.

Determinism: each image's scene is drawn from its own ``numpy`` generator seeded by
``(cfg.seed, split, index)`` (never global RNG state), so the scene of image ``i`` does not
depend on which other images are rendered. Rendering runs in chunks of ``cfg.chunk``
images; :func:`load` always generates a split in the same fixed chunk order, so the same
config gives byte-identical arrays on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .canvases import CanvasSet

logger = logging.getLogger(__name__)

# the cache key covers this file's own bytes too, so an edit to the generator (shapes,
# colours, camera, labels) is never served images cached by an older version of it
_SOURCE_HASH = hashlib.sha256(open(__file__, "rb").read()).hexdigest()[:12]
GENERATOR_VERSION = f"partsworld-3+{_SOURCE_HASH}"
SPLITS = ("train", "val", "test", "ood")
_SPLIT_ID = {s: i for i, s in enumerate(SPLITS)}


@dataclass
class PartsWorldConfig:
    """Everything that changes the generated data; all of it is hashed into the cache key.

    Attributes:
        size: image side in pixels (square images).
        n_train, n_val, n_test, n_ood: images per split.
        seed: master seed; image ``i`` of split ``s`` is drawn from ``(seed, s, i)``.
        distractors: maximum number of distractor primitives per image (0 disables them).
        shadows: cast shadow rays.
        fov_deg: vertical field of view of the pinhole camera.
        fill_min, fill_max: the object's bounding sphere spans this fraction of the frame.
        elev_min_deg, elev_max_deg: camera elevation range.
        far: depth of the sky and clip value of the depth maps (scene units).
        chunk: images rendered per batch (fixed, so generation order is fixed).
    """

    size: int = 64
    n_train: int = 20000
    n_val: int = 2000
    n_test: int = 2000
    n_ood: int = 2000
    seed: int = 0
    distractors: int = 2
    shadows: bool = True
    fov_deg: float = 40.0
    fill_min: float = 0.65
    fill_max: float = 0.95
    elev_min_deg: float = 8.0
    elev_max_deg: float = 40.0
    far: float = 30.0
    chunk: int = 128

    def n_for(self, split: str) -> int:
        """Number of images of ``split``."""
        _check_split(split)
        return int(getattr(self, f"n_{split}"))

    def key(self) -> str:
        """Short hash of the config and the generator version (the cache key)."""
        blob = json.dumps({"v": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_split(split: str) -> None:
    if split not in _SPLIT_ID:
        raise ValueError(f"unknown PartsWorld split {split!r}; expected one of {SPLITS}")


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


# ----------------------------------------------------------------------------------------
# Ray casting
# ----------------------------------------------------------------------------------------

_EPS = 1e-4


def _to_local(o: torch.Tensor, d: torch.Tensor, pr: torch.Tensor):
    """Ray origins/directions [N, 3] into the frames of primitives ``pr`` [N, NF]."""
    rm = pr[:, F_R]
    oc = o - pr[:, F_C]
    # elementwise (no matmul) so results do not depend on the batch size: local = R^T (x - c)
    ol = oc[:, 0:1] * rm[:, 0:3] + oc[:, 1:2] * rm[:, 3:6] + oc[:, 2:3] * rm[:, 6:9]
    dl = d[:, 0:1] * rm[:, 0:3] + d[:, 1:2] * rm[:, 3:6] + d[:, 2:3] * rm[:, 6:9]
    return ol, dl


def _safe(x: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    return torch.where(x.abs() < eps, torch.full_like(x, eps), x)


def _hit_ellipsoid(ol: torch.Tensor, dl: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Nearest t > eps of rays [N, 3] (local frame) with axis-aligned ellipsoids radii s [N, 3]."""
    o2, d2 = ol / s, dl / s
    a = (d2 * d2).sum(1)
    b = (o2 * d2).sum(1)
    c = (o2 * o2).sum(1) - 1.0
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    t0 = (-b - sq) / a
    t1 = (-b + sq) / a
    inf = torch.full_like(t0, math.inf)
    t = torch.where(t0 > _EPS, t0, torch.where(t1 > _EPS, t1, inf))
    return torch.where(disc >= 0, t, inf)


def _hit_box(ol: torch.Tensor, dl: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Nearest t > eps with axis-aligned boxes of half extents h [N, 3] (slab method)."""
    inv = 1.0 / _safe(dl)
    t1 = (-h - ol) * inv
    t2 = (h - ol) * inv
    tn = torch.minimum(t1, t2).amax(1)
    tf = torch.maximum(t1, t2).amin(1)
    inf = torch.full_like(tn, math.inf)
    t = torch.where(tn > _EPS, tn, tf)
    return torch.where((tf >= tn) & (tf > _EPS), t, inf)


def _hit_frustum(ol: torch.Tensor, dl: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Nearest t > eps with capped frustums (r_bottom, r_top, half height) along local y."""
    r0, r1, h = s[:, 0], s[:, 1], s[:, 2]
    k = (r1 - r0) / (2 * h)
    m = (r0 + r1) / 2
    ox, oy, oz = ol.unbind(1)
    dx, dy, dz = dl.unbind(1)
    q = k * oy + m
    a = dx * dx + dz * dz - k * k * dy * dy
    b = ox * dx + oz * dz - k * dy * q
    c = ox * ox + oz * oz - q * q
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    a_s = _safe(a)
    inf = torch.full_like(a, math.inf)
    best = inf
    for sign in (-1.0, 1.0):
        t = (-b + sign * sq) / a_s
        y = oy + t * dy
        ok = (disc >= 0) & (t > _EPS) & (y.abs() <= h) & (k * y + m >= 0)
        best = torch.minimum(best, torch.where(ok, t, inf))
    dy_s = _safe(dy)
    for yc, rc in ((h, r1), (-h, r0)):
        t = (yc - oy) / dy_s
        x = ox + t * dx
        z = oz + t * dz
        ok = (t > _EPS) & (x * x + z * z <= rc * rc)
        best = torch.minimum(best, torch.where(ok, t, inf))
    return best


def _hit_pairs(o: torch.Tensor, d: torch.Tensor, pr: torch.Tensor) -> torch.Tensor:
    """t [N] of rays o, d [N, 3] against primitives pr [N, NF] (inf = miss), any type."""
    t = torch.full((o.shape[0],), math.inf, dtype=o.dtype, device=o.device)
    kind = pr[:, F_TYPE]
    for k, fn in ((ELLIPSOID, _hit_ellipsoid), (BOX, _hit_box), (FRUSTUM, _hit_frustum)):
        idx = (kind == k).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        p = pr[idx]
        ol, dl = _to_local(o[idx], d[idx], p)
        t[idx] = fn(ol, dl, p[:, F_S])
    return t


def _normals(o: torch.Tensor, d: torch.Tensor, t: torch.Tensor, pr: torch.Tensor) -> torch.Tensor:
    """World unit normals [N, 3] at hits o + t d on primitives pr [N, NF], facing the ray."""
    ol, dl = _to_local(o, d, pr)
    pl = ol + t[:, None] * dl
    s = pr[:, F_S]
    kind = pr[:, F_TYPE][:, None]
    n_ell = pl / (s * s)
    q = pl / s
    ax = q.abs().argmax(1, keepdim=True)
    n_box = torch.zeros_like(pl).scatter_(1, ax, torch.sign(q.gather(1, ax)))
    r0, r1, h = s[:, 0], s[:, 1], s[:, 2]
    k = (r1 - r0) / (2 * h)
    ry = k * pl[:, 1] + (r0 + r1) / 2
    rad = (pl[:, 0] ** 2 + pl[:, 2] ** 2).sqrt()
    n_side = torch.stack([pl[:, 0], -k * ry, pl[:, 2]], 1)
    d_side = (rad - ry).abs() / torch.sqrt(1 + k * k)
    d_top = (pl[:, 1] - h).abs()
    d_bot = (pl[:, 1] + h).abs()
    up = torch.zeros_like(pl)
    up[:, 1] = 1.0
    n_cap = torch.where((d_top < d_bot)[:, None], up, -up)
    n_fru = torch.where((torch.minimum(d_top, d_bot) < d_side)[:, None], n_cap, n_side)
    nl = torch.where(kind == ELLIPSOID, n_ell, torch.where(kind == BOX, n_box, n_fru))
    rm = pr[:, F_R]  # world = R @ local
    n = nl[:, 0:1] * rm[:, 0::3] + nl[:, 1:2] * rm[:, 1::3] + nl[:, 2:3] * rm[:, 2::3]
    n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.where(((n * d).sum(1) > 0)[:, None], -n, n)


def _cast(o: torch.Tensor, d: torch.Tensor, prims: torch.Tensor, cand: torch.Tensor):
    """Intersect rays with primitives where ``cand`` allows it.

    Args:
        o, d: [B, R, 3] ray origins and unit directions.
        prims: [B, P, NF].
        cand: bool [B, R, P] (ray, primitive) pairs to test.

    Returns:
        t [B, R] nearest hit (inf = none) and the index [B, R] of the primitive hit.
    """
    b_, r_, p_ = cand.shape
    bi, ri, pi = cand.nonzero(as_tuple=True)
    tt = torch.full((b_, r_, p_), math.inf, dtype=o.dtype, device=o.device)
    if bi.numel():
        tt[bi, ri, pi] = _hit_pairs(o[bi, ri], d[bi, ri], prims[bi, pi])
    t, win = tt.min(2)
    return t, win


def _sphere_cull(o_dot_l, oo, oc, d_dot_c, cc, br):
    """Bounding-sphere test; all arguments broadcast to [B, R, P]."""
    b = o_dot_l - d_dot_c
    dist2 = oo - 2 * oc + cc
    disc = b * b - dist2 + br * br
    return (disc >= 0) & ((b < 0) | (dist2 < br * br))


def _ground_texture(sc: Scene, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Ground albedo [B, R, 3] at world points x, z [B, R]."""
    ca, sa = torch.cos(sc.tex_angle)[:, None], torch.sin(sc.tex_angle)[:, None]
    s = sc.tex_scale[:, None]
    u = (x * ca - z * sa) / s
    v = (x * sa + z * ca) / s
    w = torch.zeros_like(u)
    ph = sc.tex_phase
    for kind in torch.unique(sc.tex_kind).tolist():
        sel = (sc.tex_kind == kind)[:, None]
        if kind == 0:  # checker
            val = torch.remainder(torch.floor(u) + torch.floor(v), 2.0)
        elif kind == 1:  # stripes
            val = torch.remainder(torch.floor(u), 2.0)
        elif kind == 2:  # smooth noise (sum of sines)
            n = (torch.sin(u * ph[:, :1] + 3 * ph[:, 2:3]) * torch.sin(v * ph[:, 1:2] + 5 * ph[:, 3:4])
                 + 0.5 * torch.sin(0.7 * u * ph[:, 1:2] - 1.3 * v * ph[:, :1] + 7 * ph[:, 2:3]))
            val = (0.5 + 0.8 * n).clamp(0, 1)
        elif kind == 3:  # rings (ood)
            val = torch.remainder(torch.floor((u * u + v * v).sqrt()), 2.0)
        elif kind == 4:  # dots (ood)
            fu, fv = u - torch.floor(u) - 0.5, v - torch.floor(v) - 0.5
            val = ((fu * fu + fv * fv) < 0.09).to(u.dtype)
        else:  # waves (ood)
            val = torch.remainder(torch.floor(u + 0.6 * torch.sin(v * 2.2 + ph[:, 2:3] * 6)), 2.0)
        w = torch.where(sel, val, w)
    w = w[..., None]
    return sc.tex_a[:, None] * (1 - w) + sc.tex_b[:, None] * w


def trace(sc: Scene, size: int, far: float, shadows: bool = True) -> dict[str, torch.Tensor]:
    """Render a batch of scenes.

    Args:
        sc: B scenes (all tensors on one device).
        size: image side H = W.
        far: depth clip / sky depth.
        shadows: cast shadow rays.

    Returns:
        dict with ``rgb`` float32 [B, 3, H, W] in [0, 1], ``depth`` float32 [B, H, W]
        (camera z, sky = far), ``semantic`` and ``parts`` int64 [B, H, W], ``prim`` int64
        [B, H, W] (index of the primitive seen, -1 for ground/sky).
    """
    dev = sc.prims.device
    prims = sc.prims
    bsz, npr = prims.shape[:2]
    hw = size * size
    # pixel grid (row-major, y down)
    lin = (torch.arange(size, device=dev, dtype=torch.float32) + 0.5) / size * 2 - 1
    py, px = torch.meshgrid(-lin, lin, indexing="ij")
    px, py = px.reshape(1, hw, 1), py.reshape(1, hw, 1)
    th = sc.tan_half_fov[:, None, None]
    d = sc.cam_fwd[:, None] + (px * th) * sc.cam_right[:, None] + (py * th) * sc.cam_up[:, None]
    d = d / d.norm(dim=2, keepdim=True)  # [B, R, 3]
    o = sc.cam_pos[:, None].expand(bsz, hw, 3)

    valid = prims[..., F_TYPE] > 0  # [B, P]
    centres = prims[..., F_C]  # [B, P, 3]
    br = prims[..., F_BR][:, None] * 1.001 + 1e-4  # [B, 1, P]
    # primary rays: origin is the camera for every ray of an image
    oc = sc.cam_pos[:, None] - centres  # [B, P, 3]
    b = torch.bmm(d, oc.transpose(1, 2))  # [B, R, P]
    dist2 = (oc * oc).sum(-1)[:, None]  # [B, 1, P]
    cand = (b * b - dist2 + br * br >= 0) & ((b < 0) | (dist2 < br * br)) & valid[:, None]
    t_obj, win = _cast(o, d, prims, cand)

    # ground plane y = 0
    dy = d[..., 1]
    t_gnd = torch.where(dy < -1e-6, -o[..., 1] / _safe(dy), torch.full_like(dy, math.inf))
    hit_obj = t_obj < t_gnd
    t = torch.where(hit_obj, t_obj, t_gnd)
    hit_any = torch.isfinite(t)
    t_fin = torch.where(hit_any, t, torch.zeros_like(t))
    p = o + t_fin[..., None] * d

    # normals, albedo, labels
    normal = torch.zeros_like(p)
    normal[..., 1] = 1.0
    albedo = _ground_texture(sc, p[..., 0], p[..., 2])
    sem = torch.zeros(bsz, hw, dtype=torch.int64, device=dev)
    part = torch.zeros_like(sem)
    prim_idx = torch.full_like(sem, -1)
    bi, ri = hit_obj.nonzero(as_tuple=True)
    if bi.numel():
        pr = prims[bi, win[bi, ri]]
        normal[bi, ri] = _normals(o[bi, ri], d[bi, ri], t[bi, ri], pr)
        albedo[bi, ri] = pr[:, F_COL]
        sem[bi, ri] = pr[:, F_SEM].long()
        part[bi, ri] = pr[:, F_PART].long()
        prim_idx[bi, ri] = win[bi, ri]

    # lighting and shadows
    ldir = sc.light_dir[:, None]  # [B, 1, 3]
    ndl = (normal * ldir).sum(-1).clamp_min(0)  # [B, R]
    lit = ndl
    if shadows:
        need = hit_any & (ndl > 0)
        so = p + normal * 2e-3
        # bounding-sphere cull of shadow rays (direction = light, same for the whole image)
        o_dot_l = (so * ldir).sum(-1, keepdim=True)  # [B, R, 1]
        oo = (so * so).sum(-1, keepdim=True)
        ocp = torch.bmm(so, centres.transpose(1, 2))  # [B, R, P]
        d_dot_c = (centres * ldir).sum(-1)[:, None]  # [B, 1, P]
        cc = (centres * centres).sum(-1)[:, None]
        scand = _sphere_cull(o_dot_l, oo, ocp, d_dot_c, cc, br * 1.01 + 1e-3)
        scand &= valid[:, None] & need[..., None]
        t_sh, _ = _cast(so, ldir.expand_as(so), prims, scand)
        lit = torch.where(torch.isfinite(t_sh), torch.zeros_like(ndl), ndl)
    shade = sc.ambient[:, None] + sc.light_col[:, None] * lit[..., None]
    col = albedo * shade

    # sky and fog
    sky_w = dy.clamp(0, 1).pow(0.6)[..., None]
    sky = sc.sky_horizon[:, None] * (1 - sky_w) + sc.sky_top[:, None] * sky_w
    fog_near = sc.fog_near[:, None]
    fog = ((t_fin - fog_near) / (far - fog_near).clamp_min(1e-3)).clamp(0, 1).pow(1.5)[..., None]
    col = col * (1 - fog) + sc.sky_horizon[:, None] * fog
    col = torch.where(hit_any[..., None], col, sky)

    depth = t_fin * (d * sc.cam_fwd[:, None]).sum(-1)
    depth = torch.where(hit_any, depth.clamp(max=far), torch.full_like(depth, far))
    # everything at or beyond far (fogged-out ground, distant distractors) is background
    beyond = depth >= far
    sem = torch.where(beyond, torch.zeros_like(sem), sem)
    part = torch.where(beyond, torch.zeros_like(part), part)

    sh = (bsz, size, size)
    return {
        "rgb": col.clamp(0, 1).permute(0, 2, 1).reshape(bsz, 3, size, size),
        "depth": depth.reshape(sh),
        "semantic": sem.reshape(sh),
        "parts": part.reshape(sh),
        "prim": prim_idx.reshape(sh),
    }


# ----------------------------------------------------------------------------------------
# Categories and variants
# ----------------------------------------------------------------------------------------


class _Draw:
    """Uniform draws from one image's own generator (pre-drawn in blocks for speed)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.buf = rng.random(96).tolist()
        self.i = 0

    def u(self, a: float = 0.0, b: float = 1.0) -> float:
        if self.i >= len(self.buf):
            self.buf = self.rng.random(96).tolist()
            self.i = 0
        x = self.buf[self.i]
        self.i += 1
        return a + (b - a) * x

    def j(self, x: float, amt: float = 0.08) -> float:
        """x jittered by +-amt (relative)."""
        return x * (1.0 + self.u(-amt, amt))

    def int(self, n: int) -> int:
        return min(int(self.u() * n), n - 1)


# A template maps (draw, variant) to a list of (kind, centre, size, rot | None, local part index 1..)
# in object coordinates: y up, standing on the ground y = 0, roughly centred on the y axis.
_Template = Callable[[_Draw, int], list]

_E, _B, _F = ELLIPSOID, BOX, FRUSTUM


def _cyl(r: float, h_half: float) -> tuple:
    return (r, r, h_half)


def _legs(dr: _Draw, hx: float, hz: float, height: float, r: float, part: int, n: int = 4) -> list:
    out = []
    if n == 4:
        pos = [(hx, hz), (-hx, hz), (hx, -hz), (-hx, -hz)]
    else:
        pos = [(hx * math.cos(a), hx * math.sin(a)) for a in np.linspace(0, 2 * math.pi, n, endpoint=False)]
    for x, z in pos:
        out.append((_F, (x, height / 2, z), _cyl(r, height / 2), None, part))
    return out


def _snowman(dr: _Draw, v: int) -> list:
    # parts: 1 body, 2 head, 3 nose, 4 hat
    out = []
    if v == 1:  # two balls, big head, no hat
        radii = [dr.j(0.55), dr.j(0.42)]
    else:
        radii = [dr.j(0.5), dr.j(0.36), dr.j(0.26)]
    y = 0.0
    for i, r in enumerate(radii):
        y += r if i == 0 else r * 0.85
        out.append((_E, (0, y, 0), (r, r, r), None, 2 if i == len(radii) - 1 else 1))
        top = y + r
        y += r * 0.85
    rh = radii[-1]
    yh = top - rh
    out.append((_F, (0, yh, rh + 0.09), (0.05, 0.0, 0.12), _AX_Z, 3))
    if v == 2:  # top hat: brim + crown
        out.append((_F, (0, top - 0.03, 0), _cyl(rh * 1.2, 0.025), None, 4))
        hh = dr.j(0.22)
        out.append((_F, (0, top + hh - 0.03, 0), _cyl(rh * 0.75, hh), None, 4))
    elif v == 3:  # tall pointy hat
        hh = dr.j(0.32)
        out.append((_F, (0, top - 0.05 + hh, 0), (rh * 1.05, 0.0, hh), None, 4))
    elif v == 0:  # bare head, two stick arms (part 'body')
        r = radii[1]
        ya = radii[0] * 2 * 0.85 + r * 0.85
        out.append((_F, (r + 0.24, ya + 0.12, 0), _cyl(0.05, 0.32), _rz(-1.1), 1))
        out.append((_F, (-r - 0.24, ya + 0.12, 0), _cyl(0.05, 0.32), _rz(1.1), 1))
    return out


def _table(dr: _Draw, v: int) -> list:
    # parts: 1 top, 2 legs
    if v == 0:  # square dining table
        w, hgt = dr.j(0.55), dr.j(0.8)
        return [(_B, (0, hgt, 0), (w, 0.05, w), None, 1)] + _legs(dr, w * 0.85, w * 0.85, hgt - 0.05, 0.05, 2)
    if v == 1:  # long low coffee table
        lx, lz, hgt = dr.j(0.95), dr.j(0.42), dr.j(0.38)
        return [(_B, (0, hgt, 0), (lx, 0.05, lz), None, 1)] + _legs(dr, lx * 0.88, lz * 0.8, hgt - 0.05, 0.05, 2)
    if v == 2:  # round top on one pedestal with a base disc
        r, hgt = dr.j(0.65), dr.j(0.75)
        return [
            (_F, (0, hgt, 0), _cyl(r, 0.04), None, 1),
            (_F, (0, hgt / 2, 0), _cyl(0.08, hgt / 2), None, 2),
            (_F, (0, 0.04, 0), _cyl(r * 0.55, 0.04), None, 2),
        ]
    # tall bar table: small top on long thin legs
    w, hgt = dr.j(0.32), dr.j(1.3)
    return [(_B, (0, hgt, 0), (w, 0.04, w), None, 1)] + _legs(dr, w * 0.8, w * 0.8, hgt - 0.04, 0.035, 2)


def _lamp(dr: _Draw, v: int) -> list:
    # parts: 1 base, 2 pole, 3 shade
    if v == 0:  # floor lamp: tall pole, frustum shade
        hgt = dr.j(1.7)
        return [
            (_F, (0, 0.03, 0), _cyl(0.28, 0.03), None, 1),
            (_F, (0, hgt / 2, 0), _cyl(0.035, hgt / 2), None, 2),
            (_F, (0, hgt, 0), (dr.j(0.36), dr.j(0.2), 0.2), None, 3),
        ]
    if v == 1:  # desk lamp with a big globe
        hgt = dr.j(0.6)
        r = dr.j(0.3)
        return [
            (_B, (0, 0.05, 0), (0.3, 0.05, 0.3), None, 1),
            (_F, (0, hgt / 2, 0), _cyl(0.05, hgt / 2), None, 2),
            (_E, (0, hgt + r * 0.8, 0), (r, r, r), None, 3),
        ]
    if v == 2:  # angled arm lamp with a downward cone shade
        a1, l1 = 0.45, dr.j(0.55)
        a2, l2 = -1.0, dr.j(0.5)
        x1, y1 = -math.sin(a1) * l1, math.cos(a1) * l1 + 0.06
        x2, y2 = x1 - math.sin(a2) * l2, y1 + math.cos(a2) * l2
        return [
            (_F, (0, 0.03, 0), _cyl(0.3, 0.03), None, 1),
            (_F, (x1 / 2, 0.06 + (y1 - 0.06) / 2, 0), _cyl(0.035, l1 / 2), _rz(a1), 2),
            (_F, ((x1 + x2) / 2, (y1 + y2) / 2, 0), _cyl(0.035, l2 / 2), _rz(a2), 2),
            (_F, (x2, y2 - 0.12, 0), (0.28, 0.06, 0.14), None, 3),
        ]
    # uplight: flared cone opening upward on a medium pole
    hgt = dr.j(1.1)
    return [
        (_F, (0, 0.03, 0), _cyl(0.25, 0.03), None, 1),
        (_F, (0, hgt / 2, 0), _cyl(0.04, hgt / 2), None, 2),
        (_F, (0, hgt + 0.2, 0), (0.06, dr.j(0.45), 0.2), None, 3),
    ]


def _car(dr: _Draw, v: int) -> list:
    # parts: 1 body, 2 cabin, 3 wheels
    rw = 0.22
    lx, lz = dr.j(1.0, 0.05), 0.45
    bh = 0.2 if v != 3 else 0.15
    yb = rw + bh * 0.6
    out = [(_B, (0, yb, 0), (lx, bh, lz), None, 1)]
    for x in (lx * 0.62, -lx * 0.62):
        for z in (lz, -lz):
            out.append((_F, (x, rw, z), _cyl(rw, 0.08), _AX_Z, 3))
    top = yb + bh
    if v == 0:  # sedan: centred cabin
        ch = dr.j(0.2)
        out.append((_B, (-0.05, top + ch, 0), (lx * 0.5, ch, lz * 0.88), None, 2))
    elif v == 1:  # pickup: short cabin at the front, open bed with walls
        ch = dr.j(0.24)
        out.append((_B, (lx * 0.45, top + ch, 0), (lx * 0.3, ch, lz * 0.9), None, 2))
        out.append((_B, (-lx * 0.42, top + 0.08, lz * 0.9), (lx * 0.55, 0.08, 0.04), None, 1))
        out.append((_B, (-lx * 0.42, top + 0.08, -lz * 0.9), (lx * 0.55, 0.08, 0.04), None, 1))
    elif v == 2:  # van: tall cabin over the whole length
        ch = dr.j(0.36)
        out.append((_B, (-0.05, top + ch - 0.02, 0), (lx * 0.93, ch, lz * 0.95), None, 2))
    else:  # beetle: round dome cabin on a low body
        r = dr.j(0.55)
        out.append((_E, (-0.05, top, 0), (r, r * 0.65, lz * 0.9), None, 2))
    return out


def _tree(dr: _Draw, v: int) -> list:
    # parts: 1 trunk, 2 foliage
    if v == 0:  # pine: stacked cones
        th = dr.j(0.3)
        out = [(_F, (0, th / 2, 0), _cyl(0.08, th / 2), None, 1)]
        y, r = th, dr.j(0.6)
        for i in range(3):
            hh = 0.3
            out.append((_F, (0, y + hh, 0), (r, 0.0, hh), None, 2))
            y += 0.32
            r *= 0.75
        return out
    if v == 1:  # round crown
        th, r = dr.j(0.75), dr.j(0.55)
        return [(_F, (0, th / 2, 0), _cyl(0.09, th / 2), None, 1), (_E, (0, th + r * 0.8, 0), (r, r, r), None, 2)]
    if v == 2:  # poplar: tall narrow ellipsoid
        th, r, hh = dr.j(0.35), dr.j(0.3), dr.j(0.85)
        return [(_F, (0, th / 2, 0), _cyl(0.08, th / 2), None, 1), (_E, (0, th + hh * 0.9, 0), (r, hh, r), None, 2)]
    # parasol tree: tall thin trunk, flat wide crown
    th, r = dr.j(1.4), dr.j(0.75)
    return [(_F, (0, th / 2, 0), _cyl(0.06, th / 2), None, 1), (_E, (0, th + 0.1, 0), (r, 0.16, r), None, 2)]


def _chair(dr: _Draw, v: int) -> list:
    # parts: 1 seat, 2 legs, 3 back, 4 arms
    if v == 1:  # round stool, no back
        r, hgt = dr.j(0.3), dr.j(0.7)
        return [(_F, (0, hgt, 0), _cyl(r, 0.05), None, 1)] + _legs(dr, r * 0.75, 0, hgt - 0.05, 0.04, 2, n=3)
    w, hgt = dr.j(0.38), dr.j(0.45)
    out = [(_B, (0, hgt, 0), (w, 0.05, w), None, 1)] + _legs(dr, w * 0.85, w * 0.85, hgt - 0.05, 0.04, 2)
    bh = {0: 0.35, 2: 0.25, 3: 0.75}[v] * dr.j(1.0)
    out.append((_B, (0, hgt + 0.05 + bh, -w + 0.04), (w, bh, 0.04), None, 3))
    if v == 2:  # armchair
        for x in (w + 0.04, -w - 0.04):
            out.append((_B, (x, hgt + 0.2, 0), (0.05, 0.2, w), None, 4))
    return out


def _mushroom(dr: _Draw, v: int) -> list:
    # parts: 1 stem, 2 cap
    if v == 0:  # domed cap
        sh, r = dr.j(0.5), dr.j(0.5)
        return [(_F, (0, sh / 2, 0), (0.16, 0.12, sh / 2), None, 1), (_E, (0, sh + 0.05, 0), (r, r * 0.5, r), None, 2)]
    if v == 1:  # pointed conical cap
        sh, r = dr.j(0.45), dr.j(0.42)
        return [(_F, (0, sh / 2, 0), _cyl(0.12, sh / 2), None, 1), (_F, (0, sh + 0.3, 0), (r, 0.0, 0.36), None, 2)]
    if v == 2:  # parasol: tall thin stem with a ring and a bulb, wide shallow conical cap
        sh, r = dr.j(0.9), dr.j(0.6)
        return [(_F, (0, sh / 2, 0), _cyl(0.06, sh / 2), None, 1),
                (_E, (0, 0.1, 0), (0.13, 0.1, 0.13), None, 1),
                (_F, (0, sh * 0.7, 0), (0.16, 0.08, 0.03), None, 1),
                (_F, (0, sh + 0.08, 0), (r, 0.06, 0.16), None, 2)]
    # cluster of three small mushrooms
    out = []
    for x, z, s in ((0.0, 0.0, 1.0), (0.45, 0.15, 0.7), (-0.3, 0.4, 0.55)):
        sh, r = 0.45 * s, 0.32 * s
        out.append((_F, (x, sh / 2, z), _cyl(0.09 * s, sh / 2), None, 1))
        out.append((_E, (x, sh, z), (r, r * 0.6, r), None, 2))
    return out


def _rocket(dr: _Draw, v: int) -> list:
    # parts: 1 body, 2 nose, 3 fins, 4 engine, 5 boosters
    r, hh, nose, nfins = {0: (0.2, 0.55, 0.35, 3), 1: (0.32, 0.32, 0.35, 4),
                          2: (0.2, 0.55, 0.3, 0), 3: (0.13, 0.85, 0.5, 4)}[v]
    r, hh = dr.j(r), dr.j(hh)
    y0 = 0.18
    out = [
        (_F, (0, y0 + hh, 0), _cyl(r, hh), None, 1),
        (_F, (0, y0 + 2 * hh + nose / 2, 0), (r, 0.0, nose / 2), None, 2),
        (_F, (0, y0 / 2, 0), (r * 0.9, r * 0.55, y0 / 2), None, 4),
    ]
    for i in range(nfins):
        a = 2 * math.pi * i / nfins + 0.3
        fr = r + 0.13
        out.append((_B, (fr * math.cos(a), 0.2, fr * math.sin(a)), (0.15, 0.2, 0.02), _ry(-a), 3))
    if v == 2:  # two side boosters with nose cones
        for s in (1, -1):
            x = s * (r + 0.11)
            out.append((_F, (x, 0.35, 0), _cyl(0.1, 0.35), None, 5))
            out.append((_F, (x, 0.85, 0), (0.1, 0.0, 0.15), None, 5))
    return out


def _dumbbell(dr: _Draw, v: int) -> list:
    # parts: 1 handle, 2 weights
    if v == 0:  # round weights
        r, hl = dr.j(0.3), dr.j(0.45)
        return [(_F, (0, r, 0), _cyl(0.06, hl), _AX_X, 1)] + [
            (_E, (s * hl, r, 0), (r, r, r), None, 2) for s in (1, -1)]
    if v == 1:  # disc plates
        r, hl = dr.j(0.38), dr.j(0.5)
        return [(_F, (0, r, 0), _cyl(0.05, hl), _AX_X, 1)] + [
            (_F, (s * hl * 0.8, r, 0), _cyl(r, 0.06), _AX_X, 2) for s in (1, -1)]
    if v == 2:  # hex-ish cube weights
        r, hl = dr.j(0.26), dr.j(0.45)
        return [(_F, (0, r, 0), _cyl(0.06, hl), _AX_X, 1)] + [
            (_B, (s * hl, r, 0), (r * 0.8, r, r), None, 2) for s in (1, -1)]
    # barbell: long bar, two big plates each side
    r, hl = dr.j(0.42), dr.j(1.0)
    out = [(_F, (0, r, 0), _cyl(0.04, hl), _AX_X, 1)]
    for s in (1, -1):
        out.append((_F, (s * hl * 0.62, r, 0), _cyl(r, 0.05), _AX_X, 2))
        out.append((_F, (s * hl * 0.74, r, 0), _cyl(r * 0.75, 0.05), _AX_X, 2))
    return out


def _house(dr: _Draw, v: int) -> list:
    # parts: 1 walls, 2 roof, 3 chimney, 4 door
    if v == 0:  # gable roof
        lx, lz, hh = dr.j(0.65), dr.j(0.5), dr.j(0.38)
        s = lz / math.sqrt(2) * 1.05
        return [
            (_B, (0, hh, 0), (lx, hh, lz), None, 1),
            (_B, (0, 2 * hh, 0), (lx * 1.05, s, s), _rx(math.pi / 4), 2),
            (_B, (0, 0.25, lz), (0.12, 0.25, 0.03), None, 4),
        ]
    if v == 1:  # round hut with a cone roof
        r, hh = dr.j(0.55), dr.j(0.3)
        return [
            (_F, (0, hh, 0), _cyl(r, hh), None, 1),
            (_F, (0, 2 * hh + 0.3, 0), (r * 1.2, 0.0, 0.32), None, 2),
            (_B, (0, 0.22, r - 0.01), (0.12, 0.22, 0.04), None, 4),
        ]
    if v == 2:  # tower with a pyramid-ish cone roof
        w, hh = dr.j(0.32), dr.j(0.8)
        return [
            (_B, (0, hh, 0), (w, hh, w), None, 1),
            (_F, (0, 2 * hh + 0.3, 0), (w * 1.45, 0.0, 0.3), None, 2),
            (_B, (0, 0.22, w), (0.1, 0.22, 0.03), None, 4),
        ]
    # flat-roofed bungalow with a chimney
    lx, lz, hh = dr.j(0.8), dr.j(0.5), dr.j(0.3)
    return [
        (_B, (0, hh, 0), (lx, hh, lz), None, 1),
        (_B, (0, 2 * hh + 0.04, 0), (lx * 1.1, 0.05, lz * 1.12), None, 2),
        (_B, (lx * 0.55, 2 * hh + 0.25, 0), (0.09, 0.22, 0.09), None, 3),
        (_B, (-lx * 0.3, 0.22, lz), (0.11, 0.22, 0.03), None, 4),
    ]


_CATEGORY_DEFS: list[tuple[str, _Template, list[str], list[str]]] = [
    ("snowman", _snowman, ["body", "head", "nose", "hat"], ["stick-arms", "two-ball", "top-hat", "pointy-hat"]),
    ("table", _table, ["top", "legs"], ["square", "coffee", "pedestal", "bar"]),
    ("lamp", _lamp, ["base", "pole", "shade"], ["floor", "globe", "arm", "uplight"]),
    ("car", _car, ["body", "cabin", "wheels"], ["sedan", "pickup", "van", "beetle"]),
    ("tree", _tree, ["trunk", "foliage"], ["pine", "round", "poplar", "parasol"]),
    ("chair", _chair, ["seat", "legs", "back", "arms"], ["side-chair", "stool", "armchair", "high-back"]),
    ("mushroom", _mushroom, ["stem", "cap"], ["dome", "cone", "parasol", "cluster"]),
    ("rocket", _rocket, ["body", "nose", "fins", "engine", "boosters"], ["classic", "stubby", "boosters", "slim"]),
    ("dumbbell", _dumbbell, ["handle", "weights"], ["round", "plates", "block", "barbell"]),
    ("house", _house, ["walls", "roof", "chimney", "door"], ["gable", "hut", "tower", "bungalow"]),
]

CATEGORIES: list[str] = [c[0] for c in _CATEGORY_DEFS]
VARIANTS: int = 4
FINE_NAMES: list[str] = [f"{c[0]}/{v}" for c in _CATEGORY_DEFS for v in c[3]]
_PART_OFFSET: list[int] = list(np.cumsum([0] + [len(c[2]) for c in _CATEGORY_DEFS[:-1]]))
PART_NAMES: list[str] = ["background"] + [f"{c[0]}/{p}" for c in _CATEGORY_DEFS for p in c[2]]


# ----------------------------------------------------------------------------------------
# Scene sampling (per image, numpy, from its own generator)
# ----------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _part_colour(dr: _Draw, ood: bool) -> tuple[float, float, float]:
    if not ood:  # train palette: saturated, mid brightness
        return _hsv(dr.u(), dr.u(0.45, 0.95), dr.u(0.45, 0.95))
    if dr.u() < 0.5:  # ood pastel
        return _hsv(dr.u(), dr.u(0.08, 0.3), dr.u(0.85, 1.0))
    return _hsv(dr.u(), dr.u(0.3, 0.9), dr.u(0.28, 0.42))  # ood dark


def _sample_image(cfg: PartsWorldConfig, split: str, index: int) -> dict:
    """Draw the scene of image ``index`` of ``split``: primitives, camera, light, ground."""
    ood = split == "ood"
    rng = np.random.default_rng([cfg.seed, _SPLIT_ID[split], index, 7919])
    dr = _Draw(rng)
    n_fine = len(CATEGORIES) * VARIANTS
    fine = index % n_fine
    cat, var = divmod(fine, VARIANTS)
    name, tmpl, part_names, _ = _CATEGORY_DEFS[cat]
    parts = tmpl(dr, var)

    scale = dr.u(0.8, 1.25)
    yaw = dr.u(0, 2 * math.pi)
    rot_y = _ry(yaw)
    colours = [_part_colour(dr, ood) for _ in part_names]
    rows = []
    for kind, centre, size, rot, pidx in parts:
        c = rot_y @ (np.asarray(centre, dtype=np.float64) * scale)
        r = rot_y if rot is None else rot_y @ rot
        rows.append(prim_row(kind, c, np.asarray(size) * scale, r, colours[pidx - 1],
                             part=_PART_OFFSET[cat] + pidx, sem=cat + 1))
    arr = np.stack(rows)
    cen, rad = arr[:, F_C].astype(np.float64), arr[:, F_BR].astype(np.float64)
    lo, hi = (cen - rad[:, None]).min(0), (cen + rad[:, None]).max(0)
    hi[1] = min(hi[1], float((cen[:, 1] + rad).max()))
    lo[1] = max(lo[1], 0.0)
    bc = (lo + hi) / 2
    # tight-ish bounding radius from the object's axis-aligned bounding box
    brad = float(max(np.linalg.norm(hi - lo) / 2 * 0.82, (hi - lo).max() / 2))

    # camera
    fov = math.radians(cfg.fov_deg)
    fill = dr.u(cfg.fill_min, cfg.fill_max)
    dist = brad / math.sin(fill * fov / 2)
    az = dr.u(0, 2 * math.pi)
    el = math.radians(dr.u(cfg.elev_min_deg, cfg.elev_max_deg))
    jit = np.array([dr.u(-1, 1), dr.u(-1, 1), dr.u(-1, 1)]) * brad * 0.12
    target = bc + jit
    cam = target + dist * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    cam[1] = max(cam[1], 0.15)
    fwd, right, up = look_at(cam, target)

    # distractors: small primitives on the ground beside / behind the object
    nd = rng.integers(0, cfg.distractors + 1) if cfg.distractors > 0 else 0
    foot = float(np.sqrt(((cen[:, [0, 2]] - bc[[0, 2]]) ** 2).sum(1)).max() + rad.max() * 0.5)
    for _ in range(int(nd)):
        kind = 1 + dr.int(4)
        sz = dr.u(0.1, 0.22) * brad * 2
        ang = az + math.pi + dr.u(-1.9, 1.9)
        rr = foot + sz + dr.u(0.2, 1.2) * brad
        x, z = bc[0] + rr * math.sin(ang), bc[2] + rr * math.cos(ang)
        colour = _part_colour(dr, ood)
        ry_ = _ry(dr.u(0, 2 * math.pi))
        if kind == 1:
            arr = np.vstack([arr, prim_row(ELLIPSOID, (x, sz, z), (sz, sz, sz), ry_, colour)])
        elif kind == 2:
            arr = np.vstack([arr, prim_row(BOX, (x, sz * 0.8, z), (sz * 0.8, sz * 0.8, sz * 0.8), ry_, colour)])
        elif kind == 3:
            arr = np.vstack([arr, prim_row(FRUSTUM, (x, sz, z), (sz * 0.6, sz * 0.6, sz), ry_, colour)])
        else:
            arr = np.vstack([arr, prim_row(FRUSTUM, (x, sz, z), (sz * 0.8, 0.0, sz), ry_, colour)])

    # light, sky, ground
    laz = dr.u(0, 2 * math.pi)
    if not ood:
        lel = math.radians(dr.u(35, 70))
        warm = dr.u(-0.06, 0.06)
        light_col = np.array([0.85 + warm, 0.85, 0.85 - warm])
        amb = dr.u(0.3, 0.42)
        sky_top = np.array(_hsv(dr.u(0.55, 0.64), dr.u(0.45, 0.75), dr.u(0.75, 0.95)))
        sky_hor = np.array(_hsv(dr.u(0.52, 0.6), dr.u(0.08, 0.25), dr.u(0.9, 1.0)))
        ambient = amb * (0.7 + 0.3 * sky_top)
        tex_kind = dr.int(3)
        ga = np.array(_hsv(dr.u(), dr.u(0.15, 0.55), dr.u(0.45, 0.8)))
        gb = ga * dr.u(0.45, 0.75)
    else:
        lel = math.radians(dr.u(10, 25))
        style = dr.int(3)
        if style == 0:  # sunset
            light_col = np.array([1.0, 0.62, 0.35]) * dr.u(0.9, 1.1)
            sky_top = np.array(_hsv(dr.u(0.72, 0.8), dr.u(0.5, 0.7), dr.u(0.4, 0.6)))
            sky_hor = np.array(_hsv(dr.u(0.03, 0.1), dr.u(0.5, 0.8), dr.u(0.9, 1.0)))
        elif style == 1:  # overcast
            g = dr.u(0.55, 0.75)
            light_col = np.array([g, g, g * 1.05])
            sky_top = np.array([0.55, 0.57, 0.6]) * dr.u(0.8, 1.1)
            sky_hor = np.array([0.75, 0.76, 0.78]) * dr.u(0.9, 1.1)
        else:  # night / moonlight
            light_col = np.array([0.6, 0.75, 1.0]) * dr.u(0.85, 1.0)
            sky_top = np.array(_hsv(dr.u(0.6, 0.7), dr.u(0.6, 0.9), dr.u(0.12, 0.25)))
            sky_hor = np.array(_hsv(dr.u(0.45, 0.55), dr.u(0.4, 0.7), dr.u(0.3, 0.45)))
        amb = dr.u(0.3, 0.5)
        ambient = amb * (0.5 + 0.5 * sky_hor)
        tex_kind = 3 + dr.int(3)
        ga = np.array(_hsv(dr.u(), dr.u(0.65, 1.0), dr.u(0.55, 0.95)))
        gb = ga * dr.u(0.35, 0.6)
    light = np.array([math.cos(lel) * math.sin(laz), math.sin(lel), math.cos(lel) * math.cos(laz)])
    return {
        "prims": arr.astype(np.float32),
        "cam": np.concatenate([cam, fwd, right, up]),
        "light": np.concatenate([light, light_col, ambient, sky_top, sky_hor]),
        "tex": np.array([dr.u(0.18, 0.45) * brad * 2 / 1.0, dr.u(0, math.pi),
                         dr.u(0.7, 1.6), dr.u(0.7, 1.6), dr.u(), dr.u(), dist * 1.2]),
        "tex_kind": tex_kind,
        "ground": np.concatenate([ga, gb]),
        "label": cat,
        "fine": fine,
    }


def sample_scenes(cfg: PartsWorldConfig, split: str, start: int, count: int) -> tuple[Scene, np.ndarray, np.ndarray]:
    """Scenes of images ``start .. start+count-1`` of ``split`` (CPU tensors) and their labels."""
    _check_split(split)
    items = [_sample_image(cfg, split, i) for i in range(start, start + count)]
    pmax = max(it["prims"].shape[0] for it in items)
    prims = np.zeros((count, pmax, NF), np.float32)
    for i, it in enumerate(items):
        prims[i, : it["prims"].shape[0]] = it["prims"]
    cam = np.stack([it["cam"] for it in items]).astype(np.float32)
    light = np.stack([it["light"] for it in items]).astype(np.float32)
    tex = np.stack([it["tex"] for it in items]).astype(np.float32)
    ground = np.stack([it["ground"] for it in items]).astype(np.float32)
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    sc = Scene(
        prims=f(prims), cam_pos=f(cam[:, 0:3]), cam_fwd=f(cam[:, 3:6]), cam_right=f(cam[:, 6:9]),
        cam_up=f(cam[:, 9:12]),
        tan_half_fov=torch.full((count,), math.tan(math.radians(cfg.fov_deg) / 2), dtype=torch.float32),
        light_dir=f(light[:, 0:3]), light_col=f(light[:, 3:6]), ambient=f(light[:, 6:9]),
        sky_top=f(light[:, 9:12]), sky_horizon=f(light[:, 12:15]),
        tex_kind=torch.tensor([it["tex_kind"] for it in items], dtype=torch.int64),
        tex_a=f(ground[:, 0:3]), tex_b=f(ground[:, 3:6]), tex_scale=f(tex[:, 0]), tex_angle=f(tex[:, 1]),
        tex_phase=f(tex[:, 2:6]), fog_near=f(tex[:, 6]),
    )
    labels = np.array([it["label"] for it in items], dtype=np.int64)
    fine = np.array([it["fine"] for it in items], dtype=np.int64)
    return sc, labels, fine


# ----------------------------------------------------------------------------------------
# Public API: render, load, preview
# ----------------------------------------------------------------------------------------


def _meta(cfg: PartsWorldConfig, split: str) -> dict:
    return {
        "source": "partsworld", "split": split, "config": dataclasses.asdict(cfg),
        "config_hash": cfg.key(), "generator_version": GENERATOR_VERSION,
        "part_names": list(PART_NAMES), "far": float(cfg.far),
    }


def render(cfg: PartsWorldConfig, split: str, start: int, count: int, device: str | torch.device = "cpu") -> CanvasSet:
    """Render images ``start .. start+count-1`` of ``split``.

    Rendering runs in consecutive chunks of ``cfg.chunk`` images starting at ``start``.
    Each image's scene depends only on ``(cfg, split, index)``; the arrays are deterministic
    for a given ``(cfg, split, start, count)`` on CPU.

    Returns:
        A CanvasSet (CPU tensors): images uint8 [count, 3, S, S], depth float32 [count, S, S],
        semantic / parts int64 [count, S, S], labels / fine_labels int64 [count].
    """
    _check_split(split)
    if count <= 0:
        raise ValueError("render: count must be positive")
    out = _render_arrays(cfg, split, start, count, device)
    return _to_canvas(cfg, split, out)


def _render_arrays(cfg: PartsWorldConfig, split: str, start: int, count: int, device,
                   progress: bool = False, desc: str = "") -> dict[str, torch.Tensor]:
    n = count
    s = cfg.size
    images = torch.empty(n, 3, s, s, dtype=torch.uint8)
    depth = torch.empty(n, s, s, dtype=torch.float32)
    semantic = torch.empty(n, s, s, dtype=torch.uint8)
    parts = torch.empty(n, s, s, dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    fine = torch.empty(n, dtype=torch.int64)
    chunk = max(1, int(cfg.chunk))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc or f"partsworld {split}", unit="img", leave=False)
    with torch.no_grad():
        for a in range(0, n, chunk):
            c = min(chunk, n - a)
            sc, lab, fl = sample_scenes(cfg, split, start + a, c)
            r = trace(sc.to(device), s, cfg.far, cfg.shadows)
            images[a:a + c] = (r["rgb"] * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).cpu()
            depth[a:a + c] = r["depth"].cpu()
            semantic[a:a + c] = r["semantic"].to(torch.uint8).cpu()
            parts[a:a + c] = r["parts"].to(torch.uint8).cpu()
            labels[a:a + c] = torch.from_numpy(lab)
            fine[a:a + c] = torch.from_numpy(fl)
            if bar is not None:
                bar.update(c)
    if bar is not None:
        bar.close()
    return {"images": images, "depth": depth, "semantic": semantic, "parts": parts,
            "labels": labels, "fine_labels": fine}


def _to_canvas(cfg: PartsWorldConfig, split: str, arr: dict[str, torch.Tensor]) -> CanvasSet:
    return CanvasSet(
        images=arr["images"], labels=arr["labels"], fine_labels=arr["fine_labels"], depth=arr["depth"],
        semantic=arr["semantic"].long(), parts=arr["parts"].long(), class_names=list(CATEGORIES),
        fine_names=list(FINE_NAMES), meta=_meta(cfg, split),
    )


def default_cache_dir() -> str:
    """``$SPATIALSSL_CACHE`` if set, else ``~/.cache/spatialssl``."""
    env = os.environ.get("SPATIALSSL_CACHE")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "spatialssl")


def cache_path(split: str, cfg: PartsWorldConfig | None = None, cache_dir: str | None = None) -> str:
    """Path of the cache file of (cfg, split): ``<dir>/partsworld/<key>-<split>.pt``."""
    cfg = cfg or PartsWorldConfig()
    _check_split(split)
    return os.path.join(cache_dir or default_cache_dir(), "partsworld", f"{cfg.key()}-{split}.pt")


_ARRAYS = ("images", "depth", "semantic", "parts", "labels", "fine_labels")


def _digest(arr: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in _ARRAYS:
        t = arr[k].contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _save(path: str, cfg: PartsWorldConfig, split: str, arr: dict[str, torch.Tensor]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"header": {"version": GENERATOR_VERSION, "key": cfg.key(), "split": split,
                          "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
                          "shapes": json.dumps({k: list(arr[k].shape) for k in _ARRAYS}),
                          "sha256": _digest(arr)},
               **{k: arr[k] for k in _ARRAYS}}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _try_load(path: str, cfg: PartsWorldConfig, split: str) -> dict[str, torch.Tensor] | None:
    """The verified arrays of a cache file, or None (with a warning) if it is unusable."""
    if not os.path.exists(path):
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        hdr = payload["header"]
        arr = {k: payload[k] for k in _ARRAYS}
        if hdr["version"] != GENERATOR_VERSION or hdr["key"] != cfg.key() or hdr["split"] != split:
            raise ValueError("header does not match the requested config/split")
        n, s = cfg.n_for(split), cfg.size
        want = {"images": [n, 3, s, s], "depth": [n, s, s], "semantic": [n, s, s], "parts": [n, s, s],
                "labels": [n], "fine_labels": [n]}
        got = {k: list(arr[k].shape) for k in _ARRAYS}
        if got != want or json.loads(hdr["shapes"]) != want:
            raise ValueError(f"shapes {got} differ from the expected {want}")
        if _digest(arr) != hdr["sha256"]:
            raise ValueError("sha256 checksum mismatch")
        return arr
    except Exception as e:  # noqa: BLE001 -- any failure means: regenerate
        warnings.warn(f"partsworld: cache file {path} is corrupt or partial ({type(e).__name__}: {e}); "
                      f"regenerating it", RuntimeWarning, stacklevel=3)
        return None


def load(split: str, cfg: PartsWorldConfig | None = None, cache_dir: str | None = None,
         device: str | torch.device = "cpu", progress: bool = True) -> CanvasSet:
    """One PartsWorld split, generated once and cached on disk.

    The cache file is ``cache_path(split, cfg, cache_dir)``; it holds a header (generator
    version, config key, shapes, sha256 of the arrays) that is verified on every load. A
    missing, corrupt or partial file is (re)generated in fixed chunk order, written to a
    temporary file and renamed into place atomically.

    Args:
        split: ``train``, ``val``, ``test`` or ``ood``.
        cfg: generator config (default :class:`PartsWorldConfig`).
        cache_dir: cache root (default :func:`default_cache_dir`).
        device: where to render when generating (the result is always on CPU).
        progress: show a tqdm bar and a summary line while generating.

    Returns:
        CanvasSet with images uint8 [N, 3, S, S], depth float32 [N, S, S], semantic / parts
        int64 [N, S, S], labels / fine_labels int64 [N].
    """
    cfg = cfg or PartsWorldConfig()
    _check_split(split)
    path = cache_path(split, cfg, cache_dir)
    arr = _try_load(path, cfg, split)
    if arr is None:
        t0 = time.time()
        arr = _render_arrays(cfg, split, 0, cfg.n_for(split), device, progress=progress)
        dt = time.time() - t0
        _save(path, cfg, split, arr)
        msg = f"partsworld: generated {split} {cfg.n_for(split)} imgs {cfg.size}px in {dt:.1f}s -> {path}"
        logger.info(msg)
        if progress:
            print(msg, file=sys.stderr)
    cs = _to_canvas(cfg, split, arr)
    cs.meta["cache_file"] = path
    return cs


def preview(out_png: str, cfg: PartsWorldConfig | None = None, split: str = "train", n: int = 16,
            cache_dir: str | None = None) -> str:
    """Write a grid of ``n`` samples: RGB | depth | semantic | parts, titled class/fine name.

    Renders the first ``n`` images of ``split`` directly (the same scenes as the cached
    split, without reading a possibly large cache file; ``cache_dir`` is accepted for API
    symmetry and not needed). Depth is shown per sample from its nearest to its 98th
    percentile non-sky value; label 0 (background) is black. Returns ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = cfg or PartsWorldConfig()
    _check_split(split)
    n = max(1, min(n, cfg.n_for(split)))
    cs = render(cfg, split, 0, n)
    per_row = 4 if n >= 4 else n
    rows = math.ceil(n / per_row)
    fig, axes = plt.subplots(rows, per_row * 4, figsize=(per_row * 4 * 1.5, rows * 1.75), squeeze=False)
    from matplotlib.colors import ListedColormap

    base = plt.get_cmap("tab20")(np.arange(20))
    lab_cmap = ListedColormap(np.vstack([[0, 0, 0, 1], base]))  # 0 (background) = black
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c0 = divmod(i, per_row)
        c0 *= 4
        axes[r, c0].imshow(cs.images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        axes[r, c0].set_title(cs.fine_names[int(cs.fine_labels[i])], fontsize=7, loc="left")
        dep = cs.depth[i].numpy()
        near = dep[dep < cfg.far]
        lo, hi = (float(near.min()), float(np.percentile(near, 98))) if near.size else (0.0, cfg.far)
        axes[r, c0 + 1].imshow(dep, cmap="magma_r", vmin=lo, vmax=max(hi, lo + 1e-3), interpolation="nearest")
        axes[r, c0 + 1].set_title(f"depth {lo:.1f}-{hi:.1f}", fontsize=6)
        sem = cs.semantic[i].numpy()
        axes[r, c0 + 2].imshow(np.where(sem > 0, (sem - 1) % 20 + 1, 0), cmap=lab_cmap, vmin=0, vmax=20,
                               interpolation="nearest")
        axes[r, c0 + 2].set_title("semantic", fontsize=6)
        prt = cs.parts[i].numpy()
        axes[r, c0 + 3].imshow(np.where(prt > 0, (prt - 1) % 20 + 1, 0), cmap=lab_cmap, vmin=0, vmax=20,
                               interpolation="nearest")
        axes[r, c0 + 3].set_title("parts", fontsize=6)
    fig.suptitle(f"PartsWorld {split} ({cfg.size}px, key {cfg.key()})", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
