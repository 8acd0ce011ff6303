"""One real local Ray instance and one Chorus app (real voice) for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from serve_app.app import build_app
from serve_app.local import deploy_args, running_chorus


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    # The app is built from deploy/serve_config.yaml's args: tests run what users run.
    with running_chorus(build_app(deploy_args())) as url:
        yield url


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
