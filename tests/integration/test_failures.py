"""Failures stay contained and are reported in the envelope (a small fake engine, real Serve)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from ray import serve

from serve_app.app import bind_app
from serve_app.config import parse_app_args
from tests.fakes import FakeEngine
from tests.integration.conftest import assert_envelope

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def fake_url(server: str) -> Iterator[str]:
    """A second app on the session's Ray instance: fake engine, tiny queues."""
    app = bind_app(
        parse_app_args({}),
        engine_cls=FakeEngine,
        engine_kwargs={"delay_s": 0.3},
        synthesizer_options={
            "max_ongoing_requests": 2,
            "max_queued_requests": 2,
            "ray_actor_options": {"num_cpus": 0},
        },
    )
    serve.run(app, name="fake", route_prefix="/fake")
    yield f"{server}/fake"
    serve.delete("fake")


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


def test_full_queues_get_503_envelope_with_retry_after(fake_url: str) -> None:
    responses = asyncio.run(post_all(fake_url, [f"Sentence number {i}." for i in range(16)]))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            error = assert_envelope(r, 503)
            assert error["code"] == "overloaded"
            assert int(r.headers["retry-after"]) >= 1


def test_bad_sentence_fails_only_its_own_request(fake_url: str) -> None:
    good = ["Hello there.", "See you soon.", "Good night."]
    responses = asyncio.run(post_all(fake_url, ["Buried treasure.", *good]))
    bad, *rest = responses
    error = assert_envelope(bad, 500)
    assert error["code"] == "synthesis_failed"
    assert [r.status_code for r in rest] == [200, 200, 200]
