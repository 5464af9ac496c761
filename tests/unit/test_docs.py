"""The README says what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import pgqueue
from pgqueue.priority import PRIORITY_NAMES
from pgqueue.schedule import LATERJS_DIFFERENCES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_laterjs_difference_is_documented():
    for text, laterjs, ours in LATERJS_DIFFERENCES:
        assert f"| `{text}` | {laterjs} | {ours} |" in README


def test_the_priority_table_matches_the_names():
    for name, value in PRIORITY_NAMES.items():
        assert f"`{name}`" in README
        assert f"| {value} |" in README


def test_every_public_function_is_in_the_readme():
    missing = [
        name
        for name in pgqueue.__all__
        if not name.startswith("_") and name[0].islower() and f"{name}(" not in README
    ]
    assert missing == []


def test_every_test_named_in_the_feature_parity_section_exists():
    section = README.split("## Feature parity", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", section))
    assert len(named) > 50
    tests = Path(__file__).resolve().parents[1]
    defined = {
        match
        for path in tests.rglob("test_*.py")
        for match in re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(encoding="utf-8"), re.M)
    }
    assert sorted(named - defined) == []
