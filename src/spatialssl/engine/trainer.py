"""One trainer for every framework, with the SP plug-in attached.

``pretrain(cfg)`` reads top to bottom: data -> backbone + framework (+ SP) -> optimiser
-> schedules -> resume -> loop. One training step (``train_step``) is one readable
function: views from uint8 canvases on the device, the framework's named loss terms,
``total = framework + sp.weight * sp``, backward, clipping, optimiser step, momentum hooks.

Randomness is keyed by the step (data order by epoch, views by step), so a run resumed
from its checkpoint takes exactly the same path as one never interrupted; and by the
sample, not the process, so several processes (``engine/distributed.py``) cut the views
one process would.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import time
from pathlib import Path
from typing import Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import config as config_mod
from .. import schedules
from .. import progress, runfolder
from ..backbones import create_backbone, export_timm_state_dict
from ..data import check_canvas, load_split
from ..data.canvases import CanvasSet
from ..data.shards import ShardSet, stream_batches
from ..frameworks import create_framework, framework_class
from ..frameworks.base import Framework, encode
from ..sp import SpatialPrediction
from ..views import BatchPart, MultiCrop, Views
from . import checkpoint, distributed
from .monitor import RunLog, embedding_std, log, rankme


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT reached ``pretrain``: it finished the step it was in, wrote a
    checkpoint and ``status.json`` ("interrupted"), and stopped. Running the same command
    again resumes from that checkpoint exactly. ``exit_code``: 143 (SIGTERM) or 130 (SIGINT),
    what a scheduler (SLURM's ``--requeue``, ``--signal``) and a shell expect."""

    def __init__(self, signame: str, step: int, steps: int, path: Path):
        self.signame, self.step, self.exit_code = signame, step, 128 + int(getattr(signal, signame))
        super().__init__(f"{signame} at step {step} of {steps}: checkpoint written to {path}; run the same command "
                         f"again to resume from it")


@contextlib.contextmanager
def _stop_on_signals():
    """While training, SIGTERM and SIGINT only ask the loop to stop after the current step
    (``flag["sig"]``): a scheduler's preemption signal then costs nothing. A second signal of
    either kind stops at once (the last regular checkpoint is kept). Outside the main thread
    (where handlers cannot be set) nothing changes."""
    import threading

    flag: dict = {"sig": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):  # noqa: ARG001
        if flag["sig"] is not None:  # the second one: stop now
            raise KeyboardInterrupt(signal.Signals(signum).name)
        flag["sig"] = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def pick_device(cfg: dict) -> torch.device:
    want = cfg["device"]
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise config_mod.ConfigError("config key 'device' is 'cuda' but no CUDA device is available "
                                     "(use device=cpu or device=auto)")
    return torch.device(want)


def check_decode(cfg: dict, device: torch.device) -> None:
    """``data.decode=gpu`` needs a CUDA training device: else a ``ConfigError`` naming the key
    and why. No fallback to the CPU: the run would decode 5-10x slower, and with slightly other
    pixels (nvJPEG and libjpeg differ by a few levels), than its config says."""
    if cfg["data"]["decode"] == "gpu" and device.type != "cuda":
        why = ("no CUDA device is available" if not torch.cuda.is_available()
               else f"the run trains on {device} (set device=cuda or device=auto)")
        raise config_mod.ConfigError(f"config key 'data.decode' is 'gpu' (nvJPEG decode on the training GPU) but "
                                     f"{why}; use data.decode=cpu (decoding in data.workers DataLoader processes)")


def param_groups(modules: list[torch.nn.Module]) -> list[dict]:
    """Weight decay on weight matrices only; none on biases, norms, tokens (1-d params)."""
    decay, no_decay = [], []
    for m in modules:
        for _, p in m.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Indices of the batch at ``step``: a fresh permutation per epoch, seeded by (seed, epoch)
    (computed once per epoch; a batch may straddle two epochs)."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs = pos // n
    out = torch.empty_like(pos)
    for e in range(int(epochs[0]), int(epochs[-1]) + 1):
        sel = epochs == e
        out[sel] = _epoch_permutation(n, seed, e)[pos[sel] % n]
    return out


def local_batch_indices(step: int, batch_size: int, n: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This process's slice of the global batch at ``step`` (all of it with one process)."""
    idx = batch_indices(step, batch_size, n, seed)
    return idx if world == 1 else idx.view(world, -1)[rank]


@functools.lru_cache(maxsize=2)
def _device_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The epoch's permutation on ``device``: one asynchronous copy (from pinned memory on
    CUDA) per epoch, not one per step."""
    perm = _epoch_permutation(n, seed, epoch)
    return (perm.pin_memory() if device.type == "cuda" else perm).to(device, non_blocking=True)


def device_batch_indices(step: int, batch_size: int, n: int, seed: int, device: torch.device,
                         rank: int = 0, world: int = 1) -> torch.Tensor:
    """``local_batch_indices`` on ``device``, without a host-device copy per step: this
    process's rows of the global batch are the contiguous positions ``step * batch_size +
    rank * b .. + b`` of the epochs' permutations (kept on the device, ``_device_permutation``),
    so a step's indices are one or two slices of them, cut with Python integers."""
    b = batch_size // world
    lo = step * batch_size + rank * b
    hi = lo + b
    parts = [_device_permutation(n, seed, e, device)[max(lo - e * n, 0):min(hi - e * n, n)]
             for e in range(lo // n, (hi - 1) // n + 1)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def step_batches(data: CanvasSet | ShardSet, cfg: dict, device: torch.device, start: int, end: int,
                 rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
    """This process's uint8 canvases [B / world, 3, H, W] of each step's batch, on the device, for
    steps ``start .. end - 1``: indexed from memory (a CanvasSet, moved to the GPU once when it
    fits), or decoded from prepared shards in DataLoader workers (a ShardSet: memory bounded by
    ``data.workers x data.prefetch`` batches). Either way the batch is a pure function of
    (seed, step), so a resumed run reads exactly the batches an uninterrupted one would."""
    t = cfg["train"]
    n = len(data)

    def index(step: int) -> torch.Tensor:
        return local_batch_indices(step, t["batch_size"], n, cfg["seed"], rank, world)

    if isinstance(data, ShardSet):
        check_decode(cfg, device)
        # data.decode=gpu: the workers pass JPEG bytes, decoded here by nvJPEG onto the device
        on_device = cfg["data"]["decode"] == "gpu"
        for b in stream_batches(data, index, start, end, cfg["data"]["workers"], cfg["data"]["prefetch"],
                                pin_memory=device.type == "cuda" and not on_device,
                                decode_device=device if on_device else None):
            yield b.to(device, non_blocking=True)
        return
    if device.type == "cpu" or data.images.numel() >= 2**31:
        # on the host: gathered there (into pinned memory for a GPU: the upload is asynchronous
        # and the gather of step k + 1 overlaps the device's work on step k)
        pin = device.type == "cuda"
        for step in range(start, end):
            idx = index(step)
            batch = torch.empty((len(idx), *data.images.shape[1:]), dtype=data.images.dtype, pin_memory=pin)
            yield torch.index_select(data.images, 0, idx, out=batch).to(device, non_blocking=True)
        return
    canvases = data.images.to(device)  # moved to the device once; each step's indices are drawn there
    for step in range(start, end):
        yield canvases[device_batch_indices(step, t["batch_size"], n, cfg["seed"], device, rank, world)]


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The views' randomness at ``step``: seeded alike on every process, which draws for the
    whole global batch and keeps its rows (``views.BatchPart``)."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + 7919 * step + 1)


class StepForward(torch.nn.Module):
    """The forward of a training step as one module: the framework's named terms, then SP
    on the local embeddings (or on SP's extra views, encoded by the student backbone).

    One module so that ``DistributedDataParallel`` can wrap the whole forward (teacher,
    student, SP): DDP reduces the gradients of the parameters used in its module's forward
    and must see every one of them there. Returns (total loss, SP terms, framework output).

    With ``world`` > 1 processes SP's loss is normalised by the global batch's valid pairs
    (``Views.sp_valid_total``, known on every process without communication) over
    ``world``, so the gradient the processes average is that of SP's mean over the global
    batch even when fallback pairs fall unevenly across processes.
    """

    def __init__(self, framework: Framework, sp: SpatialPrediction | None, sp_weight: float, world: int = 1) -> None:
        super().__init__()
        self.framework, self.sp, self.sp_weight, self.world = framework, sp, sp_weight, world

    def forward(self, views: Views, step: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        out = self.framework(views, step)
        total, terms = out["loss"], {"loss_fw": out["loss"]}
        if self.sp is not None:
            emb = out.get("local_emb")
            if emb is None:  # frameworks without local views: SP encodes its extra views
                emb = encode(self.framework.backbone, views.locals)
            # fallback pairs (no candidate met max_iou / min_gap) are left out of the SP loss;
            # with several processes each divides its sum by (global valid pairs) / world: the
            # gradients' average over processes is then the global mean's gradient
            n_valid = None
            if self.world > 1 and views.sp_valid_total is not None:
                n_valid = views.sp_valid_total.clamp(min=1).float() / self.world
            sp_out = self.sp(emb, views.local_boxes, views.sp_pairs, views.sp_valid, n_valid)
            total = total + self.sp_weight * sp_out["loss"]
            terms.update({f"sp_{k}" if k != "loss" else "loss_sp": v for k, v in sp_out.items()})
        return total, terms, out


class Run:
    """Everything a step needs; built once by ``build``."""

    def __init__(self, cfg: dict, device: torch.device, framework: Framework, sp: SpatialPrediction | None,
                 multicrop: MultiCrop, optimizer: torch.optim.Optimizer, lr: torch.Tensor, wd: torch.Tensor,
                 rank: int = 0, world: int = 1) -> None:
        self.cfg, self.device, self.framework, self.sp = cfg, device, framework, sp
        self.multicrop, self.optimizer, self.lr, self.wd = multicrop, optimizer, lr, wd
        precision = cfg["train"]["precision"]
        self.bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        self.sp_weight = cfg["sp"]["weight"] if sp is not None else 0.0
        self.rank, self.world = rank, world  # data-parallel position (engine/distributed.py)
        # the step's forward; in DistributedDataParallel with several processes (train.data_parallel=ddp)
        self.model = distributed.wrap(StepForward(framework, sp, self.sp_weight, world), device, world,
                                      cfg["train"]["data_parallel"])
        self.ddp = isinstance(self.model, DistributedDataParallel)
        if cfg["train"]["compile"]:
            # the whole forward (backbones, heads, losses, SP) as one graph: the step comes as a
            # tensor, the random draws (views, iBOT's masks) are made before it; a framework's
            # Python flag (``collect_logs``) gives one graph per value it takes
            self.model.compile(backend=cfg["train"]["compile_backend"])

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def modules(self) -> list[torch.nn.Module]:
        return [self.framework] + ([self.sp] if self.sp is not None else [])


def fast_fp32_matmul() -> None:
    """TF32 for the fp32 matmuls and convolutions left under bf16 autocast (fp32 losses, SP,
    the multi-crop) on CUDA, as ``benchmarks/throughput.py`` measures the step (process-wide)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def build(cfg: dict, canvas_hw: tuple[int, int], device: torch.device, rank: int = 0, world: int = 1) -> Run:
    """Backbone, framework, SP, views, optimiser and schedules from the config; with
    ``world > 1`` processes (a started process group), SyncBatchNorm if ``train.sync_bn``
    and the step's forward in DistributedDataParallel if ``train.data_parallel=ddp``."""
    t = cfg["train"]
    steps = t["steps"]
    # every schedule is as long as train.schedule_steps (0: train.steps); a longer one is
    # that run stopped at train.steps
    total = t["schedule_steps"] or steps
    torch.manual_seed(cfg["seed"])  # model initialisation
    backbone = create_backbone(cfg["backbone"])
    framework = create_framework(cfg, backbone, total).to(device)
    sp = None
    if cfg["sp"]["enabled"]:
        sp = SpatialPrediction.from_config(cfg["sp"], cfg["views"], backbone.embed_dim, canvas_hw).to(device)
    n_local = cfg["views"]["n_local"] if framework.uses_local_views else 0
    if sp is not None and n_local == 1:
        raise config_mod.ConfigError(
            f"config key 'views.n_local' is 1 with sp.enabled and framework '{cfg['framework']['name']}': SP needs "
            f"pairs of local views; set views.n_local=0 (SP then adds sp.extra_local_views views) or >= 2")
    if sp is not None and n_local == 0:
        n_local = cfg["sp"]["extra_local_views"]
        if n_local < 2:
            raise config_mod.ConfigError(f"config key 'sp.extra_local_views' must be >= 2 with framework "
                                         f"'{cfg['framework']['name']}' (SP needs pairs of local views), got {n_local}")
    if t["sync_bn"] and world > 1:
        if device.type != "cuda":
            raise config_mod.ConfigError(
                f"config key 'train.sync_bn' is true with {world} processes on {device.type}: torch's SyncBatchNorm "
                f"runs on GPUs only; set train.sync_bn=false (each process then normalises with its own batch)")
        n_bn = distributed.sync_batch_norm([framework] + ([sp] if sp is not None else []))
        if rank == 0:
            log.info("train.sync_bn: %d BatchNorm layers synchronised over %d processes", n_bn, world)
    if sp is not None and n_local % 2:
        log.warning("%d local views: SP pairs them as (0,1), (2,3), ...; the last one has no SP pair", n_local)
    # local boxes are drawn as disjoint pairs with or without SP, so "framework" and
    # "framework + SP" see the same view distribution and differ by the SP loss alone
    multicrop = MultiCrop.from_config(cfg, n_local=n_local)
    groups = param_groups([framework] + ([sp] if sp is not None else []))
    optimizer = torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, fused=device.type == "cuda")
    peak = t["lr"] * (t["batch_size"] / 256 if t["lr_scale_with_batch"] else 1.0)
    lr = schedules.cosine(peak, t["min_lr"], total, config_mod.schedule_steps(cfg, total)["train.warmup_steps"])
    wd = schedules.cosine(t["weight_decay"], t["weight_decay_end"], total)
    if t["channels_last"]:
        # NHWC weights make convolutions choose NHWC activations (oneDNN on CPU); a ViT is unaffected
        for m in [framework] + ([sp] if sp is not None else []):
            m.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        fast_fp32_matmul()
    return Run(cfg, device, framework, sp, multicrop, optimizer, lr, wd, rank, world)


def train_step(run: Run, canvases: torch.Tensor | None, step: int, views: Views | None = None) -> dict[str, torch.Tensor]:
    """One optimisation step on a batch of uint8 canvases [B, 3, H, W] (on the device),
    or on ready-made ``views`` (benchmarks time the model alone that way).

    Returns the step's named terms (tensors, not synchronised): ``loss`` (total),
    ``loss_fw``, ``loss_sp`` and the framework's and SP's logs.
    """
    cfg, fw = run.cfg, run.framework
    for group in run.optimizer.param_groups:
        group["lr"] = float(run.lr[step])
        if group["apply_wd"]:
            group["weight_decay"] = float(run.wd[step])

    if views is None:
        # this process's rows of the global batch: views drawn per sample, not per process
        b = canvases.shape[0]
        part = BatchPart(run.rank * b, b, run.world * b) if run.world > 1 else None
        views = run.multicrop(canvases, step_generator(cfg["seed"], step, run.device), part)
    views = fw.draw(views, step)  # the framework's own random draws, outside a compiled forward
    with run.autocast():  # the step as a 0-d tensor: a compiled forward is not recompiled each step
        total, terms, out = run.model(views, torch.full((), step, dtype=torch.long, device=run.device))

    run.optimizer.zero_grad(set_to_none=True)
    total.backward()  # in DDP: gradients averaged over processes during backward
    if run.world > 1 and not run.ddp:
        distributed.all_reduce_grads([p for m in run.modules() for p in m.parameters()], run.world)
    fw.after_backward(step)
    clip = cfg["train"]["clip_grad"]
    if clip > 0:
        params = [p for m in run.modules() for p in m.parameters() if p.grad is not None]
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, clip)
    run.optimizer.step()
    fw.after_step(step)

    terms["loss"] = total
    # pair counts for sp_fallback_rate (summed between log steps by the loop; tensors, no sync)
    terms["sp_fallbacks"] = torch.as_tensor(views.fallbacks, device=run.device).float()
    terms["sp_pairs"] = torch.full((), float(views.sp_pairs.shape[0] * views.locals.shape[1]), device=run.device)
    for k, v in out.items():
        if k not in ("loss", "local_emb", "emb") and torch.is_tensor(v) and v.numel() == 1:
            terms[k] = v
    terms["_emb"] = out.get("emb")
    return terms


def _state(run: Run, step: int) -> dict:
    return {
        "step": step,
        "steps": run.cfg["train"]["steps"],
        "complete": step >= run.cfg["train"]["steps"],
        "config": run.cfg,
        "framework": run.framework.state_dict(),
        "sp": run.sp.state_dict() if run.sp is not None else None,
        "optimizer": run.optimizer.state_dict(),
        "backbone": run.framework.eval_backbone().state_dict(),
    }


def _collapse_logs(run: Run, terms: dict, values: dict) -> None:
    emb = terms.get("_emb")
    if emb is not None:
        values["emb_std"] = embedding_std(emb)
        values["rankme"] = rankme(emb)
        d = emb.shape[1]
        if values["emb_std"] < 0.1:
            log.warning("collapse warning: normalised embedding std %.3f (x sqrt(D)) < 0.1", values["emb_std"])
        if values["rankme"] < 0.05 * min(d, emb.shape[0]):
            log.warning("collapse warning: RankMe %.1f < 5%% of its maximum %d", values["rankme"], min(d, emb.shape[0]))
    for w in run.framework.collapse_warnings(values):  # the framework's own (DINO's teacher entropies)
        log.warning(w)


def pretrain(cfg: dict, resume: bool = True, stop_after: int | None = None, data: CanvasSet | None = None,
             force: bool = False) -> Path:
    """Pretrain as configured; returns the run directory.

    Args:
        cfg: a resolved config (``config.resolve``).
        resume: continue from the run folder's newest readable checkpoint when there is
            one; ``False`` starts a clean folder, moving an existing one aside to
            ``<out_dir>.old-<time>`` (never deleting it).
        stop_after: stop (with a checkpoint) after this many steps of the run, as an
            interruption would; for tests and time-boxed runs.
        data: the train split, if already loaded (default: ``load_split(cfg["data"], "train")``).
        force: resume even when ``cfg`` differs from the checkpoint's config in keys that
            change what is trained (``config.NUMBER_FREE`` lists those that may change
            freely); the changes are recorded in ``config.yaml`` and ``train.log``.

    Raises:
        config.ConfigError: a bad value, or a resume that would change the config.
        checkpoint.RunLocked: another process is training into ``out_dir``.
        runfolder.CheckpointError: no checkpoint of the folder is readable, or one cannot be written.
        NonFiniteLoss: the loss became NaN or inf (the last good checkpoint is kept).

    See docs/reliability.md for what is promised and the tests that hold it.
    """
    # --- set-up: processes, device, run folder (locked) ---
    t = cfg["train"]
    framework_class(cfg["framework"]["name"]).check_config(cfg)  # before any folder or process is set up
    rank, world, local_rank = distributed.init(cfg["device"])
    main = rank == 0  # only rank 0 writes the run directory
    if t["batch_size"] % world:
        raise config_mod.ConfigError(f"config key 'train.batch_size' ({t['batch_size']}) is the global batch: it "
                                     f"must be divisible by the number of processes ({world})")
    device = pick_device(cfg)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
    check_decode(cfg, device)
    out = Path(cfg["out_dir"])
    new_folder = not out.exists() or (out.is_dir() and not any(out.iterdir()))
    lock, notes = _claim_run_dir(out, resume, main)
    distributed.barrier(world)  # rank 0 has set the folder up (moved an old one aside) before any rank reads it
    logs: list[RunLog] = []  # closed here whatever happens (their handler would log later runs into this one)
    phase = {"training": False}  # set once the first step is about to run
    half_made = False
    try:
        return _pretrain(cfg, out, device, rank, world, resume, force, stop_after, data, notes, logs, phase)
    except NonFiniteLoss as e:
        if main:
            status = runfolder.read_status(out) or {"step": 0, "steps": t["steps"]}
            runfolder.write_status(out, status["step"], t["steps"], error=str(e).split(". ")[0])
        raise
    except BaseException:
        # a folder this call made, failing before its first step (data that does not load, a model
        # that cannot be built): nothing half-made is left behind, the error says what to fix
        half_made = main and new_folder and not phase["training"] and not (out / runfolder.CHECKPOINT).exists()
        raise
    finally:
        for runlog in logs:
            runlog.close()
        if lock is not None:
            lock.release()
        if half_made:
            import shutil

            shutil.rmtree(out, ignore_errors=True)


def _claim_run_dir(out: Path, resume: bool, main: bool) -> tuple[checkpoint.RunLock | None, list[str]]:
    """Create and lock the run folder (rank 0); without ``resume``, move an existing,
    non-empty one aside first. Returns the lock and lines for ``train.log``."""
    if out.exists() and not out.is_dir():
        raise config_mod.ConfigError(f"config key 'out_dir' ({out}) is a file, not a folder")
    if not main:
        return None, []
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise config_mod.ConfigError(f"config key 'out_dir': cannot create {out} ({e.strerror or e})") from None
    lock = checkpoint.RunLock(out).acquire()
    notes = []
    if resume or not any(p.name != runfolder.LOCK for p in out.iterdir()):
        return lock, notes
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = out.with_name(f"{out.name}.old-{stamp}")
        i = 1
        while aside.exists():
            i += 1
            aside = out.with_name(f"{out.name}.old-{stamp}-{i}")
        out.rename(aside)  # our lock (an open file) moves with it and stays held until the new one is
        out.mkdir()
        new = checkpoint.RunLock(out).acquire()
    except BaseException:
        lock.release()
        raise
    lock.release()
    notes.append(f"--no-resume: the previous contents of {out} were moved to {aside}")
    return new, notes


def _resume_state(out: Path, cfg: dict, force: bool) -> tuple[dict | None, list[str]]:
    """The checkpoint to resume from (None: start at step 0) and lines for ``train.log``.

    Reads the newest readable checkpoint (an unreadable newer one is reported and the
    previous one used), then compares its config with ``cfg``: a change outside
    ``config.NUMBER_FREE`` is a ``ConfigError`` unless ``force``; forced changes are
    appended to ``cfg[config.RESUME_HISTORY]``.
    """
    found = runfolder.latest_checkpoint(out)
    if found is None:
        return None, []
    state, path, problems = found
    notes = [f"{p}; resuming from {path.name} (step {state['step']}) instead" for p in problems]
    unsafe, safe = config_mod.resume_changes(state["config"], cfg)
    shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in unsafe.items())
    history = list(state["config"].get(config_mod.RESUME_HISTORY, []))
    if unsafe and not force:
        raise config_mod.ConfigError(
            f"resuming {out} (step {state['step']}) would change its config: {shown}. These change what is trained; "
            f"resume with the config saved there, add --force to continue with the changes (recorded in config.yaml), "
            f"--no-resume to start over (the old folder is moved aside), or another out_dir")
    if unsafe:
        history.append({"step": int(state["step"]), "changes": {k: [a, b] for k, (a, b) in unsafe.items()}})
        notes.append(f"resumed with changed config (--force) at step {state['step']}: {shown}")
    if safe:
        notes.append("changed on resume (safe): " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in safe.items()))
    if history:
        cfg[config_mod.RESUME_HISTORY] = history
    state["_path"] = path
    return state, notes


def _load_state(run: Run, state: dict) -> None:
    """Model, SP and optimiser state from a checkpoint; a mismatch (a forced change of the
    model) is one ``ConfigError`` naming the checkpoint."""
    try:
        run.framework.load_state_dict(state["framework"])
        if run.sp is not None:
            if state["sp"] is None:
                raise config_mod.ConfigError("the checkpoint has no SP head (sp.enabled was false)")
            run.sp.load_state_dict(state["sp"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        raise config_mod.ConfigError(f"checkpoint {state['_path']} does not fit this config ({reason}); the "
                                     f"changes forced on resume alter the model: use --no-resume") from None


def _pretrain(cfg: dict, out: Path, device: torch.device, rank: int, world: int, resume: bool, force: bool,
              stop_after: int | None, data: CanvasSet | None, notes: list[str], logs: list[RunLog],
              phase: dict | None = None) -> Path:
    t = cfg["train"]
    main = rank == 0

    # --- resume decision, before anything in the folder is written ---
    state, resume_notes = _resume_state(out, cfg, force) if resume else (None, [])
    start = int(state["step"]) if state is not None else 0
    distributed.barrier(world)  # every rank has read the checkpoint before rank 0 may move or write files
    runlog = None
    if main:
        if state is not None and state["_path"].name != runfolder.CHECKPOINT:
            # the newest checkpoint is unreadable: keep it aside (never rotate it into the "previous" slot)
            bad = out / runfolder.CHECKPOINT
            if bad.exists():
                bad.rename(out / f"{runfolder.CHECKPOINT}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        for stale in out.glob("*.tmp"):  # left by a kill during a write
            stale.unlink()
        if start < t["steps"]:
            (out / runfolder.BACKBONE).unlink(missing_ok=True)  # belongs to an earlier end of the run
        config_mod.save(cfg, out / runfolder.CONFIG)
        runfolder.write_status(out, start, t["steps"])
        runlog = RunLog(out, start=start)
        logs.append(runlog)
        for line in notes + resume_notes:
            if "unreadable" in line or "changed config" in line:
                log.warning(line)
            else:
                log.info(line)
        if state is not None:
            log.info("resumed from %s at step %d", state["_path"], start)

    # --- data ---
    if t["num_threads"]:
        torch.set_num_threads(t["num_threads"])
    if data is None:
        if not main:
            distributed.barrier(world)  # rank 0 renders / caches the data first
        data = load_split(cfg["data"], "train", progress=t["progress"] and main)
        check_canvas(cfg["data"], data)
        if main:
            distributed.barrier(world)
    n = len(data)
    skipped = data.meta.get("skip_reasons") or {}
    if skipped and main:
        listing = out / runfolder.SKIPPED  # every skipped file and why, one per line
        listing.write_text("".join(f"{p}\t{r}\n" for p, r in skipped.items()))
        log.warning("data: skipped %d unreadable file(s) under %s (%d images kept; all listed in %s): %s%s",
                    len(skipped), data.meta.get("root", cfg["data"]["root"]), n, listing,
                    "; ".join(f"{p} ({r})" for p, r in list(skipped.items())[:20]),
                    f"; and {len(skipped) - 20} more" if len(skipped) > 20 else "")
    if n < t["batch_size"]:
        raise config_mod.ConfigError(f"train split has {n} images, fewer than train.batch_size={t['batch_size']}")

    # --- model, optimiser, schedules ---
    run = build(cfg, data.size, device, rank, world)

    # --- resume ---
    ckpt_path = out / runfolder.CHECKPOINT
    if state is not None:
        _load_state(run, state)
        del state
    log.info("pretrain %s: framework=%s sp=%s backbone=%s steps=%d batch=%d device=%s bf16=%s data=%s (%d imgs %dx%d)",
             cfg["name"], cfg["framework"]["name"], cfg["sp"]["enabled"], cfg["backbone"]["name"], t["steps"],
             t["batch_size"], device, run.bf16, cfg["data"]["name"], n, *data.size)
    if main:
        log.info(config_mod.describe_schedule(cfg, type(run.framework).config_keys))
        warm = config_mod.schedule_steps(cfg)["train.warmup_steps"]
        if warm >= t["steps"]:  # the run ends inside its warm-up: it never trains at train.lr
            log.warning("the lr warm-up (%d steps, train.warmup_steps) is not shorter than the run (%d steps): the "
                        "lr rises over the whole run, to %.3g of train.lr, and never decays; set train.warmup_steps "
                        "below train.steps (e.g. 0.1 of the run)", warm, t["steps"], float(run.lr[t["steps"] - 1]) / (
                            t["lr"] * (t["batch_size"] / 256 if t["lr_scale_with_batch"] else 1.0)))
    if world > 1:
        log.info("rank %d of %d processes: %d images of each batch of %d", rank, world, t["batch_size"] // world,
                 t["batch_size"])

    # --- loop ---
    end = t["steps"] if stop_after is None else min(t["steps"], start + stop_after)
    bar = progress.bar(range(start, end), initial=start, total=t["steps"], desc=cfg["name"],
                       enabled=t["progress"] and main)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    pair_counts = torch.zeros(2, device=device)  # SP fallbacks, pairs since the last log step
    t0, last_step = time.perf_counter(), start
    batches = step_batches(data, cfg, device, start, end, rank, world)
    checkpoint_every = config_mod.schedule_steps(cfg)["train.checkpoint_every"]
    if phase is not None:
        phase["training"] = True
    with _stop_on_signals() as stop:
        _loop(run, cfg, out, bar, batches, runlog, ckpt_path, checkpoint_every, start, end, bad, pair_counts, t0,
              last_step, rank, world, main, stop)
    bar.close()
    if end == t["steps"] and main:
        tmp = out / f"{runfolder.BACKBONE}.tmp"
        export_timm_state_dict(run.framework.eval_backbone(), str(tmp))
        tmp.replace(out / runfolder.BACKBONE)
        runfolder.write_status(out, end, t["steps"])
        log.info("done: %s", out)
    if main:
        runlog.close()
    distributed.barrier(world)  # no rank leaves (and may read the run) before rank 0 has written it
    return out


def _loop(run: Run, cfg: dict, out: Path, bar, batches, runlog, ckpt_path: Path, checkpoint_every: int, start: int,
          end: int, bad: torch.Tensor, pair_counts: torch.Tensor, t0: float, last_step: int, rank: int, world: int,
          main: bool, stop: dict) -> None:
    """The training loop from ``start`` to ``end``: steps, logs, checkpoints; a stop signal
    (``stop``) ends it after the current step with a checkpoint (``TrainingInterrupted``)."""
    t, device = cfg["train"], run.device
    for step in bar:
        batch = next(batches)
        done = step + 1
        logging_step = done % t["log_every"] == 0 or done == end
        run.framework.collect_logs = logging_step
        terms = train_step(run, batch, step)
        bad |= ~torch.isfinite(terms["loss"].detach())
        pair_counts += torch.stack([terms.pop("sp_fallbacks"), terms.pop("sp_pairs")])
        if logging_step:
            values = {k: float(v.detach()) for k, v in terms.items() if k != "_emb" and v is not None}
            if world > 1:
                torch.distributed.all_reduce(pair_counts)  # every rank's pairs
            values["sp_fallback_rate"] = float(pair_counts[0] / pair_counts[1].clamp(min=1))
            pair_counts.zero_()
            _check_finite(distributed.any_rank(bad, world), step, values, ckpt_path)
            now = time.perf_counter()
            values["img_per_s"] = (done - last_step) * t["batch_size"] / max(now - t0, 1e-9)
            values["lr"] = float(run.lr[step])
            t0, last_step = now, done
            if main:
                if done % t["collapse_every"] == 0 or done == end:
                    _collapse_logs(run, terms, values)
                runlog.scalars(done, values)
                log.info("step %d/%d %s", done, t["steps"],
                         " ".join(f"{k} {v:.4g}" for k, v in values.items() if k in _SHOWN))
                bar.set_postfix({k: f"{values[k]:.3g}" for k in ("loss_fw", "loss_sp") if k in values})
        if done % checkpoint_every == 0 or done == end:
            _check_finite(distributed.any_rank(bad, world), step, {}, ckpt_path)
            if main:
                checkpoint.save_atomic(_state(run, done), ckpt_path)
                runfolder.write_status(out, done, t["steps"])
        stopping = stop["sig"] is not None  # a host flag: no device sync on a step that does not stop
        if world > 1 and logging_step:  # every rank stops at the same (logging) step; torchrun signals each
            stopping = bool(distributed.any_rank(torch.tensor(stopping, device=device), world))
        elif world > 1:
            stopping = False
        if stopping and done < end:
            _check_finite(distributed.any_rank(bad, world), step, {}, ckpt_path)
            if main:
                if done % checkpoint_every:
                    checkpoint.save_atomic(_state(run, done), ckpt_path)
                runfolder.write_status(out, done, t["steps"], interrupted=stop["sig"] or "a stop on another rank")
            bar.close()
            err = TrainingInterrupted(stop["sig"] or "SIGTERM", done, t["steps"], ckpt_path)
            log.warning("interrupted: %s", err)
            raise err


_SHOWN = ("loss", "loss_fw", "loss_sp", "sp_loss_zero", "sp_r2_dx", "sp_r2_dy", "sp_r2_ds", "sp_fallback_rate",
          "teacher_mean_entropy",
          "emb_std", "rankme", "img_per_s")


def _check_finite(bad: torch.Tensor, step: int, values: dict, ckpt: Path) -> None:
    if bool(bad):
        msg = (f"non-finite loss at or before step {step + 1}: stopping. The last good checkpoint is kept at {ckpt} "
               f"(if one was written). Try a lower train.lr, train.clip_grad > 0, or train.precision=fp32. "
               f"Last values: {values}")
        log.error(msg)
        raise NonFiniteLoss(msg)
