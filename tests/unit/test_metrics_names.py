"""Metric declarations Ray's C++ side accepts: names and descriptions in ASCII (a description
with a non-ASCII character fails the replica at start, in Ray's Cython layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

METRICS = Path(__file__).resolve().parents[2] / "serve_app" / "metrics.py"


def test_every_metric_name_and_description_is_ascii() -> None:
    strings = [
        node.value
        for node in ast.walk(ast.parse(METRICS.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    assert len(strings) > 20
    assert [s for s in strings if not s.isascii()] == []
