"""PartsWorld categories and their fine-grained variants: templates of parts."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .scene import _AX_X, _AX_Z, BOX, ELLIPSOID, FRUSTUM, _rx, _ry, _rz

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


