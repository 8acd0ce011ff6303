"""One real local Ray instance and one Chorus app (real voice) for the whole test session."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from ray import serve

from load_tests.local import deploy_args, free_port, running_chorus
from serve_app.app import bind_app, build_app
from serve_app.config import parse_app_args
from tests.fakes import FakeEngine
from tests.helpers import speech_body

METRICS_PORT = free_port()


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    # The app is built from deploy/serve_config.yaml's args: tests run what users run.
    with running_chorus(build_app(deploy_args()), metrics_port=METRICS_PORT) as url:
        yield url


@pytest.fixture(scope="session")
def metrics_url(server: str) -> str:
    """Ray's metrics agent on this node: what Prometheus scrapes."""
    return f"http://127.0.0.1:{METRICS_PORT}/metrics"


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


def speech(client: httpx.Client, **fields) -> httpx.Response:
    return client.post("/v1/audio/speech", json=speech_body(**fields))


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


@contextmanager
def fake_app(
    server: str,
    name: str,
    args: dict[str, Any] | None = None,
    delay_s: float = 0.3,
    engine: tuple[type, dict[str, Any]] | None = None,
    blocking: bool = True,
    **options,
) -> Iterator[str]:
    """Another app on the session's Ray instance, with the fake engine (`delay_s` per batch)
    or `engine` (a class and its keyword arguments); without `blocking`, yielded at once
    (its replicas still starting)."""
    engine_cls, engine_kwargs = engine or (FakeEngine, {"delay_s": delay_s})
    app = bind_app(
        parse_app_args(args or {}),
        engine_cls=engine_cls,
        engine_kwargs=engine_kwargs,
        synthesizer_options={"ray_actor_options": {"num_cpus": 0}, **options},
    )
    if blocking:
        serve.run(app, name=name, route_prefix=f"/{name}")
        # NOTE: as a load balancer would (and running_chorus does): the ingress learns that a
        # model replica runs within a second, and admits only a first window until then
        wait_ready(f"{server}/{name}")
    else:  # NOTE: serve.run waits for every replica; its private twin can return at once
        serve._run(app, name=name, route_prefix=f"/{name}", _blocking=False)
    try:
        yield f"{server}/{name}"
    finally:
        serve.delete(name)


def wait_ready(url: str, path: str = "/readyz", timeout_s: float = 60) -> None:
    """Until `path` answers 200 (by default: a model replica runs)."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}{path}", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, f"{url}{path} never answered 200"
        time.sleep(0.1)


async def speak_all(
    url: str, inputs: list[str], seeds: list[int] | None = None
) -> list[httpx.Response]:
    """All `inputs` at once as wav requests (with `seeds`, one each), answers in order."""
    async with httpx.AsyncClient(timeout=120) as c:
        return await asyncio.gather(
            *(
                c.post(
                    f"{url}/v1/audio/speech",
                    json=speech_body(
                        text, response_format="wav", **({} if seeds is None else {"seed": seeds[i]})
                    ),
                )
                for i, text in enumerate(inputs)
            )
        )


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The events of an SSE body, line by line; a comment line is {"type": "comment"}."""
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))
        elif line.startswith(":"):
            yield {"type": "comment"}
