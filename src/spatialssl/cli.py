"""The ``spatialssl`` command.

    spatialssl pretrain -c dino_sp --set train.steps=2000 --set out_dir=runs/x
    spatialssl eval --checkpoint runs/x --tasks knn,linear,patch_pair [--seeds 3]
    spatialssl report runs/dino runs/dino_sp --out runs/report
    spatialssl data preview --dataset partsworld --out preview.png
    spatialssl demo [--out runs/demo]
    spatialssl compare --frameworks dino,simclr --budget small
    spatialssl config [-c PRESET ...] [--set k=v ...]   (print the resolved config)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from . import config as config_mod


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", action="append", default=[], metavar="PRESET",
                   help="preset name (configs/<name>.yaml) or YAML path; repeatable, later ones win")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one config key, e.g. --set train.steps=100; repeatable")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (e.g. one that registers your own framework); repeatable")


def _eval_overrides(items: list[str]) -> dict:
    """``--set eval.x=1`` style overrides for ``eval``, validated against the defaults."""
    cfg = config_mod.resolve([], items)
    out: dict = {}
    for item in items:
        key = item.split("=", 1)[0].strip()
        section, _, rest = key.partition(".")
        out.setdefault(section, {})[rest] = config_mod.get(cfg, key)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spatialssl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("pretrain", help="pretrain a backbone (framework, optionally + SP)")
    _add_config_args(p)
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")

    p = sub.add_parser("eval", help="evaluate a checkpoint on frozen-feature protocols")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint.pt")
    p.add_argument("--tasks", default="knn,linear,patch_pair", help="comma-separated tasks, or 'all'")
    p.add_argument("--seeds", type=int, default=1, help="probe seeds; >1 reports mean and std")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="where metrics/ goes (default: the run directory)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override an eval or data key, e.g. --set eval.n_test=500")

    p = sub.add_parser("report", help="side-by-side report of evaluated runs")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="runs/report")
    p.add_argument("--title", default="spatialssl report")

    p = sub.add_parser("data", help="data set tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    q = dsub.add_parser("preview", help="write a PNG grid of samples with depth and masks")
    q.add_argument("--dataset", default="partsworld", choices=["partsworld"])
    q.add_argument("--out", required=True)
    q.add_argument("--split", default="train")
    q.add_argument("-n", type=int, default=16)
    q.add_argument("--size", type=int, default=64)

    p = sub.add_parser("demo", help="framework vs framework + SP on PartsWorld, on a CPU, in minutes")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")

    p = sub.add_parser("compare", help="several frameworks, each with and without SP, one report")
    p.add_argument("--frameworks", default="dino,simclr")
    p.add_argument("--budget", default="small", choices=["tiny", "small", "medium"])
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--tasks", default="knn,linear,patch_pair")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p.add_argument("--flips", default="", metavar="POLICIES",
                   help="flip-policy ablation: e.g. per_view,per_image,none, each with and without SP")

    p = sub.add_parser("config", help="print the resolved config")
    _add_config_args(p)

    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return _dispatch(a)
    except (config_mod.ConfigError, ValueError, FileNotFoundError) as e:
        print(f"spatialssl: error: {e}", file=sys.stderr)
        return 2


def _dispatch(a: argparse.Namespace) -> int:
    import importlib

    for module in getattr(a, "plugin", []):
        importlib.import_module(module)
    if a.cmd == "config":
        print(yaml.safe_dump(config_mod.resolve(a.config, a.overrides), sort_keys=False))
        return 0
    if a.cmd == "pretrain":
        from .engine.trainer import pretrain

        cfg = config_mod.resolve(a.config, a.overrides)
        out = pretrain(cfg, resume=not a.no_resume)
        print(f"checkpoint: {out / 'checkpoint.pt'}")
        return 0
    if a.cmd == "eval":
        from .evals import evaluate

        res = evaluate(a.checkpoint, a.tasks, a.seeds, a.out, _eval_overrides(a.overrides), a.device)
        for task, values in res.items():
            shown = {k: round(v, 4) for k, v in values.items() if isinstance(v, float)}
            print(f"{task}: {shown}")
        return 0
    if a.cmd == "report":
        from .report import summary_table, write_report

        path = write_report(a.runs, a.out, a.title)
        print(summary_table(a.runs))
        print(f"report: {path}")
        return 0
    if a.cmd == "data":
        from .data import partsworld

        cfg = partsworld.PartsWorldConfig(size=a.size)
        print(partsworld.preview(a.out, cfg, split=a.split, n=a.n))
        return 0
    if a.cmd == "demo":
        from .experiments import demo

        demo(Path(a.out), a.overrides)
        return 0
    if a.cmd == "compare":
        from .experiments import compare

        compare(a.frameworks.split(","), a.budget, Path(a.out), a.tasks, a.overrides,
                [f for f in a.flips.split(",") if f])
        return 0
    raise AssertionError(a.cmd)


if __name__ == "__main__":
    sys.exit(main())
