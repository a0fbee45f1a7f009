"""docs/reliability.md names the tests that hold each promise: each must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_named_in_the_reliability_doc_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    files = {p.stem for p in (ROOT / "tests").rglob("test_*.py")}  # a file's name is no test's
    named = set(re.findall(r"\b(test_\w+)\b", doc)) - files
    assert named, "the doc names no tests"
    missing = sorted(n for n in named if f"def {n}(" not in sources)
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
    for f in re.findall(r"`(tests/[\w/]+\.py)", doc):
        assert (ROOT / f).exists(), f
