"""PartsWorld ray casting: analytic ray-primitive intersection, shading, shadows, ground, sky (vectorised torch)."""

from __future__ import annotations

import math

import torch

from .scene import BOX, ELLIPSOID, F_BR, F_C, F_COL, F_PART, F_R, F_S, F_SEM, F_TYPE, FRUSTUM, Scene

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


