"""Transport of a streamed response: chunked audio bytes, or server-sent events (OpenAI's
`speech.audio.delta` / `speech.audio.done` and an `error` event; Chorus's queue and sentence
events only for clients that ask for them: strict OpenAI clients reject unknown types).

The bodies here own encoding and framing only; `ordering.paced` owns the work, and closing a
body (client gone) closes it, which cancels the request's queued sentence items.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from serve_app.errors import ChorusError
from serve_app.speech.audio import StreamEncoder
from serve_app.speech.ordering import Spoken

logger = logging.getLogger("ray.serve.chorus.streams")

HEARTBEAT = b": keep-alive\n\n"  # an SSE comment: clients ignore it, proxies see traffic
SAMPLES_PER_FRAME = 256  # a Piper frame (the vocoder's hop): the unit of `output_tokens`

Events = AsyncIterator[Spoken | None]  # None: time for a heartbeat


async def audio_body(
    first: Spoken,
    rest: Events,
    encoder: StreamEncoder,
    as_error: Callable[[Exception], ChorusError],
) -> AsyncIterator[bytes]:
    """The encoded audio, sentence by sentence.

    A failure after the first bytes cannot change the status any more: the body is cut off
    (no final chunk), so the client sees a broken transfer rather than a short file.
    """
    try:
        if data := await encoded(encoder, first.audio):
            yield data
        async for part in rest:
            if part is not None and (data := await encoded(encoder, part.audio)):
                yield data
        if data := await encoded(encoder, None):
            yield data
    except Exception as exc:
        logger.warning("Audio stream cut off after it started: %s", as_error(exc).message)
        raise
    finally:
        await rest.aclose()


async def sse_body(
    events: Events,
    encoder: StreamEncoder,
    position: Callable[[], dict[str, Any]] | None,
    as_error: Callable[[Exception], ChorusError],
) -> AsyncIterator[bytes]:
    """A delta per sentence, then `speech.audio.done` with usage; an `error` event if anything
    fails on the way. Silences get a comment (a heartbeat).

    With `position` (where the request stands; Chorus's events asked for): queue updates until
    the first audio, a timing event after each sentence's delta, and Chorus's fields in done.
    """
    phonemes = frames = sentences = 0
    queue_s, model_s = None, 0.0
    try:
        if position is not None:
            yield _queue_event(position())
        async for part in events:
            if part is None:
                queued = position is not None and not sentences
                yield _queue_event(position()) if position and queued else HEARTBEAT
                continue
            if data := await encoded(encoder, part.audio):
                yield _delta(data)
            if position is not None:
                yield event({"type": "speech.sentence", **part.timing()})
            sentences += 1
            queue_s = part.queue_s if queue_s is None else queue_s
            model_s += part.model_s
            phonemes += part.phonemes
            frames += part.audio.size // SAMPLES_PER_FRAME
        if data := await encoded(encoder, None):
            yield _delta(data)
        done: dict[str, Any] = {
            "type": "speech.audio.done",
            "usage": {
                "input_tokens": phonemes,
                "output_tokens": frames,
                "total_tokens": phonemes + frames,
            },
        }
        if position is not None:
            done |= {
                "sentences": sentences,
                "audio_seconds": round(encoder.samples / encoder.rate, 3),
                "queue_s": round(queue_s or 0.0, 3),
                "model_s": round(model_s, 3),
            }
        yield event(done)
    except Exception as exc:
        error = as_error(exc)
        logger.warning("SSE stream failed after it started: %s", error.message)
        payload: dict[str, Any] = {"type": "error", **error.envelope(), "status": error.status}
        if error.retry_after is not None:
            payload["retry_after_s"] = error.retry_after
        yield event(payload)
    finally:
        await events.aclose()


async def encoded(encoder: StreamEncoder, audio: np.ndarray | None) -> bytes:
    """`audio` through the encoder (None: its last bytes): off the event loop, unless it only
    copies samples out.

    NOTE: a hop to a worker thread costs the ingress more CPU than writing 16-bit samples
    (measured: load_tests.bench_serving); real encoders and resampling stay off the loop."""
    if encoder.light:
        return encoder.write(audio) if audio is not None else encoder.close()
    if audio is None:
        return await asyncio.to_thread(encoder.close)
    return await asyncio.to_thread(encoder.write, audio)


def event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _delta(data: bytes) -> bytes:
    return event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})


def _queue_event(position: dict[str, Any]) -> bytes:
    return event({"type": "speech.queue", **position})
