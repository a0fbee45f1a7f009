"""spatialssl.compact: committed outcomes and examples, small and bit for bit; the committed
results still regenerate the report; the repository fits what a GPU call can carry."""

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialssl import compact, runfolder

REPO = Path(__file__).resolve().parents[1]


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_round_trip_is_exact_with_original_dtypes(tmp_path):
    g = torch.Generator().manual_seed(0)
    group = torch.arange(400).repeat_interleave(8)  # int64 image ids, repeated by every key
    obj = {"seeds": [{
        "r2_dx": {"kind": "r2", "group": group, "err2": torch.rand(3200, generator=g), "target": torch.randn(3200, generator=g)},
        "sign_acc_dx": {"kind": "mean", "group": group, "x": (torch.rand(3200, generator=g) > 0.5).float()},
        "miou": {"kind": "miou", "inter": torch.randint(0, 50, (10, 4), generator=g).float(),
                 "union": torch.randint(50, 90, (10, 4), generator=g).float()},
        "neg": torch.tensor([-3.0, 1.5, float("nan")]), "big": torch.tensor([70000, -2], dtype=torch.int64),
        "mask": torch.rand(5, generator=g) > 0.5, "half": torch.rand(4, generator=g).half(),
    }], "names": ["a", "b"], "n": 3, "none": None}
    p = compact.save(tmp_path / "x.npz", obj)
    back = compact.load(p)
    assert _same(obj["seeds"][0]["r2_dx"], back["seeds"][0]["r2_dx"])
    for k in ("sign_acc_dx", "miou"):
        assert _same(obj["seeds"][0][k], back["seeds"][0][k])
    assert torch.equal(back["seeds"][0]["big"], obj["seeds"][0]["big"])
    assert torch.allclose(back["seeds"][0]["neg"], obj["seeds"][0]["neg"], equal_nan=True)
    assert back["seeds"][0]["mask"].dtype == torch.bool and back["seeds"][0]["half"].dtype == torch.float16
    assert back["names"] == ["a", "b"] and back["n"] == 3 and back["none"] is None
    with np.load(p, allow_pickle=False) as z:  # loads without pickle; group stored once, 0/1 narrowed
        stored = {k: z[k] for k in z.files if k != "__index__"}
    assert sum(a.shape == (3200,) and np.issubdtype(a.dtype, np.integer) for a in stored.values()) == 2
    assert any(a.dtype == np.uint8 and a.shape == (3200,) for a in stored.values())


def test_non_integral_floats_are_not_narrowed(tmp_path):
    x = torch.tensor([0.0, 1.0, 0.5])  # not all integral: must stay float32
    back = compact.load(compact.save(tmp_path / "y.npz", {"x": x}))["x"]
    assert back.dtype == torch.float32 and torch.equal(back, x)


def test_read_items_reads_npz_and_earlier_pt(tmp_path):
    obj = {"seeds": [{"top1": {"kind": "mean", "x": torch.tensor([1.0, 0.0])}}]}
    runfolder.write_items(tmp_path / "a", "knn", "outcomes", obj)
    assert _same(runfolder.read_items(tmp_path / "a", "knn", "outcomes"), obj)
    (tmp_path / "b" / "metrics").mkdir(parents=True)
    torch.save(obj, tmp_path / "b" / "metrics" / "knn_outcomes.pt")  # an earlier version's file
    assert _same(runfolder.read_items(tmp_path / "b", "knn", "outcomes"), obj)
    (tmp_path / "c" / "metrics").mkdir(parents=True)
    (tmp_path / "c" / "metrics" / "knn_outcomes.npz").write_bytes(b"not a zip")
    assert runfolder.read_items(tmp_path / "c", "knn", "outcomes") is None  # damaged: no test, no crash


def test_committed_results_regenerate_the_report(tmp_path):
    """The committed (compacted) outcomes of the cpu_grey study's seed-0 SimCLR pair give the
    committed report's paired-test cells to the last digit."""
    from spatialssl.report import write_report

    res = REPO / "results" / "study" / "cpu_grey"
    assert not list(res.rglob("metrics/*_outcomes.pt")), "committed outcomes should be compact (.npz)"
    path = write_report([res / "simclr-cnn-s0", res / "simclr_sp-cnn-s0"], tmp_path, "t")
    new = {r.split("|")[1].strip(): r.split("|")[2:5] for r in path.read_text().splitlines()
           if r.startswith("| kNN top-1") or r.startswith("| patch-pair R² dx") or r.startswith("| depth RMSE")}
    old = {r.split("|")[1].strip(): r.split("|")[2:5] for r in (res / "report" / "report.md").read_text().splitlines()
           if r.startswith("| kNN top-1") or r.startswith("| patch-pair R² dx") or r.startswith("| depth RMSE")}
    assert len(new) == 3 and new == old


def _tracked_bytes() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file())


def _carried_bytes() -> int:
    """What a GPU call carries besides the tree: the wheels in ``.whl/`` where they have been
    downloaded, else, for each package benchmarks/gpu_session.sh downloads there
    (``pip download ... -d .whl NAME==VERSION``), an allowance of ``WHEEL_ALLOWANCE``."""
    script = (REPO / "benchmarks" / "gpu_session.sh").read_text()
    pkgs = set(re.findall(r"pip download[^\n]*-d \.whl\s+([A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+)", script))
    have = list((REPO / ".whl").glob("*.whl")) if (REPO / ".whl").is_dir() else []
    got = {p.name.split("-")[0].lower().replace("_", "-") for p in have}
    missing = [p for p in pkgs if p.split("==")[0].lower().replace("_", "-") not in got]
    return sum(p.stat().st_size for p in have) + WHEEL_ALLOWANCE * len(missing)


WHEEL_ALLOWANCE = 2 * 2**20  # lightly 1.6.0's wheel is 0.8 MiB
LIMIT_MIB = 56  # the device tool sends 64 MiB: 8 MiB left for untracked files and the call's own


def test_repository_travels():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    total = _tracked_bytes() + _carried_bytes()
    assert total <= LIMIT_MIB * 2**20, (f"tracked files + carried wheels: {total / 2**20:.1f} MiB > {LIMIT_MIB} MiB: "
                                        "keep results small (spatialssl.compact, benchmarks/compact_results.py)")
