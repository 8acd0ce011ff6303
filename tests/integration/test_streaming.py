"""Streaming with the real voice: chunked audio and SSE, first audio early, no work left behind
by clients that leave, short requests not stuck behind a long one."""

from __future__ import annotations

import asyncio
import base64
import time

import httpx
import pytest
from openai import OpenAI
from ray import serve

from tests.helpers import TEXTS, decode, pcm16, replica_stats, speech_body
from tests.integration.conftest import speech, sse_events

pytestmark = pytest.mark.timeout(240)

TEN = " ".join([*TEXTS, "And that makes ten sentences in all."])
BODY = speech_body(TEN, response_format="pcm", seed=21)


def live_tasks() -> dict[str, int]:
    """Chorus's asyncio tasks alive in the ingress replica, by name."""
    handle = serve.get_deployment_handle("Ingress", app_name="chorus")
    return handle.live_tasks.remote().result(timeout_s=60)


def read_sse(response: httpx.Response) -> tuple[list[dict], bytes]:
    events = list(sse_events(response.iter_lines()))
    audio = b"".join(
        base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"
    )
    return events, audio


@pytest.mark.front_door
def test_ten_sentences_streamed_as_sse_and_chunked_pcm_equal_the_whole_response(client) -> None:
    whole = speech(client, **BODY, stream_format="file")
    assert whole.status_code == 200 and whole.headers["x-chorus-sentences"] == "10"

    with client.stream("POST", "/v1/audio/speech", json={**BODY, "stream_format": "audio"}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/pcm"
        assert r.headers["transfer-encoding"] == "chunked"
        chunks = list(r.iter_raw())
    assert b"".join(chunks) == whole.content
    assert len(chunks) > 1

    sse = {**BODY, "stream_format": "sse", "chorus_events": True}
    with client.stream("POST", "/v1/audio/speech", json=sse) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events, audio = read_sse(r)
    assert audio == whole.content
    types = [e["type"] for e in events]
    assert types[0] == "speech.queue" and types[-1] == "speech.audio.done"
    assert types[1:21] == ["speech.audio.delta", "speech.sentence"] * 10
    assert set(types[21:-1]) <= {"speech.audio.delta"}  # the resampler's last samples
    timings = [e for e in events if e["type"] == "speech.sentence"]
    assert [t["index"] for t in timings] == list(range(10))
    assert all(a["end_s"] < b["start_s"] for a, b in zip(timings, timings[1:], strict=False))
    assert timings[-1]["end_s"] == pytest.approx(len(pcm16(audio)) / 24000, abs=0.01)
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "aac", "flac"])
def test_every_format_streams_and_decodes_like_the_whole_file(client, fmt: str) -> None:
    three = {**BODY, "input": " ".join(TEXTS[:3]), "response_format": fmt}
    whole, _ = decode(speech(client, **three, stream_format="file").content)
    with client.stream("POST", "/v1/audio/speech", json={**three, "stream_format": "audio"}) as r:
        assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
        streamed, rate = decode(r.read())
    assert rate == (24000 if fmt == "opus" else 22050)
    if fmt == "mp3":  # no gapless header when streamed: the encoder's delay and padding stay
        assert 0 <= len(streamed) - len(whole) < 3 * 1152
    else:
        assert len(streamed) == len(whole)


def test_timings_come_as_json_beside_whole_audio(client) -> None:
    answer = speech(client, **{**BODY, "timings": True}).json()
    sentences = answer["sentences"]
    assert [s["text"] for s in sentences][:2] == TEXTS[:2]
    audio = base64.b64decode(answer["audio"])
    assert audio == speech(client, **BODY).content  # streamed pcm: the same bytes
    assert sentences[-1]["end_s"] == pytest.approx(answer["audio_seconds"], abs=0.01)


@pytest.mark.front_door
def test_first_audio_arrives_while_later_sentences_are_still_pending(client, server) -> None:
    before = replica_stats("chorus")["items"]
    sse = {**BODY, "stream_format": "sse", "chorus_events": True}
    with client.stream("POST", "/v1/audio/speech", json=sse) as r:
        events = sse_events(r.iter_lines())
        assert next(events)["type"] == "speech.queue"
        assert next(events)["type"] == "speech.audio.delta"
        done_at_first_audio = replica_stats("chorus")["items"] - before
        queue_at_first_audio = httpx.get(f"{server}/v1/queue").json()
        tasks_at_first_audio = live_tasks()
        rest = [e["type"] for e in events]
    assert done_at_first_audio < 10
    assert queue_at_first_audio["requests"] == 1
    assert tasks_at_first_audio["chorus-speech"] == 1  # the request's own pipeline task
    assert rest.count("speech.sentence") == 10 and rest[-1] == "speech.audio.done"
    assert replica_stats("chorus")["items"] - before == 10


async def leave_after_first_audio(server: str, stream_format: str, seed: int) -> None:
    body = {**BODY, "stream_format": stream_format, "seed": seed}
    async with (
        httpx.AsyncClient(base_url=server, timeout=120) as c,
        c.stream("POST", "/v1/audio/speech", json=body) as r,
    ):
        assert r.status_code == 200
        async for line_or_chunk in r.aiter_lines() if stream_format == "sse" else r.aiter_raw():
            if stream_format == "audio" or "speech.audio.delta" in line_or_chunk:
                return  # leaving the blocks closes the connection mid-stream


@pytest.mark.front_door
def test_clients_that_leave_after_first_audio_leave_no_work_behind(client, server) -> None:
    before = replica_stats("chorus")["items"]

    async def twenty() -> None:
        await asyncio.gather(
            *(leave_after_first_audio(server, ("audio", "sse")[i % 2], i) for i in range(20))
        )

    asyncio.run(twenty())
    # The ingress hears of each departure at once (behind HAProxy too: with splicing on, HAProxy
    # 2.8 kept some of these connections open to the ingress and spun on them, which kept
    # their requests synthesizing for 8-60 s); only items already sent to the model finish.
    left = time.monotonic()
    while (queue := client.get("/v1/queue").json())["requests"]:
        assert time.monotonic() < left + 5, f"requests left behind: {queue}"
        time.sleep(0.1)
    while (queue := client.get("/v1/queue").json())["items"]:
        assert time.monotonic() < left + 30, f"items left behind: {queue}"
        time.sleep(0.2)
    settled = replica_stats("chorus")["items"]
    time.sleep(2.0)
    assert replica_stats("chorus")["items"] == settled  # the counter stopped growing
    assert live_tasks() == {}  # no orphan tasks in the ingress
    # 20 clients x 10 sentences would be 200 items; each got its first sentence and left.
    assert settled - before < 100, settled - before
    after = speech(client, **BODY)
    assert after.status_code == 200 and len(after.content) > 24000 * 2


def test_short_requests_finish_before_a_long_one_sent_with_them(client, server) -> None:
    long_text = " ".join(TEXTS * 40)[:4096].rsplit(" ", 1)[0]
    finished: list[str] = []

    async def post(c: httpx.AsyncClient, name: str, text: str) -> int | str:
        body = speech_body(text, response_format="wav")
        response = await c.post("/v1/audio/speech", json=body)
        finished.append(name)
        return 200 if response.status_code == 200 else f"{response.status_code} {response.text}"

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=server, timeout=200) as c:
            long = asyncio.create_task(post(c, "long", long_text))
            while not (await c.get("/v1/queue")).json()["items"]:
                await asyncio.sleep(0.05)  # the long request's first items are queued
            shorts = [post(c, f"short{i}", TEXTS[i % len(TEXTS)]) for i in range(8)]
            return await asyncio.gather(long, *shorts)

    assert asyncio.run(race()) == [200] * 9
    assert finished[-1] == "long", finished


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
def test_openai_client_streams(server: str, stream_format: str) -> None:
    client = OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=120)
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="alloy",
        input="Streaming works with the official client. It really does.",
        response_format="pcm",
        stream_format=stream_format,  # type: ignore[arg-type]
    ) as response:
        if stream_format == "audio":
            audio = b"".join(response.iter_bytes())
        else:
            events = list(sse_events(response.iter_lines()))
            assert events[-1]["type"] == "speech.audio.done"
            audio = b"".join(
                base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"
            )
    assert 2.0 < len(pcm16(audio)) / 24000 < 8.0
