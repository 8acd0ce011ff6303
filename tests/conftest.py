"""Tests are marked by folder: tests/unit (in-process), tests/integration (real Ray Serve on one
local Ray instance), tests/cluster (a fake multi-node cluster: a pytest session of its own,
since a driver joins one Ray instance), tests/gpu (the engine on CUDA; skipped without) and
tests/image (the image built and run with Docker: `make image-check`, not in `make test`)."""

import os
from pathlib import Path

import pytest

from serve_app.local import LOCAL_ONLY

# Every Ray this session starts has the node address 127.0.0.1, as `make serve` has: its
# ports stay off the network (read when ray is imported, so before any test module is).
os.environ.setdefault(LOCAL_ONLY, "0")

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("unit", "integration", "cluster", "gpu", "image")


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
