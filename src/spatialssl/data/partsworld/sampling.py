"""PartsWorld scene sampling: one numpy generator per image, seeded by (seed, split, index)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .scene import BOX, ELLIPSOID, F_BR, F_C, FRUSTUM, NF, Scene, look_at, prim_row, _ry
from .spec import _SPLIT_ID, PartsWorldConfig, _check_split
from .templates import _CATEGORY_DEFS, _PART_OFFSET, CATEGORIES, VARIANTS, _Draw

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


