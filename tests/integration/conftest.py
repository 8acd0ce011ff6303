"""One real local Ray instance and one Chorus app (real voice) for the whole test session."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy_args() -> dict:
    """The `args:` of the application in deploy/serve_config.yaml: tests run what users run."""
    config = yaml.safe_load(Path(ROOT / "deploy" / "serve_config.yaml").read_text())
    return config["applications"][0]["args"]


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    import ray
    from ray import serve

    from serve_app.app import build_app

    port = _free_port()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(deploy_args()), name="chorus", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "Chorus did not become ready"
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


def speech(client: httpx.Client, **fields) -> httpx.Response:
    body = {"model": "tts-1", "voice": "alloy", **fields}
    return client.post("/v1/audio/speech", json=body)


def assert_envelope(response: httpx.Response, status: int | None = None) -> dict:
    """A 4xx/5xx whose body is the one error envelope."""
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    return error
