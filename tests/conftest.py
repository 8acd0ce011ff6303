"""Tests are marked by folder: tests/unit (in-process), tests/integration (real Ray Serve on one
local Ray instance), tests/cluster (a fake multi-node cluster: a pytest session of its own,
since a driver joins one Ray instance) and tests/gpu (the engine on CUDA; skipped without)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("unit", "integration", "cluster", "gpu")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    folders = set()
    for item in items:
        folder = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if folder in FOLDERS:
            item.add_marker(getattr(pytest.mark, folder))
            folders.add(folder)
    if {"integration", "cluster"} <= folders:
        raise pytest.UsageError(
            "tests/cluster starts its own Ray cluster: run it in a session of its own "
            "(python -m pytest tests/cluster), as `make test` does"
        )
