"""HTTP routes and the `@serve.ingress` deployment. No model code lives here."""

# NOTE: no `from __future__ import annotations` here: FastAPI must see real types through
# Ray Serve's class-based view wrapper.

import asyncio
import base64
import contextlib
import logging
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig, configure_logging
from serve_app.errors import (
    BadRequest,
    ChorusError,
    ErrorResponse,
    NotFound,
    Overloaded,
    as_chorus_error,
    register_error_handlers,
    retry_after,
)
from serve_app.http import playground
from serve_app.http.protocol import (
    LaneInfo,
    ModelCard,
    ModelList,
    QueueInfo,
    SentenceTiming,
    SpeechRequest,
    SpeechWithTimings,
    VoiceCard,
    VoiceList,
)
from serve_app.http.requests import parse_speech_request, read_json_body, urgency
from serve_app.metrics import CountRequests, IngressMetrics, reason_for
from serve_app.model.replicas import ModelReplicas
from serve_app.queue.backlog import Backlog, RequestWork, rounded
from serve_app.queue.door import Admission
from serve_app.queue.keys import Client, KeyStore
from serve_app.speech import audio
from serve_app.speech.ordering import Spoken, Voicing, ordered_audio, paced, render, spoken
from serve_app.speech.streams import audio_body, sse_body
from serve_app.speech.text import TextError, TextFrontend
from serve_app.speech.voices import VoiceInfo, load_voices

logger = logging.getLogger("ray.serve.chorus.ingress")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Invalid request (bad field, unknown voice or format, unspeakable text)",
        401: "Missing or invalid API key (when the server has keys)",
        403: "The API key may not use the requested priority lane",
        413: "Request body too large",
        415: "Body is not application/json",
        429: "The API key's rate or concurrency limit; retry after Retry-After seconds",
        503: "Overloaded, deadline cannot be met, or model unavailable; retry after "
        "Retry-After seconds",
        504: "Took longer than the request's deadline",
    }.items()
}

app = FastAPI(
    title="Chorus",
    version="0.1.0",
    summary="OpenAI-compatible text-to-speech for many users at once, on Ray Serve.",
)
register_error_handlers(app)


app.add_middleware(CountRequests)


async def authenticated(request: Request) -> Client:
    """The caller, by API key (401 without a valid one, when the server has keys)."""
    return request.app.state.keys.authenticate(request.headers)


AUTH = [Depends(authenticated)]


def _unspeakable() -> BadRequest:
    return BadRequest("input has no speakable text", param="input", code="unspeakable_input")


@serve.deployment(
    max_ongoing_requests=1024,
    ray_actor_options={"num_cpus": 0.25},
    health_check_period_s=10,
)
@serve.ingress(app)
class Ingress:
    """Validates, splits text into sentence items, gathers ordered audio, encodes it."""

    def __init__(self, synthesizer: DeploymentHandle, config: dict[str, Any]) -> None:
        configure_logging()
        self.synthesizer = synthesizer
        self.config = AppConfig.model_validate(config)
        self.voices: dict[str, VoiceInfo] = load_voices(self.config.voices)
        self.aliases: dict[str, str] = dict(self.config.voice_aliases or {})
        self.frontends = {
            vid: TextFrontend(info, self.config.max_item_chars) for vid, info in self.voices.items()
        }
        self.metrics = IngressMetrics()
        app.state.metrics = self.metrics
        app.state.keys = KeyStore(self.config)
        share = self.config.batch_lane_share
        self.backlog = Backlog(
            capacity=self.config.items_in_flight,
            lanes={"interactive": 1 - share, "batch": share},
            on_change=self._backlog_changed,
        )
        self.admission = Admission(self.config, self.backlog)
        self.metrics.model_replicas.set(1)
        self.replicas = ModelReplicas(
            synthesizer.synthesize.remote,
            retries=self.config.replica_retries,
            on_retry=self.metrics.items_retried.inc,
            on_count=self._replicas_changed,
        )

    def _replicas_changed(self, replicas: int) -> None:
        self.metrics.model_replicas.set(replicas)
        self.backlog.set_capacity(self.config.items_in_flight * replicas)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """What Chorus's autoscaling policy reads (`serve_app.autoscaling`): sentence items
        waiting here or running at the model replicas, and requests in progress."""
        return {"items": self.backlog.state().items, "requests": self.backlog.requests}

    def _backlog_changed(self, items: int, cancelled: bool) -> None:
        self.metrics.items_in_flight.set(items)
        if cancelled:
            self.metrics.items_cancelled.inc()

    def _error(self, exc: Exception) -> ChorusError:
        return as_chorus_error(exc, self.admission.retry_after_s())

    def _stream_error(self, exc: Exception) -> ChorusError:
        """A failure after a stream's 200 went out: counted, then told in-band."""
        error = self._error(exc)
        self.metrics.stream_failures.inc(tags={"reason": reason_for(error.status, error.code)})
        return error

    def _voice(self, name: str) -> VoiceInfo:
        voice_id = name if name in self.voices else self.aliases.get(name)
        if voice_id is None:
            known = sorted([*self.voices, *self.aliases])
            raise BadRequest(
                f"unknown voice {name[:64]!r}; available: {', '.join(known)}",
                param="voice",
                code="unknown_voice",
            )
        return self.voices[voice_id]

    @app.post(
        "/v1/audio/speech",
        response_class=Response,
        responses={
            200: {
                "content": {
                    **{f.media_type: {} for f in audio.FORMATS.values()},
                    "text/event-stream": {},
                    "application/json": {"schema": SpeechWithTimings.model_json_schema()},
                },
                "description": "The audio file; with stream_format, the audio streamed or as "
                "server-sent events; with timings, JSON.",
            },
            **_ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": SpeechRequest.model_json_schema()}},
            }
        },
    )
    async def create_speech(
        self, request: Request, client: Annotated[Client, Depends(authenticated)]
    ) -> Response:
        """Generate audio from text (OpenAI-compatible); whole, streamed, or as events."""
        arrived = time.monotonic()
        req = parse_speech_request(await read_json_body(request, self.config.max_body_bytes))
        voice, fmt, rate, sentences = self._plan(req)
        asked, deadline_s = urgency(req, request.headers, self.config)
        lane = self.admission.lane(client, asked)
        voicing = Voicing.create(voice, req.speed, req.seed)
        work = self.admission.admit(client, lane, len(req.input), deadline_s, self.replicas.send)
        tick = self.config.heartbeat_s if req.stream_format == "sse" else None
        events = self._speech(work, req, voice, sentences, voicing, tick, arrived, deadline_s)
        # NOTE: a stream whose body never starts (client gone first) never runs `_speech`'s
        # finally; dropping the generator then releases the request's admission.
        weakref.finalize(events, work.close)
        headers = {
            "X-Chorus-Voice": voice.id,
            "X-Chorus-Sample-Rate": str(rate),
            "X-Chorus-Lane": lane,
        }
        if req.stream_format is None:
            return await self._whole(events, req, voice.sample_rate, fmt, rate, headers)
        encoder = audio.StreamEncoder(fmt, voice.sample_rate, rate)
        if req.stream_format == "sse":
            return StreamingResponse(
                sse_body(events, encoder, work.ahead, self._stream_error),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        # NOTE: the status line waits for the first sentence, so an early failure (overload,
        # timeout, bad sentence) is still a proper error response.
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise _unspeakable() from None
        except Exception as exc:
            raise self._error(exc) from None
        assert first is not None  # ticks come only with an SSE heartbeat
        # NOTE: model time is known only at the end: chunked streams carry the queue time.
        headers["X-Chorus-Queue-Seconds"] = f"{first.queue_s:.3f}"
        return StreamingResponse(
            audio_body(first, events, encoder, self._stream_error),
            media_type=fmt.media_type,
            headers=headers,
        )

    def _plan(self, req: SpeechRequest) -> tuple[VoiceInfo, audio.AudioFormat, int, list[str]]:
        """Everything about a request that can be refused before any work starts."""
        if req.model not in self.config.models:
            raise BadRequest(
                f"unknown model {req.model[:64]!r}; available: {', '.join(self.config.models)}",
                param="model",
                code="model_not_found",
            )
        if len(req.input) > self.config.max_input_chars:
            raise BadRequest(
                f"input is {len(req.input)} characters; the limit is {self.config.max_input_chars}",
                param="input",
                code="string_above_max_length",
            )
        voice = self._voice(req.voice)
        fmt = audio.FORMATS[req.response_format]
        try:
            rate = audio.output_rate(fmt, voice.sample_rate, req.sample_rate)
        except ValueError as exc:
            raise BadRequest(str(exc), param="sample_rate") from None
        try:
            sentences = self.frontends[voice.id].prepare(req.input)
        except TextError as exc:
            raise BadRequest(str(exc), param="input", code="unspeakable_input") from None
        return voice, fmt, rate, sentences

    async def _speech(
        self,
        work: RequestWork,
        req: SpeechRequest,
        voice: VoiceInfo,
        sentences: list[str],
        voicing: Voicing,
        tick_s: float | None,
        arrived: float,
        deadline_s: float,
    ) -> AsyncIterator[Spoken | None]:
        """The request's sentences as they are ready (None: a heartbeat is due). Closing this
        cancels whatever the request still has queued and ends its admission. Records the
        request's metrics and its one log line."""
        tags = {"voice": voice.id, "stream": req.stream_format or "none", "lane": work.lane}
        outcome, audio_s, queue_s, model_s = "cancelled", 0.0, None, 0.0
        try:
            audio_in_order = ordered_audio(
                self.frontends[voice.id].sentences(sentences),
                voicing,
                work,
                self.config.lookahead_items,
                self.config.lookahead_start_items,
            )
            parts = spoken(audio_in_order, voice.sample_rate, self.config.sentence_pause_s)
            left_s = deadline_s - (time.monotonic() - arrived)
            events = paced(parts, tick_s, left_s, deadline_s)
            async with contextlib.aclosing(events):
                async for part in events:
                    if part is not None:
                        if queue_s is None:
                            queue_s = part.queue_s
                            self.metrics.first_audio.observe(time.monotonic() - arrived, tags=tags)
                        audio_s, model_s = part.end_s, model_s + part.model_s
                    yield part
            outcome = "ok"
            self.metrics.latency.observe(time.monotonic() - arrived, tags=tags)
            self.metrics.audio_seconds.inc(audio_s, tags={"voice": voice.id})
            self.metrics.characters.inc(len(req.input), tags={"voice": voice.id})
        except Exception as exc:
            outcome = f"failed ({type(exc).__name__})"  # the caller maps and reports it
            raise
        finally:
            work.close(completed=outcome == "ok")
            logger.info(
                "speech %s",
                outcome,
                extra={
                    "client": work.client,
                    "lane": work.lane,
                    "voice": voice.id,
                    "characters": len(req.input),
                    "stream": tags["stream"],
                    "audio_seconds": round(audio_s, 3),
                    "queue_ms": None if queue_s is None else round(queue_s * 1000),
                    "model_ms": round(model_s * 1000),
                    "total_ms": round((time.monotonic() - arrived) * 1000),
                    "outcome": outcome,
                },
            )

    async def _whole(
        self,
        events: AsyncIterator[Spoken | None],
        req: SpeechRequest,
        voice_rate: int,
        fmt: audio.AudioFormat,
        rate: int,
        headers: dict[str, str],
    ) -> Response:
        try:
            parts = [part async for part in events if part is not None]
        except Exception as exc:
            raise self._error(exc) from None
        if not parts:
            raise _unspeakable()
        # NOTE: joining, resampling and encoding minutes of audio must not stall the event loop.
        body, seconds = await asyncio.to_thread(
            render, [p.audio for p in parts], voice_rate, fmt, rate
        )
        if req.timings:
            answer = SpeechWithTimings(
                audio=base64.b64encode(body).decode(),
                media_type=fmt.media_type,
                sample_rate=rate,
                audio_seconds=round(seconds, 3),
                sentences=[SentenceTiming(**p.timing()) for p in parts],
            )
            return JSONResponse(answer.model_dump(), headers=headers)
        headers |= {
            "X-Chorus-Sentences": str(len(parts)),
            "X-Chorus-Audio-Seconds": f"{seconds:.3f}",
            "X-Chorus-Queue-Seconds": f"{parts[0].queue_s:.3f}",
            "X-Chorus-Model-Seconds": f"{sum(p.model_s for p in parts):.3f}",
        }
        return Response(body, media_type=fmt.media_type, headers=headers)

    @app.get("/v1/queue", response_model=QueueInfo, dependencies=AUTH)
    async def queue(self) -> QueueInfo:
        """This ingress replica's outstanding work, and the wait a new request would see,
        overall and per priority lane."""
        backlog = self.backlog
        state = backlog.state()
        rate = state.phonemes_per_s
        lanes = {lane: LaneInfo(**backlog.lane_view(lane)) for lane in backlog.lanes}
        return QueueInfo(
            requests=backlog.requests,
            items=state.items,
            phonemes=state.phonemes,
            phonemes_per_s=None if rate is None else round(rate, 1),
            estimated_wait_s=rounded(state.wait_s()),
            items_in_flight=backlog.in_flight,
            model_replicas=self.replicas.count(),
            lanes=lanes,
        )

    async def live_tasks(self) -> dict[str, int]:
        """Chorus's own asyncio tasks alive in this replica, by name (a handle-only diagnostic:
        once every request has ended, it is empty)."""
        names = [t.get_name() for t in asyncio.all_tasks()]
        return dict(Counter(n for n in names if n.startswith("chorus-")))

    @app.get("/v1/models", response_model=ModelList, dependencies=AUTH)
    async def list_models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=m) for m in self.config.models])

    @app.get(
        "/v1/models/{model_id}",
        response_model=ModelCard,
        responses={404: _ERRORS[400]},
        dependencies=AUTH,
    )
    async def get_model(self, model_id: str) -> ModelCard:
        if model_id not in self.config.models:
            raise NotFound(
                f"unknown model {model_id[:64]!r}", param="model", code="model_not_found"
            )
        return ModelCard(id=model_id)

    @app.get("/v1/audio/voices", response_model=VoiceList, dependencies=AUTH)
    async def list_voices(self) -> VoiceList:
        return VoiceList(
            data=[
                VoiceCard(
                    id=v.id,
                    name=v.id,
                    language=v.language,
                    sample_rate=v.sample_rate,
                    aliases=sorted(a for a, target in self.aliases.items() if target == v.id),
                )
                for v in self.voices.values()
            ]
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground_page(self, request: Request) -> HTMLResponse:
        """The web playground (no key needed to load it; its requests send the key)."""
        keys = request.app.state.keys
        body = playground.page(request.scope.get("root_path", ""), not keys.open)
        return HTMLResponse(body, headers=playground.HEADERS)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """The ingress process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: _ERRORS[503]})
    async def readyz(self) -> dict[str, Any]:
        """A model replica is loaded and answering."""
        try:
            async with asyncio.timeout(self.config.readiness_timeout_s):
                info = await self.synthesizer.ready.remote()
        except (TimeoutError, BackPressureError, RayActorError):
            raise Overloaded(
                "no model replica answered in time", code="not_ready", headers=retry_after(5)
            ) from None
        return {"status": "ready", **info}
