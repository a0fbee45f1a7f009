"""docs/reliability.md names the tests that hold each promise: each must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_named_in_the_reliability_doc_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    named = set(re.findall(r"\b(test_\w+)\b", doc)) - {"test_kill_resume", "test_faults", "test_folders",
                                                      "test_cli", "test_config", "test_trainer", "test_pretrain",
                                                      "test_runfolder"}
    assert named, "the doc names no tests"
    missing = sorted(n for n in named if f"def {n}(" not in sources)
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
    for f in re.findall(r"`(tests/[\w/]+\.py)", doc):
        assert (ROOT / f).exists(), f
