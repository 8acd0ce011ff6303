"""Run Chorus on a local Ray instance from Python (tests and benchmarks)."""

from __future__ import annotations

import os
import random
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


# Ray's workers listen on 10002-19999 (its min/max_worker_port defaults).
_LISTENERS_FROM = 20000
_handed_out: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A free TCP port on 127.0.0.1 that stays free until a server binds it.

    Not one the kernel picks (`bind(0)`): those come from its ephemeral range, where every
    outgoing connection takes its local port, and starting Ray opens hundreds of them
    between this call and the bind (CI once saw HAProxy's frontend refused its port:
    "Address already in use"). Ports below that range and above Ray's worker ports are
    only ever taken by a listener that asks for one."""
    ports = list(range(_LISTENERS_FROM, _ephemeral_start()))
    random.shuffle(ports)
    for port in ports:
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_LISTENERS_FROM}-{_ephemeral_start() - 1}")


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
        # NOTE: "local" starts this run's own Ray; without it ray.init joins whichever
        # Ray this machine started last (/tmp/ray/ray_current_cluster), and fails on
        # _system_config when one is still up (CI: another run's Ray on the machine).
        address="local",
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
