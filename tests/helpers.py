"""Small shared helpers for the tests."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

TEXTS = [
    "Hello there, how are you doing today?",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "Yes.",
    "I am a sentence of medium length for testing.",
    "Numbers like 42 and 1999 are read aloud.",
    "Why would anyone do that?",
    "This is the seventh sentence, and it is a little longer than most of the others here.",
    "Goodbye now.",
    "Speech synthesis turns written words into sound that people can hear.",
]


def speech_body(input: str, **fields: object) -> dict:  # noqa: A002 - the API's own name
    """A speech request's JSON body: `input` in OpenAI's `tts-1` model and voice `alloy`, and
    `fields` (which may name another voice or model)."""
    return {"model": "tts-1", "voice": "alloy", "input": input, **fields}


def decode(body: bytes) -> tuple[np.ndarray, int]:
    """Samples and rate of an encoded audio file: libsndfile's decoders, or FFmpeg's (PyAV)
    for what libsndfile cannot read (aac)."""
    try:
        data, rate = sf.read(io.BytesIO(body), dtype="float32")
    except sf.LibsndfileError:
        import av

        with av.open(io.BytesIO(body)) as container:
            stream = container.streams.audio[0]
            frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
            return np.concatenate(frames).astype(np.float32), stream.rate
    return data, rate


def pcm16(body: bytes) -> np.ndarray:
    assert len(body) % 2 == 0, "pcm must be whole 16-bit samples"
    return np.frombuffer(body, dtype="<i2").astype(np.float32) / 32767.0


def replica_stats(app: str) -> dict:
    """A model replica's `stats()` (items run, batch size, ...) in app `app`."""
    from ray import serve

    handle = serve.get_deployment_handle("Synthesizer", app_name=app)
    return handle.stats.remote().result(timeout_s=60)


async def replica_stats_async(app: str) -> dict:
    """`replica_stats` from inside an event loop."""
    from ray import serve

    return await serve.get_deployment_handle("Synthesizer", app_name=app).stats.remote()


async def race(
    url: str, groups: dict[str, tuple[int, dict[str, str]]], answers: int
) -> dict[str, int]:
    """`groups` (name -> concurrent clients, their headers) post one-sentence pcm requests
    back to back until `answers` came back while every client was busy; each group's count.
    Any answer but 200 fails the race."""
    import asyncio

    import httpx

    ok = dict.fromkeys(groups, 0)
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def client(group: str, n: int, headers: dict[str, str]) -> None:
            while not stop.is_set():
                text = f"Request {n} of {group}."
                r = await c.post(
                    "/v1/audio/speech",
                    json=speech_body(text, response_format="pcm"),
                    headers=headers,
                )
                assert r.status_code == 200, r.text
                if not stop.is_set():
                    ok[group] += 1
                if sum(ok.values()) >= answers:
                    stop.set()

        await asyncio.gather(
            *(
                client(group, n, headers)
                for group, (count, headers) in groups.items()
                for n in range(count)
            )
        )
    return ok
