"""The shared frozen-feature extractor and its cache; the context every protocol gets.

A checkpoint's backbone is rebuilt from the config saved in it and frozen. Features of a
set of uint8 images (global [N, D], and patch [N, D, h, w] when a dense task asks) are
computed once and cached in memory and on disk under ``<run>/features/``. The cache key
is a hash of everything that decides the features: the checkpoint (or the random /
reference backbone's weights), the **content** of the input uint8 tensor, the data
config, the eval image size, the probe settings that shaped the input (jigsaw's
reassembled images), and ``FEATURE_VERSION`` (bumped whenever this file's feature code
changes). A stale file cannot be picked up after any of those change.

Prepared shards (``data.name=shards``, ``data/shards.py``) are never held in memory: a
subset of a ``ShardSet`` is a lazy view of its rows (``ShardSet.select``), its features are
extracted from batches decoded in ``data.workers`` DataLoader processes (``extract``: at
most ``workers x prefetch`` decoded batches exist at once, whatever the split's size), and
its cache key uses the shards' manifest digest and the rows (``ShardSet.digest``) instead
of the decoded pixels. In-memory sets (PartsWorld, folders: ``CanvasSet``) keep the
in-memory path. Both give the same features for the same images (a test checks it).

Every subset a protocol uses (probe-train, test, dense, robustness, jigsaw, the two
patch-pair halves) is a **seeded random sample, stratified by class** where the split has
labels (``stratified_sample``): seeded by the evaluation seed and the subset's purpose,
never by the checkpoint, so every run evaluated with the same eval config and data scores
the same test items in the same order. Folder data sets are sorted by class; "the first n
images" would hold a few classes only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import weakref
from pathlib import Path
from typing import Callable

import torch

from ..backbones import Backbone, create_backbone
from ..config import eval_data
from ..data import load_split
from ..data.canvases import CanvasSet, stratified_sample  # noqa: F401 (stratified_sample: evals' name too)
from ..data.shards import ShardSet, stream_batches
from ..progress import bar as progress_bar
from ..views import to_input
from .. import config
from ..config import ConfigError
from .. import runfolder

log = logging.getLogger("spatialssl")

FEATURE_VERSION = 2  # bump when extract(), to_input() or what a cache file holds changes


class NonFiniteError(FloatingPointError, ValueError):
    """Non-finite features or metrics; the message names the run and the task."""


def load_checkpoint(path: str | Path) -> dict:
    """The weights of a run to evaluate: a run folder or one file of it; which file, and what
    a damaged one does, is ``runfolder.load_weights``'s one rule. The file used is
    ``state["_path"]``; ``state["step"]`` and ``state["complete"]`` say how far the run had got.
    """
    return runfolder.load_weights(path)


def checkpoint_hash(path: str | Path, n: int = 16) -> str:
    """SHA-256 of the checkpoint file's bytes (first ``n`` hex digits)."""
    path = Path(path)
    if path.is_dir():
        path = path / runfolder.CHECKPOINT
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-1 of a tensor's dtype, shape and bytes (content, not identity)."""
    h = hashlib.sha1(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def state_digest(module: torch.nn.Module, n: int = 16) -> str:
    """Hash of a module's weights (names and bytes): names a random or reference backbone."""
    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(tensor_digest(v).encode())
    return h.hexdigest()[:n]


# content digests of long-lived input tensors, so a split is hashed once per process; an
# entry is used only while it is the same live tensor at the same in-place version
_DIGESTS: dict[int, tuple[weakref.ref, int, str]] = {}


def _digest_cached(t: torch.Tensor) -> str:
    hit = _DIGESTS.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        return hit[2]
    d = tensor_digest(t)
    try:
        _DIGESTS[id(t)] = (weakref.ref(t, lambda _r, i=id(t): _DIGESTS.pop(i, None)), t._version, d)
    except TypeError:  # not weak-referenceable: just do not memoise
        pass
    return d


class _Rows:
    """Step ``k`` -> rows ``k * batch ..`` of a set of ``n`` (picklable, for DataLoader workers)."""

    def __init__(self, n: int, batch: int) -> None:
        self.n, self.batch = n, batch

    def __call__(self, k: int) -> torch.Tensor:
        return torch.arange(k * self.batch, min(self.n, (k + 1) * self.batch))


def image_batches(images: torch.Tensor | ShardSet, batch_size: int, workers: int = 2,
                  prefetch: int = 2):
    """uint8 [B, 3, H, W] batches of ``images`` in order: slices of an in-memory tensor, or a
    ``ShardSet`` decoded in ``workers`` DataLoader processes (0: in this one; at most
    ``workers x prefetch`` batches wait decoded)."""
    n = len(images)
    steps = -(-n // batch_size)
    if isinstance(images, ShardSet):
        return stream_batches(images, _Rows(n, batch_size), 0, steps, workers if steps > 1 else 0, prefetch)
    return (images[i:i + batch_size] for i in range(0, n, batch_size))


@torch.no_grad()
def extract(backbone: Backbone, images: torch.Tensor | ShardSet, img_size: int, batch_size: int = 256,
            device: torch.device | str = "cpu", patch: bool = False, desc: str = "features",
            progress: bool = True, workers: int = 2, prefetch: int = 2,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
            transform_batch: int = 256) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frozen features of uint8 images [N, 3, H, W] (a tensor, or a ``ShardSet`` streamed in
    batches: see ``image_batches``), resized to ``img_size``.

    Args:
        transform: applied in this process, in order, to consecutive chunks of
            ``transform_batch`` uint8 images (uint8 [b, 3, H, W] -> the same shape) before the
            forward (robustness corrupts streamed images so; a stateful generator sees the
            chunks in the order ``robustness.corrupted`` does).
    Returns:
        global float32 [N, D] and, with ``patch=True``, patch float32 [N, D, h, w] (else None),
        on the CPU (moved to the device by the probes that use them).
    """
    backbone.eval().to(device)
    glob, patches = [], []
    if transform is None:
        batches = image_batches(images, batch_size, workers, prefetch)
    else:
        def chunks():
            for big in image_batches(images, transform_batch, workers, prefetch):
                t = transform(big)
                yield from (t[i:i + batch_size] for i in range(0, len(t), batch_size))
        batches = chunks()
    for b in progress_bar(batches, total=-(-len(images) // batch_size), desc=desc, enabled=progress, leave=False):
        x = to_input(b.to(device), img_size)
        g, p = backbone.features(x)
        glob.append(g.float().cpu())
        if patch:
            patches.append(p.float().cpu())
    return torch.cat(glob), (torch.cat(patches) if patch else None)


def in_memory(cs: CanvasSet | ShardSet) -> CanvasSet:
    """``cs`` as an in-memory ``CanvasSet`` (a ShardSet view decoded with its dense targets):
    for the protocols that need every pixel of a bounded subset at once (dense probes)."""
    return cs.load() if isinstance(cs, ShardSet) else cs


def has_target(cs: CanvasSet | ShardSet, kind: str) -> bool:
    """Whether ``cs`` carries dense target ``kind`` (without decoding a ShardSet's)."""
    return kind in cs.targets if isinstance(cs, ShardSet) else getattr(cs, kind) is not None


class EvalContext:
    """What a protocol needs: config, frozen backbone, data subsets and cached features.

    Attributes:
        cfg: the resolved config (the checkpoint's, with eval overrides).
        backbone: the frozen backbone (eval mode, on ``device``).
        ckpt_hash: short hash naming the weights ("random-<hash>" for a random-init floor).
        seed: the evaluation seed (probe initialisation, data order, and every subset).
        run_name: names the run in errors.
        step: the checkpoint's training step (None when not from a checkpoint).
        complete: whether training had finished (from the checkpoint; None: step == train.steps).
        task: the task being run (set by ``evals.run_task``; named in errors).
        role: "run", "random" (the random-init floor) or "supervised" (the reference).
        outcomes: per-item outcomes of the current task, by metric key (see ``record``).
        weights: for a pretrained backbone probed from a weights file (``evals/pretrained.py``),
            what was loaded (arch, file, sha256, dropped keys); None for a training run.
        factory: builds the random-init backbone of the floor from a seed (None:
            ``create_backbone(cfg["backbone"])``).
    """

    def __init__(self, cfg: dict, backbone: Backbone, ckpt_hash: str, device: torch.device | str = "cpu",
                 cache_dir: Path | None = None, seed: int = 0, progress: bool = True,
                 splits: dict[str, CanvasSet] | None = None, run_name: str = "") -> None:
        self.cfg = cfg
        self.ecfg = cfg["eval"]
        self.device = torch.device(device)
        self.backbone = backbone.eval().to(self.device)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.ckpt_hash = ckpt_hash
        self.cache_dir = cache_dir
        self.seed = seed
        self.progress = progress
        self.run_name = run_name or ckpt_hash
        self.step: int | None = None
        self.complete: bool | None = None
        self.task = ""
        self.outcomes: dict[str, dict] = {}
        self._splits: dict[str, CanvasSet] = splits if splits is not None else {}
        self._subsets: dict[tuple, CanvasSet] = {}
        self._feats: dict[str, tuple] = {}
        self._floor: EvalContext | None = None
        self.role = "run"  # "run" | "random" (the random-init floor) | "supervised" (the reference)
        self.weights: dict | None = None
        self.factory: Callable[[int], Backbone] | None = None

    def _derived(self, backbone: Backbone, ckpt_hash: str, seed: int) -> "EvalContext":
        ctx = EvalContext(self.cfg, backbone, ckpt_hash, self.device, self.cache_dir, seed, self.progress,
                          self._splits, self.run_name)
        ctx._subsets, ctx._feats, ctx.step, ctx.role = self._subsets, self._feats, self.step, self.role
        ctx.complete, ctx.weights, ctx.factory = self.complete, self.weights, self.factory
        return ctx

    @property
    def img_size(self) -> int:
        return self.ecfg["img_size"] or self.cfg["views"]["global_size"]

    def fail(self, what: str) -> NonFiniteError:
        """The error for non-finite numbers, naming the run and the task."""
        who = f"run {self.run_name}" + {"run": "", "random": " (random-init floor)",
                                         "supervised": " (supervised reference)"}[self.role]
        return NonFiniteError(f"{who}, task {self.task or '?'}: {what}; evaluation stopped")

    # ---- data subsets ----------------------------------------------------------------
    def has_split(self, name: str) -> bool:
        """Whether data set ``name`` is loaded already (or was given) in this evaluation."""
        return name in self._splits

    def split_once(self, name: str, load: Callable[[], CanvasSet]) -> CanvasSet:
        """Data set ``name``: ``load()`` the first time, then the same object for every
        context of this evaluation (its floor and reference too)."""
        if name not in self._splits:
            self._splits[name] = load()
        return self._splits[name]

    def subset_once(self, key: tuple, make: Callable[[], CanvasSet]) -> CanvasSet:
        """A subset (or decoded copy) of loaded data cached under ``key``: ``make()`` the
        first time, shared by every context of this evaluation."""
        if key not in self._subsets:
            self._subsets[key] = make()
        return self._subsets[key]

    def full_split(self, name: str) -> CanvasSet:
        """A whole data split (loaded once, shared by every context of this evaluation)."""
        return self.split_once(name, lambda: load_split(self.cfg["data"], name, progress=self.progress))

    def sample(self, cs: CanvasSet, n: int, purpose: str) -> CanvasSet:
        """A seeded, class-stratified random subset of ``n`` rows of ``cs`` (0 or >= len: all of it).

        Seeded by ``purpose`` and the evaluation seed, never by the checkpoint. Of a
        ``ShardSet``, a lazy view (``select``: nothing decoded); of a ``CanvasSet``, its rows.
        """
        if not n or n >= len(cs):
            return cs
        def make() -> CanvasSet:
            idx = stratified_sample(len(cs), n, cs.labels, f"{purpose}/n={n}/of={len(cs)}/seed={self.seed}")
            return cs.select(idx) if isinstance(cs, ShardSet) else cs.subset(idx)

        return self.subset_once((purpose, self.seed, n, len(cs)), make)

    def split(self, name: str) -> CanvasSet:
        """Split ``name`` limited to ``eval.n_train`` (the probe-train split) or ``eval.n_test``
        (any other) images: a seeded, stratified random sample (see ``sample``)."""
        limit = self.ecfg["n_train"] if name == self.ecfg["split_train"] else self.ecfg["n_test"]
        return self.sample(self.full_split(name), limit, f"split:{name}")

    # ---- features --------------------------------------------------------------------
    def cache_key(self, images: torch.Tensor | ShardSet, patch: bool, settings: dict | None = None) -> str:
        """Hash of everything that decides the features of ``images`` (see module docstring):
        of a ShardSet, its manifest digest and rows (``ShardSet.digest``), never its pixels."""
        content = f"shards:{images.digest()}" if isinstance(images, ShardSet) else _digest_cached(images)
        # data keys that change no number (how batches are decoded: workers, prefetch), or that
        # evaluations do not read (data.decode), stay out
        data = eval_data(self.cfg["data"])
        material = {"version": FEATURE_VERSION, "weights": self.ckpt_hash, "images": content,
                    "data": data, "img_size": self.img_size, "patch": patch,
                    "settings": settings or {}}
        return hashlib.sha1(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def features(self, name: str, patch: bool = False, images: torch.Tensor | ShardSet | None = None,
                 tag: str = "", settings: dict | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, transform_batch: int = 256
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of split ``name``'s subset (or of ``images``, e.g. corrupted or reassembled
        ones; ``tag`` only names the cache file, ``settings`` are the probe settings that shaped
        ``images`` and enter the key). A ShardSet subset is streamed, never decoded whole;
        ``transform`` (see ``extract``; its ``settings`` must name it, they are its key) is
        applied to the streamed chunks. Non-finite features raise ``NonFiniteError``."""
        if transform is not None and not settings:
            raise ValueError("features(transform=...) needs the settings that name the transform (the cache key)")
        if images is None:
            sub = self.split(name)
            imgs = sub if isinstance(sub, ShardSet) else sub.images
        else:
            imgs = images
        key = self.cache_key(imgs, patch, settings)
        if key in self._feats:
            return self._feats[key]
        path = None
        out = None
        if self.cache_dir is not None:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{name}{'_' + tag if tag else ''}")
            path = Path(self.cache_dir) / f"{self.ckpt_hash}_{safe}_{key}{'_patch' if patch else ''}.pt"
            if path.exists():
                try:
                    out = torch.load(path, weights_only=True)
                except Exception:  # a damaged cache file is recomputed, never trusted
                    path.unlink()
        if out is None:
            data = self.cfg["data"]
            out = extract(self.backbone, imgs, self.img_size, self.ecfg["batch_size"], self.device, patch,
                          desc=f"features {name}{' ' + tag if tag else ''}", progress=self.progress,
                          workers=int(data.get("workers", 2)), prefetch=int(data.get("prefetch", 2)),
                          transform=transform, transform_batch=transform_batch)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(out, tmp)
                tmp.replace(path)
        for what, t in zip(("global", "patch"), out):
            if t is not None and not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise self.fail(f"{bad} of {t.numel()} {what} features of '{name}{' ' + tag if tag else ''}' "
                                f"are not finite")
        self._feats[key] = out
        return out

    # ---- outcomes --------------------------------------------------------------------
    def record(self, key: str, kind: str, group: torch.Tensor | None = None, **tensors: torch.Tensor) -> None:
        """Per-item outcomes of metric ``key`` over the test items (see docs/evaluations.md):
        ``mean`` (x [N]), ``r2`` (err2 [N], target [N]), ``rmse`` (sq [N]),
        ``miou`` (inter [N, C], union [N, C]); ``group`` [N]: the test image of each item
        where items of one image are not independent (the report resamples images)."""
        out: dict = {"kind": kind}
        if group is not None:
            out["group"] = group.detach().cpu().to(torch.long).clone()
        for k, v in tensors.items():
            v = v.detach().float().cpu()
            if not torch.isfinite(v).all():
                raise self.fail(f"non-finite per-item outcomes of '{key}'")
            out[k] = v.clone()
        self.outcomes[key] = out

    # ---- other backbones over the same data --------------------------------------------
    def with_backbone(self, backbone: Backbone, ckpt_hash: str) -> "EvalContext":
        """The same data, subsets and settings over another backbone (``ckpt_hash`` names it)."""
        return self._derived(backbone, ckpt_hash, self.seed)

    def for_seed(self, seed: int) -> "EvalContext":
        """This backbone under another evaluation seed (other subsets, probes, permutations)."""
        return self._derived(self.backbone, self.ckpt_hash, seed)

    def random_backbone(self) -> Backbone:
        """A random-init backbone of the same architecture (seeded by the eval seed; the
        global RNG is left as it was)."""
        if self.factory is not None:
            return self.factory(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return create_backbone(self.cfg["backbone"])

    def floor(self) -> "EvalContext":
        """The random-init floor: one random backbone per seed, shared by every task (its
        features are cached like any other, keyed by its weights)."""
        if self._floor is None:
            bb = self.random_backbone()
            self._floor = self.with_backbone(bb, f"random-{state_digest(bb)}")
            self._floor.role = "random"
        return self._floor


def eval_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; any other name as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def context_from_checkpoint(path: str | Path, overrides: dict | None = None, device: str = "auto",
                            seed: int = 0, progress: bool = True, cache_dir: Path | None = None) -> EvalContext:
    """Rebuild the (frozen) evaluation backbone from a checkpoint (which file: see
    ``load_checkpoint``); features are cached in ``cache_dir`` (default: ``<run>/features``).
    The context's ``step`` and ``complete`` say how far the run had got. ``device``:
    ``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``."""
    device = eval_device(device)
    state = load_checkpoint(path)
    cfg = config.with_defaults(state["config"])  # a run saved before a key existed reads its default
    cfg.pop("resumed_with_changes", None)
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    if device != "cpu" and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"eval device '{device}': no CUDA device is available (use cpu)")
    backbone = create_backbone(cfg["backbone"])
    backbone.load_state_dict(state["backbone"])
    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    ctx = EvalContext(cfg, backbone, checkpoint_hash(state["_path"]), device, cache_dir or run_dir / runfolder.FEATURES, seed,
                      progress)
    ctx.step, ctx.complete = int(state["step"]), bool(state["complete"])  # how far the run had got
    ctx.run_name = str(run_dir)
    return ctx


def _check_json(value, where: str, ctx: EvalContext) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ctx.fail(f"metric '{where}' is {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_json(v, f"{where}.{k}" if where else k, ctx)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]", ctx)


def check_finite(values: dict, ctx: EvalContext) -> None:
    """Raise ``NonFiniteError`` (naming the run, the task and the key) on a NaN or Inf metric."""
    _check_json(values, "", ctx)


def write_metrics(out_dir: Path, task: str, values: dict, ctx: EvalContext, extra: dict | None = None) -> Path:
    """``<out_dir>/metrics/<task>.json``: values, eval config, seed, checkpoint hash, training
    step, whether training was complete, test-set size and subset seed (``allow_nan=False``).
    A probed weights file (``ctx.weights``) is named by its arch and sha256 instead of a
    framework, SP flag, step and completeness it does not have."""
    d = Path(out_dir) / runfolder.EVALS
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{task}.json"
    steps = ctx.cfg["train"]["steps"]
    record = {"task": task, "values": values, "eval_config": ctx.ecfg, "data_config": ctx.cfg["data"],
              "seed": ctx.seed, "subset_seed": ctx.seed, "checkpoint": ctx.ckpt_hash}
    if ctx.weights is not None:
        record.update(arch=ctx.weights["arch"], weights=ctx.weights)
    else:
        record.update(framework=ctx.cfg["framework"]["name"], sp=ctx.cfg["sp"]["enabled"], step=ctx.step,
                      complete=ctx.complete if ctx.complete is not None else ctx.step is not None and ctx.step == steps)
    record.update(n_test=values.get("n_test") if isinstance(values, dict) else None, **(extra or {}))
    check_finite(record, ctx)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, allow_nan=False))
    tmp.replace(path)
    return path


def write_outcomes(out_dir: Path, task: str, per_seed: list[dict]) -> Path:
    """``<out_dir>/metrics/<task>_outcomes.npz``: ``{"seeds": [{metric key: outcome}, ...]}``
    (one dict per eval seed), in the compact lossless format (``runfolder.write_items``,
    read back by ``runfolder.read_items``)."""
    return runfolder.write_items(out_dir, task, "outcomes", {"seeds": per_seed})


Protocol = Callable[[EvalContext], dict]
