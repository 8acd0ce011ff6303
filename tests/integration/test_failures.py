"""Failures stay contained and are reported in the envelope (a small fake engine, real Serve)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from ray import serve

from serve_app.app import bind_app
from serve_app.config import parse_app_args
from tests.fakes import FakeEngine
from tests.integration.conftest import assert_envelope

pytestmark = pytest.mark.timeout(120)


@contextmanager
def fake_app(server: str, name: str, **options) -> Iterator[str]:
    """Another app on the session's Ray instance, with the fake engine (0.3 s per batch)."""
    app = bind_app(
        parse_app_args({}),
        engine_cls=FakeEngine,
        engine_kwargs={"delay_s": 0.3},
        synthesizer_options={"ray_actor_options": {"num_cpus": 0}, **options},
    )
    serve.run(app, name=name, route_prefix=f"/{name}")
    try:
        yield f"{server}/{name}"
    finally:
        serve.delete(name)


async def post_all(url: str, inputs: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as c:
        return await asyncio.gather(
            *(
                c.post(
                    f"{url}/v1/audio/speech",
                    json={
                        "model": "tts-1",
                        "voice": "alloy",
                        "input": text,
                        "response_format": "wav",
                    },
                )
                for text in inputs
            )
        )


def test_full_queues_get_503_envelope_with_retry_after(server: str) -> None:
    with fake_app(server, "tiny", max_ongoing_requests=2, max_queued_requests=2) as url:
        responses = asyncio.run(post_all(url, [f"Sentence number {i}." for i in range(16)]))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            error = assert_envelope(r, 503)
            assert error["code"] == "overloaded"
            assert int(r.headers["retry-after"]) >= 1


def test_bad_sentence_fails_only_its_own_request(server: str) -> None:
    good = ["Hello there.", "See you soon.", "Good night."]
    # A long batch wait puts all four sentences into one batch, which the bad one fails.
    with fake_app(server, "shared", user_config={"batch_wait_timeout_s": 0.2}) as url:
        responses = asyncio.run(post_all(url, ["Buried treasure.", *good]))
    bad, *rest = responses
    error = assert_envelope(bad, 500)
    assert error["code"] == "synthesis_failed"
    assert [r.status_code for r in rest] == [200, 200, 200]
