"""The ``spatialssl`` command.

    spatialssl pretrain -c dino_sp --set train.steps=2000        (writes runs/dino_sp: see "Run folders")
    spatialssl eval --checkpoint runs/dino_sp --tasks knn,linear,patch_pair [--seeds 3]
    spatialssl probe --weights vit_s14_reg4.pth --arch vit_small_patch14_reg4_dinov2 [--tasks patch_pair,jigsaw]
    spatialssl report runs/dino runs/dino_sp --out runs/report [--allow-mismatch]
    spatialssl data preview --dataset partsworld --out preview.png
    spatialssl data prepare --root IMAGEFOLDER --out SHARDS [--canvas 256]   (then data.name=shards data.root=SHARDS)
    spatialssl data prepare --layout segmentation --root SEGROOT --out SEGSHARDS   (then eval.seg_root=SEGSHARDS)
    spatialssl demo [--out runs/demo] [--tasks knn,linear] [--seeds 3]
    spatialssl compare --frameworks dino,simclr [--budget small] [--seeds 0,1,2] [--tune train.lr=x0.5,x1,x2]
    spatialssl config [-c PRESET ...] [--set k=v ...]   (print the resolved config)

Run folders: `out_dir` defaults to runs/<name>, and `name` to the last preset's name
(-c dino_sp -> runs/dino_sp; no preset: runs/run); --set name=... or --set out_dir=...
choose others.
Global options (before or after the command): --log-level LEVEL, -q/--quiet, --version.
Errors that are yours to fix (a config key, a file, a folder) are one line on stderr,
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

import yaml

from . import __version__
from . import config as config_mod
from . import runfolder
from .errors import UserError
from .progress import setup_logging

log = logging.getLogger("spatialssl")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _add_global_args(p: argparse.ArgumentParser, top: bool) -> None:
    """--log-level and -q/--quiet, accepted before the command (``top``) and after it (the
    subcommands' copies leave the value alone unless given)."""
    keep = argparse.SUPPRESS
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO" if top else keep,
                   help="console log level (default INFO); progress is shown at INFO and below")
    p.add_argument("-q", "--quiet", action="store_true", default=False if top else keep,
                   help="only warnings and errors: no progress, no INFO lines (train.log keeps them)")


def _add_plugin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (e.g. one that registers your own framework), found in the "
                        "current folder or on PYTHONPATH; repeatable")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", action="append", default=[], metavar="PRESET",
                   help="preset name (configs/<name>.yaml) or YAML path; repeatable, later ones win; the last "
                        "one names the run (out_dir runs/<name>) unless --set name=/out_dir= says otherwise")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one config key, e.g. --set train.steps=100; repeatable")
    _add_plugin_arg(p)


EVAL_SECTIONS = ("eval", "data")  # what `eval --set` may change: the model comes from the checkpoint


def _eval_overrides(items: list[str]) -> dict:
    """``--set eval.x=1`` style overrides for ``eval``, validated against the defaults."""
    config_mod.check_sections(items, EVAL_SECTIONS, "eval", "the backbone, views and framework come from the "
                                                           "checkpoint's config")
    cfg = config_mod.resolve([], items, warn=False)  # validation of the eval.*/data.* keys only
    out: dict = {}
    for item in items:
        key = item.split("=", 1)[0].strip()
        section, _, rest = key.partition(".")
        out.setdefault(section, {})[rest] = config_mod.get(cfg, key)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spatialssl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"spatialssl {__version__}")
    _add_global_args(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_args(common, top=False)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("pretrain", parents=[common], help="pretrain a backbone (framework, optionally + SP)")
    _add_config_args(p)
    p.add_argument("--no-resume", action="store_true",
                   help="start a clean run folder even if a checkpoint exists (the old folder is moved aside to "
                        "OUT_DIR.old-<time>, not deleted)")
    p.add_argument("--force", action="store_true",
                   help="resume even if the config changed in keys that change what is trained (the changes are "
                        "recorded in config.yaml and train.log)")

    p = sub.add_parser("eval", parents=[common], help="evaluate a checkpoint on frozen-feature protocols")
    p.add_argument("--checkpoint", required=True,
                   help="run directory, checkpoint.pt, or backbone.safetensors (with the run's config.yaml beside it)")
    p.add_argument("--tasks", default="knn,linear,patch_pair", help="comma-separated tasks, or 'all'")
    p.add_argument("--seeds", type=int, default=None,
                   help="evaluation seeds (>= 1; default: the run's eval.seeds); >1 reports mean and std")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--out", default=None, help="where metrics/ goes (default: the run directory)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override an eval or data key, e.g. --set eval.n_test=500")
    p.add_argument("--reference", default=None, choices=["supervised"],
                   help="also evaluate a reference: 'supervised' = the same backbone trained on the labels "
                        "for the run's budget (values supervised_<metric>)")
    _add_plugin_arg(p)

    p = sub.add_parser("probe", parents=[common], help="evaluate any pretrained backbone: a timm / torchvision architecture "
                                     "+ a weights file")
    p.add_argument("--weights", required=True,
                   help=".safetensors, .pth or .pt: a state dict, bare or nested (teacher, state_dict, model, ...); "
                        "module./backbone. prefixes stripped, classifier heads dropped")
    p.add_argument("--arch", required=True,
                   help="timm model name (vit_small_patch14_reg4_dinov2, resnet50, convnext_tiny, ...) or "
                        "torchvision:NAME (torchvision:resnet18)")
    p.add_argument("--arch-arg", action="append", default=[], metavar="KEY=VALUE", dest="arch_args",
                   help="constructor argument of the architecture, e.g. --arch-arg depth=6; repeatable")
    p.add_argument("--tasks", default="patch_pair,jigsaw", help="comma-separated tasks, or 'all'")
    p.add_argument("--seeds", type=int, default=None, help="evaluation seeds (>= 1; default: eval.seeds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="where metrics/ goes (default: runs/probe/<arch>-<sha256[:8]>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override an eval, data or views key, e.g. --set eval.n_test=500 --set data.name=folder")

    p = sub.add_parser("report", parents=[common], help="side-by-side report of evaluated runs")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="runs/report")
    p.add_argument("--title", default="spatialssl report")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="report a baseline / + SP pair that differs in more than SP (and keys that change no "
                        "number) instead of refusing it: marked NOT COMPARABLE, its differences listed, no marks")

    p = sub.add_parser("data", parents=[common], help="data set tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    q = dsub.add_parser("preview", parents=[common], help="write a PNG grid of samples with depth and masks")
    q.add_argument("--dataset", default="partsworld", choices=["partsworld"])
    q.add_argument("--out", required=True)
    q.add_argument("--split", default="train")
    q.add_argument("-n", type=int, default=16)
    q.add_argument("--size", type=int, default=64)
    q = dsub.add_parser("prepare", parents=[common],
                        help="decode a data set once into shards on disk (read lazily by training and evals)")
    q.add_argument("--root", default="", help="ImageFolder root (root/<split>/<class>/... or root/<class>/...); "
                   "with --layout segmentation/depth: root/<split>/{images,masks} or root/<split>/{images,depth}")
    q.add_argument("--layout", default="classification", choices=["classification", "segmentation", "depth"],
                   help="folder layout (segmentation: PNG masks; depth: .npy or 16-bit .png depth maps)")
    q.add_argument("--depth-scale", type=float, default=1.0, help="--layout depth: metres = stored value x this")
    q.add_argument("--dataset", default="folder", choices=["folder", "partsworld"],
                   help="partsworld: render the built-in set (with -c/--set data.* for its size) and shard it")
    q.add_argument("--out", required=True, help="shards folder to write (resumable: rerun to finish)")
    q.add_argument("--canvas", type=int, default=None,
                   help="canvas side in px (folder data; default: data.canvas_size of -c/--set, i.e. 64, or 448 "
                        "with the ViT presets: the size training with the same -c then expects)")
    q.add_argument("--splits", default="", help="comma-separated splits (default: every one found)")
    q.add_argument("--shard-size", type=int, default=1024, help="images per shard")
    q.add_argument("--quality", type=int, default=95, help="JPEG quality of the stored canvases")
    q.add_argument("--threads", type=int, default=4,
                   help="decode/encode threads (data.workers is another thing: training's DataLoader processes)")
    q.add_argument("--workers", type=int, dest="threads", help=argparse.SUPPRESS)  # the old name of --threads
    q.add_argument("--on-error", default="skip", choices=["skip", "raise"], help="unreadable files")
    _add_config_args(q)

    p = sub.add_parser("demo", parents=[common],
                       help="framework vs framework + SP on PartsWorld, on a CPU, in minutes")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--tasks", default=None, help="comma-separated tasks, or 'all' (default: the demo's eval.tasks)")
    p.add_argument("--seeds", type=int, default=None, help="evaluation seeds (>= 1; default: the demo's eval.seeds)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    _add_plugin_arg(p)

    p = sub.add_parser("compare", parents=[common],
                       help="frameworks x arms (base, shuffled-target control, + SP) x seeds as resumable cells, "
                            "tuned alike on a validation split; one summary")
    from .study import add_arguments

    add_arguments(p)
    _add_plugin_arg(p)
    p.add_argument("--flips", default="", metavar="POLICIES",
                   help="the flip-policy ablation instead (budgets tiny, small, medium): e.g. per_view,per_image,none, "
                        "each with and without SP, every policy reported (nothing picked)")

    p = sub.add_parser("config", parents=[common], help="print the resolved config")
    _add_config_args(p)

    a = parser.parse_args(argv)
    setup_logging(a.log_level, a.quiet)
    try:
        return _dispatch(a)
    except Exception as e:
        from .engine.trainer import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):  # pretrain stopped by SIGTERM / SIGINT after writing a checkpoint
            print(f"spatialssl: interrupted: {e}", file=sys.stderr)
            return e.exit_code
        if not isinstance(e, _user_errors()):
            raise  # a bug: keep its traceback
        # NonFiniteLoss: its ERROR line, with the last values, is in the log already
        return _error(str(e).split(". Last values")[0])
    except KeyboardInterrupt:
        print("spatialssl: interrupted (a pretrain resumes from its last checkpoint when run again)", file=sys.stderr)
        return 130


# errors that are the user's to fix, each with a one-line message naming the key or file
_LAZY_ERRORS = {"spatialssl.engine.checkpoint": ("RunLocked",),  # runfolder.CheckpointError is a UserError
                "spatialssl.engine.trainer": ("NonFiniteLoss",),
                "spatialssl.evals.features": ("NonFiniteError",)}


def _user_errors() -> tuple[type[BaseException], ...]:
    """``UserError`` (``ConfigError`` among them), plus the engine's errors if the engine
    was imported (looked up here so that ``spatialssl config`` need not import torch). Not
    any ``ValueError``: one from a bug keeps its traceback."""
    known: list[type[BaseException]] = [UserError]
    for module, names in _LAZY_ERRORS.items():
        if module in sys.modules:
            known += [getattr(sys.modules[module], n) for n in names]
    return tuple(known)


def _error(message: str) -> int:
    """One line on stderr, exit status 2. Library messages may begin with 'spatialssl: '
    already (the folder loaders' greppable ones); it is not repeated."""
    message = " ".join(message.split())
    if message.startswith("spatialssl: "):
        message = message[len("spatialssl: "):]
    print(f"spatialssl: error: {message}", file=sys.stderr)
    return 2


def _check_device(device: str) -> None:
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise config_mod.ConfigError(f"--device {device!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise config_mod.ConfigError(f"--device {device}: no CUDA device is available (use --device cpu)")


def _import_plugins(modules: list[str]) -> None:
    """Import each ``--plugin`` module, looked for in the current folder first (as
    ``python -m`` would), then on ``sys.path``. A module that is not found is one line
    naming it and the paths searched; an error inside the module keeps its traceback."""
    if not modules:
        return
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
                raise  # the plugin itself imports something missing: its traceback says where
            raise config_mod.ConfigError(f"--plugin {module}: no module named '{e.name}' (searched: "
                                         f"{', '.join(p or '.' for p in sys.path)})") from None


def _framework_keys(framework: str, overrides: list[str]) -> list[str]:
    """``framework.*`` keys of ``overrides`` that ``framework`` does not read."""
    from .frameworks import unused_keys

    return unused_keys(framework, [o.split("=", 1)[0].strip() for o in overrides])


def _warn_framework_keys(frameworks: list[str], overrides: list[str]) -> None:
    """A warning naming each ``--set framework.x`` that a framework of the run does not read
    (it would be silently ignored; a warning, not an error, so that one list of overrides
    can serve several frameworks, as ``compare``'s does)."""
    from .frameworks import REGISTRY

    for fw in frameworks:
        bad = _framework_keys(fw, overrides)
        if bad:
            log.warning("--set %s: framework '%s' does not read %s (ignored; it reads framework.name and: %s)",
                        ", ".join(bad), fw, "it" if len(bad) == 1 else "them",
                        ", ".join(REGISTRY[fw].config_keys or ()))


def _demo_overrides(a: argparse.Namespace) -> list[str]:
    """``demo``/``compare`` --tasks/--seeds as the eval.* overrides they stand for."""
    extra = []
    if getattr(a, "seeds", None) is not None:
        if a.seeds < 1:
            raise config_mod.ConfigError(f"{a.cmd} --seeds must be >= 1, got {a.seeds}")
        extra.append(f"eval.seeds={a.seeds}")
    if a.cmd == "demo" and a.tasks:
        from .evals import available_tasks

        tasks = available_tasks() if a.tasks == "all" else [t for t in a.tasks.split(",") if t]
        extra.append(f"eval.tasks=[{','.join(tasks)}]")
    return [*a.overrides, *extra]


def _dispatch(a: argparse.Namespace) -> int:
    _import_plugins(getattr(a, "plugin", []))
    if a.cmd == "config":
        cfg = config_mod.resolve(a.config, a.overrides)
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        print(f"# {config_mod.describe_schedule(cfg)}\n")  # a YAML comment: the output stays loadable
        return 0
    if a.cmd == "pretrain":
        from .engine.trainer import pretrain

        cfg = config_mod.resolve(a.config, a.overrides)
        _warn_framework_keys([cfg["framework"]["name"]], a.overrides)
        out = pretrain(cfg, resume=not a.no_resume, force=a.force)
        print(f"checkpoint: {out / runfolder.CHECKPOINT}")
        return 0
    if a.cmd == "eval":
        from .evals import evaluate

        if a.seeds is not None and a.seeds < 1:
            raise config_mod.ConfigError(f"eval --seeds must be >= 1, got {a.seeds}")
        _check_device(a.device)
        res = evaluate(a.checkpoint, a.tasks, a.seeds, a.out, _eval_overrides(a.overrides), a.device,
                       reference=a.reference)
        ckpt = Path(a.checkpoint)
        _print_results(res, Path(a.out) if a.out else (ckpt if ckpt.is_dir() else ckpt.parent))
        return 0
    if a.cmd == "probe":
        return _probe(a)
    if a.cmd == "report":
        from .report import summary_table, write_report

        path = write_report(a.runs, a.out, a.title, allow_mismatch=a.allow_mismatch)
        print(summary_table(a.runs, allow_mismatch=a.allow_mismatch))
        print(f"report: {path}")
        return 0
    if a.cmd == "data" and a.data_cmd == "prepare":
        return _prepare(a)
    if a.cmd == "data":
        from .data import partsworld

        cfg = partsworld.PartsWorldConfig(size=a.size)
        print(partsworld.preview(a.out, cfg, split=a.split, n=a.n))
        return 0
    if a.cmd == "demo":
        from .experiments import DEMO_FRAMEWORK, demo

        _warn_framework_keys([DEMO_FRAMEWORK], a.overrides)
        demo(Path(a.out), _demo_overrides(a))
        return 0
    if a.cmd == "compare":
        frameworks = [f for f in a.frameworks.split(",") if f] or ["dino", "simclr", "mocov3", "byol"]
        _warn_framework_keys(frameworks, a.overrides)
        if a.flips:  # the ablation: every policy shown side by side, in one process
            from .experiments import compare

            if a.budget not in config_mod.BUDGETS:
                raise config_mod.ConfigError(f"--flips runs at budget {', '.join(config_mod.BUDGETS)}, not '{a.budget}'")
            compare(frameworks, a.budget, Path(a.results or "runs/compare"), a.tasks, a.overrides,
                    [f for f in a.flips.split(",") if f])
            return 0
        from .study import from_arguments

        return from_arguments(a)
    raise AssertionError(a.cmd)


def _probe(a: argparse.Namespace) -> int:
    from .evals.pretrained import probe

    if a.seeds is not None and a.seeds < 1:
        raise config_mod.ConfigError(f"probe --seeds must be >= 1, got {a.seeds}")
    _check_device(a.device)
    kwargs = {}
    for item in a.arch_args:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise config_mod.ConfigError(f"probe --arch-arg {item!r}: expected KEY=VALUE, e.g. depth=6")
        kwargs[key.strip()] = yaml.safe_load(value)
    res = probe(a.weights, a.arch, a.tasks, a.out, a.overrides, kwargs, a.seeds, a.device)
    if a.out:
        out = Path(a.out)
    else:  # probe's default folder (evals.pretrained.probe)
        from .pretrained import file_sha256

        out = Path("runs/probe") / f"{a.arch.replace(':', '_')}-{file_sha256(a.weights)[:8]}"
    _print_results(res, out)
    return 0


def _print_results(res: dict[str, dict], out: Path) -> None:
    """The verdict table of ``<out>/metrics/summary.md`` (value, 95% interval, random-init
    floor, chance, n, above / at floor per metric, with the data and sizes used), a line per
    skipped task (nothing to measure on this data, e.g. fine-grained labels on a folder data
    set), and where the raw values are."""
    from .report.single import SUMMARY

    for task, values in res.items():
        if "skipped" in values:
            print(f"{task}: skipped ({values['skipped']})")
    summary = out / runfolder.EVALS / SUMMARY
    if summary.exists():
        print(summary.read_text().split("\n", 2)[-1].rstrip())
    print(f"\nall values: {out / runfolder.EVALS}/<task>.json; this table: {summary}")


def _prepare(a: argparse.Namespace) -> int:
    from .data import shards

    splits = tuple(s for s in a.splits.split(",") if s)
    data_cfg = config_mod.resolve(a.config, a.overrides, warn=False)["data"]
    canvas = a.canvas if a.canvas is not None else data_cfg["canvas_size"]  # what training with the same -c expects
    if a.dataset == "folder":
        if not a.root:
            raise config_mod.ConfigError("data prepare: give --root IMAGEFOLDER (or --dataset partsworld)")
        if a.layout == "classification":
            entries = shards.prepare_folder(a.root, a.out, canvas, splits or None, a.shard_size, a.quality,
                                            a.on_error, a.threads)
        else:
            entries = shards.prepare_dense(a.root, a.out, a.layout, canvas, splits or None, a.shard_size, a.quality,
                                           a.on_error, a.threads, depth_scale=a.depth_scale)
    else:
        from .data import SPLITS, load_split

        if data_cfg["name"] != "partsworld":
            raise config_mod.ConfigError("data prepare --dataset partsworld: data.name must be partsworld")
        entries = {s: shards.prepare_canvases(load_split(data_cfg, s), a.out, s, a.shard_size, a.quality, a.threads,
                                              source={"partsworld": data_cfg})
                   for s in (splits or SPLITS)}
    for split, e in entries.items():
        print(f"{split}: {e['n']} images in {len(e['shards'])} shard(s), {len(e['skipped'])} skipped")
    if a.dataset == "folder" and a.layout != "classification":
        key = "seg_root" if a.layout == "segmentation" else "depth_root"
        print(f"shards: {a.out}  (evaluate with --set eval.{key}={a.out})")
    else:
        print(f"shards: {a.out}  (train and evaluate with --set data.name=shards --set data.root={a.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
