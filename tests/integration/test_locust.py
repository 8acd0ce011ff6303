"""The documented locust command, run briefly against the real server with the real voice."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

LOCUSTFILE = Path(__file__).resolve().parents[2] / "load_tests" / "locustfile.py"


def test_locust_users_stream_download_and_leave_without_a_single_failure(
    server: str, tmp_path: Path
) -> None:
    locust = Path(sys.executable).with_name("locust")
    command = [str(locust), "-f", str(LOCUSTFILE), "--headless", "--host", server]
    command += ["--users", "6", "--spawn-rate", "6", "--run-time", "20s", "--stop-timeout", "30"]
    command += ["--csv", str(tmp_path / "run"), "--only-summary"]
    env = {**os.environ, "CHORUS_ABANDON_SHARE": "0.5"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "run_stats.csv").open() as f:
        stats = {row["Name"]: row for row in csv.DictReader(f)}
    counts = {name: int(row["Request Count"]) for name, row in stats.items()}
    assert counts["Aggregated"] > 0
    assert {"stream", "stream first audio", "stream complete"} <= counts.keys(), counts
    assert {"mp3", "sse"} & counts.keys(), counts
    failures = {name: int(row["Failure Count"]) for name, row in stats.items()}
    assert failures["Aggregated"] == 0, (failures, done.stderr[-2000:])
    # NOTE: no comparison of "stream first audio" with "stream complete" here: the first counts
    # every stream, the second only those not left (half leave on purpose, the longer ones
    # more often), and a one-sentence stream fits the player's 1 s buffer, so it completes as
    # soon as it is made (CI once read 260 ms first audio against 250 ms complete). Each
    # stream's first audio before its later sentences: test_streaming.py.
    # every request, abandoned streams included, leaves the server with nothing to do
    deadline = time.monotonic() + 30
    while (queue := httpx.get(f"{server}/v1/queue", timeout=10).json())["items"]:
        assert time.monotonic() < deadline, queue
        time.sleep(0.5)
