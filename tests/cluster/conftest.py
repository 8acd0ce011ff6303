"""One fake multi-node Ray cluster for tests/cluster: a head without GPUs and two worker nodes
with two fake GPUs each (`ray.cluster_utils.Cluster`, all on this machine). Apps go on with the
real `serve deploy` CLI through the head's dashboard, as on a real cluster.

Runs in a pytest session of its own (`make test` does that): one driver joins one Ray
instance, and the integration tests have theirs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from load_tests.load import Background
from load_tests.local import RAY_ENV, free_port
from tests.helpers import speech_body

ROOT = Path(__file__).resolve().parents[2]
SERVE = str(Path(sys.executable).with_name("serve"))


@dataclass
class FakeCluster:
    address: str  # Ray's GCS address
    dashboard: str  # what `serve deploy -a` talks to
    url: str  # Serve's HTTP proxy
    gpu_nodes: set[str]  # node ids with fake GPUs
    head: str
    port: int

    def deploy(self, app_args: dict[str, Any], deployments: list[dict[str, Any]], **app) -> None:
        """`serve deploy` of a config with one app, "chorus", on the fake engine."""
        config = {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": self.port},
            "applications": [
                {
                    "name": "chorus",
                    "route_prefix": "/",
                    "import_path": "tests.cluster.apps:build_fake_app",
                    "args": app_args,
                    "deployments": deployments,
                    **app,
                }
            ],
        }
        path = ROOT / ".pytest_cache" / "cluster_serve_config.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        subprocess.run(
            [SERVE, "deploy", str(path), "-a", self.dashboard],
            check=True,
            capture_output=True,
            timeout=60,
        )


@pytest.fixture(scope="session")
def cluster() -> Iterator[FakeCluster]:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    # NOTE: every Ray process inherits these: replicas and handles report autoscaling metrics
    # every half second (10 s by default), and workers can import `tests.cluster.apps`.
    for name, value in RAY_ENV.items():  # as `make serve` and the image set them
        os.environ.setdefault(name, value)  # (make test runs some behind the other front door)
    # NOTE: Serve's proxy prefers replicas on its own node; with one proxy here, that would
    # send every request to whichever ingress replica shares the head node. Spread them, as a
    # load balancer in front of a proxy on every node spreads them in a real cluster.
    os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    os.environ["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "0.5"
    os.environ["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "0.5"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    dashboard_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
        },
    )
    gpu_nodes = {cluster.add_node(num_cpus=4, num_gpus=2).node_id for _ in range(2)}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    try:
        yield FakeCluster(
            cluster.address,
            f"http://127.0.0.1:{dashboard_port}",
            f"http://127.0.0.1:{port}",
            gpu_nodes,
            cluster.head_node.node_id,
            port,
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def wait_for(check, timeout_s: float, what: str, every_s: float = 0.5) -> Any:
    """`check()`'s first truthy value within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def ready(url: str) -> bool:
    return httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def running_replicas(deployment: str = "Synthesizer") -> int:
    from ray import serve

    status = serve.status().applications["chorus"].deployments[deployment]
    return status.replica_states.get("RUNNING", 0)


def three_sentence_load(url: str, clients: int) -> Background:
    """`clients` clients posting three-sentence whole-file requests back to back; an answer
    whose audio lost a sentence counts in `failures(sentences=3)`."""
    body = speech_body(
        "First of three. Second of three. Third of three.",
        response_format="wav",
        stream_format="file",
    )
    return Background(url, clients, lambda i: {**body, "seed": i})
