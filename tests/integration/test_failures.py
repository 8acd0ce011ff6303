"""Failures stay contained and are reported in the envelope (a small fake engine, real Serve)."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import assert_envelope, fake_app, speak_all

pytestmark = pytest.mark.timeout(120)


@pytest.mark.front_door
def test_full_queues_get_503_envelope_with_retry_after(server: str) -> None:
    # One item per call: Serve's queue limits count calls.
    args = {"items_per_call": 1}
    with fake_app(server, "tiny", args, max_ongoing_requests=2, max_queued_requests=2) as url:
        responses = asyncio.run(speak_all(url, [f"Sentence number {i}." for i in range(16)]))
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
        responses = asyncio.run(speak_all(url, ["Buried treasure.", *good]))
    bad, *rest = responses
    error = assert_envelope(bad, 500)
    assert error["code"] == "synthesis_failed"
    assert [r.status_code for r in rest] == [200, 200, 200]
