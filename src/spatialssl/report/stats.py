"""Significance of Δ = SP − baseline: the paired bootstrap over the independent test units
(``paired_bootstrap``), the one marking rule (``mark``) and the random-init floor (``at_floor``)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..errors import UserError


def at_floor(sign: int, value: float | None, floor: float | None) -> bool:
    """Whether ``value`` is no better than its random-init ``floor`` (at or below it; at or
    above it for a lower-is-better metric); False when either is missing."""
    if sign == 0 or value is None or floor is None:
        return False
    return value <= floor if sign > 0 else value >= floor


BOOT_REPLICATES = 1000
BOOT_SEED = 0
LEVEL = 0.95
KINDS = {"mean": ("x",), "r2": ("err2", "target"), "rmse": ("sq",), "miou": ("inter", "union")}


def _outcome(o, key: str) -> tuple[str, dict[str, torch.Tensor], torch.Tensor | None]:
    """Validated outcome: kind, float64 tensors of N items, and the group (image) of each item
    [N] or None (ValueError when malformed)."""
    if not isinstance(o, dict) or o.get("kind") not in KINDS:
        raise ValueError(f"outcome of '{key}' must be a dict with kind in {sorted(KINDS)}")
    arrs = {f: torch.as_tensor(o[f]).to(torch.float64) for f in KINDS[o["kind"]] if f in o}
    if len(arrs) != len(KINDS[o["kind"]]):
        raise ValueError(f"outcome of '{key}' ({o['kind']}) needs fields {KINDS[o['kind']]}")
    shapes = {tuple(a.shape) for a in arrs.values()}
    want = 2 if o["kind"] == "miou" else 1
    if len(shapes) != 1 or len(next(iter(shapes))) != want or next(iter(shapes))[0] == 0:
        raise ValueError(f"outcome of '{key}' ({o['kind']}) has fields of shapes {sorted(shapes)}")
    if o["kind"] == "r2":  # R^2 is invariant to a shift of the targets; centring avoids cancellation
        arrs["target"] = arrs["target"] - arrs["target"].mean()
    group = None
    if o.get("group") is not None:
        group = torch.as_tensor(o["group"]).to(torch.long)
        n = next(iter(shapes))[0]
        if group.shape != (n,):
            raise ValueError(f"outcome of '{key}': group of shape {tuple(group.shape)} for {n} items")
    return o["kind"], arrs, group


def metric_from_counts(kind: str, arrs: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """The metric of each bootstrap replicate, from item counts ``w`` [R, N] (how often each
    test item is drawn; all ones = the test set itself): [R].

    - ``mean``: mean of ``x`` [N] (e.g. 1 for a correct prediction): top-1, tile accuracy;
    - ``r2``: 1 - Σ err2 / Σ (target - mean target)², ``err2``, ``target`` [N];
    - ``rmse``: sqrt(mean of ``sq`` [N]);
    - ``miou``: mean over classes with Σ union > 0 of Σ inter / Σ union, ``inter``, ``union`` [N, C].
    NaN where a replicate leaves the metric undefined (no target variance, no class present)."""
    n = w.sum(1)
    if kind == "mean":
        return w @ arrs["x"] / n
    if kind == "rmse":
        return (w @ arrs["sq"] / n).sqrt()
    if kind == "r2":
        t = arrs["target"]
        sst = w @ (t * t) - (w @ t) ** 2 / n
        return torch.where(sst > 1e-12 * (w @ (t * t) + 1e-300), 1 - (w @ arrs["err2"]) / sst, torch.nan)
    inter, union = w @ arrs["inter"], w @ arrs["union"]  # [R, C]
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1e-300), 0.0)
    return torch.where(present.any(1), iou.sum(1) / present.sum(1).clamp_min(1), torch.nan)


@dataclass
class Test:
    """A paired test of Δ = SP − baseline: the Δ its outcomes give, and its ``LEVEL`` interval."""

    delta: float
    lo: float
    hi: float
    n_items: int  # independent units resampled: test items, or images where items are grouped
    n_seeds: int

    def mark(self, sign: int) -> str:
        return mark(self.lo, self.hi, sign)


FLOOR_NOTE = "≤ floor"  # beside a mark: both runs no better than their random-init floor


def mark(lo: float, hi: float, sign: int, floor: bool = False) -> str:
    """The one marking rule: ✓ (SP better) or ✗ (SP worse) when the interval [lo, hi] of
    Δ = SP − baseline excludes 0, ≈ when it does not or the metric has no direction. When
    both runs are at or below their random-init floor (``floor``: ``at_floor`` of both;
    neither can be said to have learnt it) ``FLOOR_NOTE`` comes first and the verdict stays
    beside it ("≤ floor; ✗"): a loss under the floor is still a loss (an earlier rule printed
    the note alone and so hid one, issue "Fair by construction")."""
    if sign == 0 or not (lo > 0 or hi < 0):
        verdict = "≈"
    else:
        verdict = "✓" if (lo > 0) == (sign > 0) else "✗"
    return f"{FLOOR_NOTE}; {verdict}" if floor else verdict


def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _draw_counts(seed: int, draw: int, n: int, r0: int, rc: int) -> torch.Tensor:
    """Item counts [rc, n] of replicates r0 .. r0 + rc: n indices drawn with replacement per
    replicate. A pure function of its arguments (its own generator), so every metric of a
    task, and both runs, see the same resamples."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + draw) * 1_000_003 + n) * 1_000_003 + r0)
    idx = torch.randint(n, (rc, n), generator=g) + torch.arange(rc)[:, None] * n
    return torch.bincount(idx.flatten(), minlength=rc * n).view(rc, n).to(torch.float64)


_cached_counts = functools.lru_cache(maxsize=8)(_draw_counts)  # a task's many metrics share one draw


def _counts(seed: int, draw: int, n: int, r0: int, rc: int, replicates: int) -> torch.Tensor:
    small = replicates * n <= 8 << 20  # all chunks of a draw fit the cache (8 x 8 MB at most)
    return (_cached_counts if small else _draw_counts)(seed, draw, n, r0, rc)


def interval(run: list[dict], key: str, grouped: bool = False, **kw) -> Test:
    """One run's metric (``Test.delta``) and its bootstrap interval, resampled as
    ``paired_bootstrap`` resamples a pair (items or images; widened by the between-seed
    spread): what ``eval`` and ``probe`` print beside each value."""
    return paired_bootstrap(None, run, key, grouped=grouped, **kw)


def paired_bootstrap(base: list[dict] | None, sp: list[dict], key: str, replicates: int = BOOT_REPLICATES,
                     seed: int = BOOT_SEED, level: float = LEVEL, chunk: int = 1 << 20,
                     grouped: bool = False) -> Test:
    """Paired bootstrap over the independent test units of Δ = metric(SP) − metric(baseline) for ``key``.

    ``base``, ``sp``: per-seed outcome dicts (``metrics/<task>_outcomes.npz``'s "seeds"); seed i
    of one run is paired with seed i of the other (same test items, same order). The units
    resampled are the items, or, where the outcomes carry ``group`` [N] (the image of each
    item: patch-pair pairs), the groups: all items of a drawn image come together, as the
    pairs of one image are not independent (resampling them one by one shrinks the interval
    by up to sqrt(pairs per image)). ``grouped``: the outcomes must carry ``group``
    (ValueError otherwise). Each replicate draws U unit indices with replacement once and
    applies them to both runs (and to every seed, when all seeds have the same U), so what
    the two runs share cancels; Δ of a replicate is the mean over seeds of the per-seed Δ.
    The percentile interval of the replicates is then widened, in quadrature on each side,
    by the t-interval of the mean of the per-seed Δ (between-seed spread: the probe's own
    randomness, which resampling items does not see). Vectorised: unit counts [R, U] spread
    to item weights [R, N] times the per-item outcomes, ``chunk`` weights at a time.
    Raises ValueError when the outcomes cannot be paired (kind, N or groups differ, key missing)."""
    single = base is None  # one run's own metric and interval (``interval``), against nothing
    if single:
        base = sp
    n_seeds = min(len(base), len(sp))
    if n_seeds == 0:
        raise UserError("no evaluation seed with outcomes in both runs")
    pairs = []
    for s in range(n_seeds):
        if key not in base[s] or key not in sp[s]:
            raise UserError(f"no outcome of '{key}' for seed {s} of both runs")
        (ka, a, ga), (kb, b, gb) = _outcome(base[s][key], key), _outcome(sp[s][key], key)
        if single:
            a = None
        if a is not None and (ka != kb or any(a[f].shape != b[f].shape for f in a)):
            raise UserError(f"outcomes of '{key}' differ in kind or item count for seed {s}")
        if ga is not None and gb is not None and not torch.equal(ga, gb):
            raise UserError(f"outcomes of '{key}' group their items into other images for seed {s}")
        group = ga if ga is not None else gb
        if grouped and group is None:
            raise UserError(f"outcomes of '{key}' carry no image of each item (group): evaluated before "
                             "items were resampled by image; evaluate again")
        # unit of each item: 0..U-1 (its group's rank), or the item itself
        unit = torch.unique(group, return_inverse=True)[1] if group is not None else None
        pairs.append((ka, a, b, unit))
    ns = [next(iter(b.values())).shape[0] for _, _, b, _ in pairs]
    us = [int(u.max()) + 1 if u is not None else n for (_, _, _, u), n in zip(pairs, ns)]

    def metric(k, arrs, w):  # the baseline of a single run is 0: its Δ is its metric
        return torch.zeros(w.shape[0], dtype=torch.float64) if arrs is None else metric_from_counts(k, arrs, w)

    full = [float(metric(k, b, torch.ones(1, n, dtype=torch.float64)) - metric(k, a, torch.ones(1, n, dtype=torch.float64)))
            for (k, a, b, _), n in zip(pairs, ns)]
    delta = sum(full) / n_seeds
    if not math.isfinite(delta):
        raise ValueError(f"'{key}' is undefined on the test items")
    shared = len(set(us)) == 1
    reps = []
    per = max(1, min(replicates, chunk // max(ns)))
    for r0 in range(0, replicates, per):
        rc = min(per, replicates - r0)
        acc = torch.zeros(rc, dtype=torch.float64)
        for s, ((k, a, b, unit), u) in enumerate(zip(pairs, us)):
            w = _counts(seed, 0 if shared else s, u, r0, rc, replicates)
            if unit is not None:
                w = w[:, unit]  # each item weighs as often as its image was drawn
            acc += metric(k, b, w) - metric(k, a, w)
        reps.append(acc / n_seeds)
    d = torch.cat(reps)
    if torch.isnan(d).float().mean() > 0.05:
        raise ValueError(f"'{key}' is undefined on more than 5% of the bootstrap resamples")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = (float(v) for v in torch.nanquantile(d, q))
    if n_seeds > 1:
        sd = torch.tensor(full, dtype=torch.float64).std().item()
        h = _t_quantile((1 + level) / 2, n_seeds - 1) * sd / math.sqrt(n_seeds)
        lo, hi = delta - math.hypot(delta - lo, h), delta + math.hypot(hi - delta, h)
    return Test(delta, lo, hi, us[0], n_seeds)
