"""Streams under trouble, with a slow fake engine on real Serve: queue events and heartbeats
while waiting, errors after the stream started, deadlines that cancel queued work."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import pytest

from tests.fakes import FakeEngine
from tests.helpers import replica_stats, speech_body
from tests.integration.conftest import assert_envelope, fake_app, sse_events

pytestmark = pytest.mark.timeout(120)

TEN = " ".join(f"Sentence number {i} is here." for i in range(10))
BAD_FOURTH = "One is fine. Two is fine. Three is fine. Buried treasure. Five is never reached."
ONE_AT_A_TIME = {"user_config": {"max_batch_size": 1}}


def body(text: str, **fields) -> dict:
    return speech_body(text, **{"response_format": "pcm", **fields})


@pytest.mark.front_door
def test_sse_reports_queue_position_then_heartbeats(server: str) -> None:
    args = {"heartbeat_s": 0.2}
    with fake_app(server, "queued", args, delay_s=0.25, **ONE_AT_A_TIME) as url:

        async def run() -> list[dict]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                busy = [c.post("/v1/audio/speech", json=body(TEN)) for _ in range(3)]
                background = asyncio.gather(*busy)
                while (await c.get("/v1/queue")).json()["items"] < 6:
                    await asyncio.sleep(0.02)
                async with c.stream(
                    "POST",
                    "/v1/audio/speech",
                    json=body(TEN, stream_format="sse", chorus_events=True),
                ) as r:
                    lines = [line async for line in r.aiter_lines()]
                assert {x.status_code for x in await background} == {200}
                return list(sse_events(iter(lines)))

        events = asyncio.run(run())
    first_audio = next(i for i, e in enumerate(events) if e["type"] == "speech.audio.delta")
    queue = [e for e in events[:first_audio] if e["type"] == "speech.queue"]
    assert len(queue) >= 2 and queue[0]["position"] >= 6, queue
    positions = [q["position"] for q in queue]
    assert positions == sorted(positions, reverse=True), positions
    waits = [q["estimated_start_s"] for q in queue if q["estimated_start_s"] is not None]
    assert waits and waits[0] > 0, queue
    after = [e["type"] for e in events[first_audio:]]
    assert "comment" in after and "speech.queue" not in after
    assert after[-1] == "speech.audio.done"


def test_sse_failure_after_start_is_an_error_event_in_the_envelope(server: str) -> None:
    with fake_app(server, "ssefail", delay_s=0.05) as url, httpx.Client(timeout=60) as c:
        request = body(BAD_FOURTH, stream_format="sse", chorus_events=True)
        with c.stream("POST", f"{url}/v1/audio/speech", json=request) as r:
            assert r.status_code == 200
            events = list(sse_events(r.iter_lines()))
    types = [e["type"] for e in events]
    assert types.count("speech.sentence") == 3
    assert types[-1] == "error" and "speech.audio.done" not in types
    error = events[-1]
    assert error["status"] == 500 and error["error"]["code"] == "synthesis_failed"
    assert set(error["error"]) == {"message", "type", "param", "code"}
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if "audio" in e)
    assert len(audio) > 0


def test_sse_when_queues_are_full_ends_with_a_503_error_event(server: str) -> None:
    args = {"items_per_call": 1}  # Serve's queue limits count calls
    with fake_app(server, "ssefull", args, max_ongoing_requests=1, max_queued_requests=1) as url:

        async def many() -> list[list[dict]]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:

                async def one(i: int) -> list[dict]:
                    request = body(f"Sentence {i}. And one more.", stream_format="sse")
                    async with c.stream("POST", "/v1/audio/speech", json=request) as r:
                        assert r.status_code == 200
                        return list(sse_events(iter([x async for x in r.aiter_lines()])))

                return await asyncio.gather(*(one(i) for i in range(8)))

        streams = asyncio.run(many())
    ends = [events[-1] for events in streams]
    assert {e["type"] for e in ends} == {"speech.audio.done", "error"}, ends
    for end in ends:
        if end["type"] == "error":
            assert end["status"] == 503 and end["error"]["code"] == "overloaded"
            assert end["retry_after_s"] >= 1


def test_chunked_audio_failure_is_an_error_status_before_start_and_a_cut_after(
    server: str,
) -> None:
    with fake_app(server, "cut", delay_s=0.05) as url, httpx.Client(timeout=60) as c:
        early = c.post(
            f"{url}/v1/audio/speech", json=body("Buried treasure.", stream_format="audio")
        )
        assert_envelope(early, 500)
        with (
            pytest.raises(httpx.RemoteProtocolError),
            c.stream(
                "POST", f"{url}/v1/audio/speech", json=body(BAD_FOURTH, stream_format="audio")
            ) as r,
        ):
            assert r.status_code == 200
            for _ in r.iter_raw():
                pass


@pytest.mark.front_door
def test_past_deadline_gets_504_and_queued_items_never_run(server: str) -> None:
    args = {"request_timeout_s": 1.0}
    # a model far slower than its own probe said: the door admits what it cannot finish
    engine = (FakeEngine, {"delay_s": 0.3, "probe_delay_s": 0.001})
    with fake_app(server, "deadline", args, engine=engine, **ONE_AT_A_TIME) as url:

        async def five() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                return await asyncio.gather(
                    *(
                        c.post("/v1/audio/speech", json=body(TEN, stream_format="file"))
                        for _ in range(5)
                    )
                )

        responses = asyncio.run(five())
        for r in responses:
            assert assert_envelope(r, 504)["code"] == "deadline_exceeded"
        settled = replica_stats("deadline")["items"]
        time.sleep(1.5)
        # ~1 s of work at 0.3 s an item, plus the one running when time ran out; without
        # cancellation the 10 items the five requests had queued would all run.
        assert replica_stats("deadline")["items"] == settled <= 6
