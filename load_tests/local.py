"""Run Chorus on a local Ray instance from Python (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from serve_app.config import NODE_SETTINGS
from serve_app.local import ONE_MACHINE

SERVE_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "serve_config.yaml"


# What `make serve` and deploy/Dockerfile give every Ray process (serve_app.config).
RAY_ENV = {name: value for name, (value, _) in NODE_SETTINGS.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy_args(path: Path = SERVE_CONFIG) -> dict[str, Any]:
    """The `args:` of the first application in a serve config file."""
    return yaml.safe_load(path.read_text())["applications"][0]["args"]


def settled(replicas: int, app: str = "chorus", deployment: str = "Synthesizer") -> bool:
    """The last deploy of `app` is done: it runs, with exactly `replicas` replicas of
    `deployment`, none starting, updating or stopping (a connected Ray driver only).

    NOTE: "n replicas RUNNING" alone is also true before a rolling update has begun."""
    from ray import serve

    status = serve.status().applications[app]
    states = {k: v for k, v in status.deployments[deployment].replica_states.items() if v}
    return status.status == "RUNNING" and states == {"RUNNING": replicas}


@contextmanager
def running_chorus(
    app: Any, port: int | None = None, ready_timeout_s: float = 180, metrics_port: int | None = None
) -> Iterator[str]:
    """Start Ray (node address 127.0.0.1) and Serve on 127.0.0.1, deploy `app`, wait for
    /readyz, yield the base URL; shut everything down afterwards. With `metrics_port`, Ray's
    metrics agent serves Prometheus text there, refreshed every second."""
    import ray
    from ray import serve

    port = port or free_port()
    metrics: dict[str, Any] = {}
    if metrics_port:
        metrics = {
            "_metrics_export_port": metrics_port,
            "_system_config": {"metrics_report_interval_ms": 1000},
        }
    for name, value in {**RAY_ENV, **ONE_MACHINE}.items():
        os.environ.setdefault(name, value)
    ray.init(
        _node_ip_address="127.0.0.1",  # Ray's own ports stay off the network
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        **metrics,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app, name="chorus", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + ready_timeout_s
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("Chorus did not become ready")
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()
