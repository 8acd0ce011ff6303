"""One speech request, top to bottom. Each stage is one call to the module that owns it:

    plan     speech.context    model, voice, format, rate, sentences -> RequestContext (400)
    admit    queue.door        lane (403), key limits (429), room and deadline (503), from the
                               meter's rate (the replicas' probes, then measured drain)
    speak    speech.ordering   sentences -> phoneme ids -> items queued in the backlog, which
                               sends them to the model replicas -> audio back in order, paced
                               by the deadline (504)
    answer   speech.streams    the whole file, chunked audio, or server-sent events
    account  here              metrics and the request's one log line, when it ends

The HTTP layer reads the body and turns the `Answer` (or a raised `ChorusError`) into a
response; nothing here knows about HTTP beyond status-free data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serve_app.clients import Client
from serve_app.config import AppConfig
from serve_app.errors import ChorusError
from serve_app.metrics import IngressMetrics
from serve_app.protocol import SentenceTiming, SpeechWithTimings
from serve_app.queue.door import Door
from serve_app.queue.meter import PROFILE_FRESH_S, rounded
from serve_app.queue.readiness import Readiness
from serve_app.queue.replicas import ModelReplicas, classify
from serve_app.speech import audio
from serve_app.speech.context import Catalogue, RequestContext, SpeechCall, plan, unspeakable
from serve_app.speech.ordering import Spoken, ordered_audio, paced, render, spoken
from serve_app.speech.streams import audio_body, sse_body

logger = logging.getLogger("ray.serve.chorus.speech")


@dataclass
class Answer:
    """What the HTTP layer sends: `body` is bytes, JSON data, or a stream of bytes."""

    body: bytes | dict[str, Any] | AsyncIterator[bytes]
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


class SpeechService:
    def __init__(
        self,
        config: AppConfig,
        catalogue: Catalogue,
        door: Door,
        replicas: ModelReplicas,
        readiness: Readiness,
        metrics: IngressMetrics,
    ) -> None:
        self.config = config
        self.catalogue = catalogue
        self.door = door
        self.replicas = replicas
        self.readiness = readiness
        self.metrics = metrics

    async def respond(self, call: SpeechCall, client: Client) -> Answer:
        """The answer to one speech request, or a raised `ChorusError`."""
        lane = self.door.lane(client, call.asked_lane)
        ctx = plan(call, client.name, lane, self.catalogue, self.config)
        chars, streamed = len(ctx.request.input), ctx.stream != "file"
        loading_s = await self.loading_s()
        ctx.work = self.door.admit(client, ctx.lane, chars, ctx.deadline, streamed, loading_s)
        events = self.speak(ctx)
        # NOTE: a stream whose body never starts (client gone first) never runs `speak`'s
        # finally; dropping the generator then releases the request's admission.
        weakref.finalize(events, ctx.work.close)
        return await self.answer(ctx, events)

    async def loading_s(self) -> float | None:
        """Seconds until a model replica should take work, while none can; None when one can.

        NOTE: when idle or quiet, the replicas may be new, still loading, or have new settings
        that no answer has shown yet. Serve's controller says whether one runs, and a running
        one is asked its speed, before anyone is admitted (one call each, shared by the
        requests of a burst). A replica still loading is not asked: the call would wait for
        it, and hold the burst. Nor is one that has just answered (`Meter.just_answered`)."""
        meter = self.door.meter
        if meter.just_answered():
            return None
        if self.door.backlog.requests and meter.profile_age_s() <= PROFILE_FRESH_S:
            return None
        if await self.readiness.running() != 0:  # running, or the controller cannot say
            await self.replicas.profiled()
        return self.readiness.loading_s(meter.load_s() or self.config.model_load_s)

    async def speak(self, ctx: RequestContext) -> AsyncIterator[Spoken | None]:
        """The request's sentences as they are ready (None: a heartbeat is due). Closing this
        cancels whatever the request still has queued and ends its admission; its metrics and
        its one log line are recorded when it ends."""
        assert ctx.work is not None
        tick = self.config.heartbeat_s if ctx.stream == "sse" else None
        parts = spoken(
            ordered_audio(
                ctx.frontend.sentences(ctx.sentences),
                ctx.voicing,
                ctx.work,
                self.config.lookahead_items,
                self.config.lookahead_start_items,
            ),
            ctx.voice.sample_rate,
            self.config.sentence_pause_s,
        )
        tally = _Tally()
        try:
            async with contextlib.aclosing(paced(parts, tick, ctx.deadline)) as events:
                async for part in events:
                    if part is not None:
                        ctx.work.heard(part.audio.size / ctx.voice.sample_rate)
                        if tally.add(part):
                            self.metrics.first_audio.observe(
                                ctx.deadline.elapsed_s(), tags=ctx.tags()
                            )
                    yield part
            tally.outcome = "ok"
        except Exception as exc:
            tally.outcome = f"failed ({type(exc).__name__})"  # the caller tells the client
            raise
        finally:
            ctx.work.close(completed=tally.outcome == "ok")
            self._account(ctx, tally)

    async def answer(self, ctx: RequestContext, events: AsyncIterator[Spoken | None]) -> Answer:
        """The whole file, or a stream of it (chunked audio or server-sent events)."""
        headers = ctx.headers()
        if ctx.stream == "file":
            return await self._whole(ctx, events, headers)
        encoder = audio.StreamEncoder(ctx.fmt, ctx.voice.sample_rate, ctx.rate)
        if ctx.stream == "sse":
            position = (lambda: self.position(ctx)) if ctx.request.chorus_sse else None
            body = sse_body(events, encoder, position, self.stream_error)
            headers |= {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return Answer(body, "text/event-stream", headers)
        # NOTE: the status line waits for the first sentence, so an early failure (overload,
        # deadline, bad sentence) is still a proper error response.
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise unspeakable() from None
        except Exception as exc:
            raise self.error(exc) from None
        assert first is not None  # ticks come only with an SSE heartbeat
        # NOTE: model time is known only at the end: chunked streams carry the queue time.
        headers["X-Chorus-Queue-Seconds"] = f"{first.queue_s:.3f}"
        body = audio_body(first, events, encoder, self.stream_error)
        return Answer(body, ctx.fmt.media_type, headers)

    async def _whole(
        self, ctx: RequestContext, events: AsyncIterator[Spoken | None], headers: dict[str, str]
    ) -> Answer:
        try:
            parts = [part async for part in events if part is not None]
        except Exception as exc:
            raise self.error(exc) from None
        if not parts:
            raise unspeakable()
        # NOTE: joining, resampling and encoding minutes of audio must not stall the event loop.
        body, seconds = await asyncio.to_thread(
            render, [p.audio for p in parts], ctx.voice.sample_rate, ctx.fmt, ctx.rate
        )
        if ctx.request.timings:
            answer = SpeechWithTimings(
                audio=base64.b64encode(body).decode(),
                media_type=ctx.fmt.media_type,
                sample_rate=ctx.rate,
                audio_seconds=round(seconds, 3),
                sentences=[SentenceTiming(**p.timing()) for p in parts],
            )
            return Answer(answer.model_dump(), "application/json", headers)
        headers |= {
            "X-Chorus-Sentences": str(len(parts)),
            "X-Chorus-Audio-Seconds": f"{seconds:.3f}",
            "X-Chorus-Queue-Seconds": f"{parts[0].queue_s:.3f}",
            "X-Chorus-Model-Seconds": f"{sum(p.model_s for p in parts):.3f}",
        }
        return Answer(body, ctx.fmt.media_type, headers)

    def position(self, ctx: RequestContext) -> dict[str, Any]:
        """Where the request stands before its first audio (an SSE `speech.queue` event)."""
        assert ctx.work is not None
        ahead = ctx.work.ahead()
        return {
            "position": ahead.items,
            "phonemes_ahead": ahead.phonemes,
            "estimated_start_s": rounded(self.door.estimates.work_s(ahead.phonemes)),
        }

    def error(self, exc: Exception) -> ChorusError:
        return classify(exc, self.door.estimates.room_s())

    def stream_error(self, exc: Exception) -> ChorusError:
        """A failure after a stream's 200 went out: counted, then told in-band."""
        error = self.error(exc)
        self.metrics.stream_failures.inc(tags={"reason": error.reason})
        return error

    def _account(self, ctx: RequestContext, tally: _Tally) -> None:
        total_s = ctx.deadline.elapsed_s()
        chars = len(ctx.request.input)
        work = ctx.work
        stall_s = work.playback.stall_s if work is not None and ctx.stream != "file" else None
        if tally.outcome == "ok":
            voice = {"voice": ctx.voice.id}
            self.metrics.latency.observe(total_s, tags=ctx.tags())
            if stall_s is not None:
                self.metrics.stream_stall.observe(stall_s, tags=ctx.tags())
            self.metrics.audio_seconds.inc(tally.audio_s, tags=voice)
            self.metrics.characters.inc(chars, tags=voice)
        logger.info(
            "speech %s",
            tally.outcome,
            extra={
                "client": ctx.client,
                "lane": ctx.lane,
                "voice": ctx.voice.id,
                "characters": chars,
                "stream": ctx.stream,
                "audio_seconds": round(tally.audio_s, 3),
                "queue_ms": None if tally.queue_s is None else round(tally.queue_s * 1000),
                "model_ms": round(tally.model_s * 1000),
                "stall_ms": None if stall_s is None else round(stall_s * 1000),
                "total_ms": round(total_s * 1000),
                "outcome": tally.outcome,
            },
        )


@dataclass
class _Tally:
    """What one request got so far."""

    outcome: str = "cancelled"
    audio_s: float = 0.0
    queue_s: float | None = None
    model_s: float = 0.0

    def add(self, part: Spoken) -> bool:
        """Count `part`; True if it is the first."""
        first = self.queue_s is None
        if first:
            self.queue_s = part.queue_s
        self.audio_s, self.model_s = part.end_s, self.model_s + part.model_s
        return first
