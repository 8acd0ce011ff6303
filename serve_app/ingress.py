"""HTTP routes and the `@serve.ingress` deployment. No model code lives here."""

# NOTE: no `from __future__ import annotations` here: FastAPI must see real types through
# Ray Serve's class-based view wrapper.

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from . import audio
from .config import AppConfig, configure_logging
from .errors import (
    BadRequest,
    DeadlineExceeded,
    ErrorResponse,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    SynthesisFailed,
    UnsupportedMediaType,
    register_error_handlers,
    validation_message,
)
from .schemas import ModelCard, ModelList, SpeechRequest, VoiceCard, VoiceList
from .speech import Voicing, ordered_audio, render
from .synthesizer import SynthesisError
from .text import TextError, TextFrontend
from .voices import VoiceInfo, load_voices

logger = logging.getLogger("ray.serve.chorus.ingress")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Invalid request (bad field, unknown voice or format, unspeakable text)",
        413: "Request body too large",
        415: "Body is not application/json",
        503: "Overloaded or model unavailable; retry after Retry-After seconds",
        504: "Took longer than the server's request timeout",
    }.items()
}

app = FastAPI(
    title="Chorus",
    version="0.1.0",
    summary="OpenAI-compatible text-to-speech for many users at once, on Ray Serve.",
)
register_error_handlers(app)


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The request's JSON body, read with a size cap; every failure is a clear 4xx."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(
            f"send the body as application/json (got {content_type or 'no content type'!r})"
        )
    declared = request.headers.get("content-length")
    too_large = PayloadTooLarge(f"request body is larger than the limit of {max_bytes} bytes")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="invalid_json",
        ) from None


def parse_speech_request(data: Any) -> SpeechRequest:
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        return SpeechRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message, param = validation_message(first)
        raise BadRequest(message, param=param, code=first.get("type")) from None


@serve.deployment(
    max_ongoing_requests=256,
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
                "content": {f.media_type: {} for f in audio.FORMATS.values()},
                "description": "The audio",
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
    async def create_speech(self, request: Request) -> Response:
        """Generate audio from text (OpenAI-compatible)."""
        req = parse_speech_request(await read_json_body(request, self.config.max_body_bytes))
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
        frontend = self.frontends[voice.id]
        try:
            sentences = frontend.prepare(req.input)
        except TextError as exc:
            raise BadRequest(str(exc), param="input", code="unspeakable_input") from None

        voicing = Voicing.create(voice, req.speed, req.seed)
        chunks = await self._synthesize(frontend, sentences, voicing)
        if not chunks:
            raise BadRequest("input has no speakable text", param="input", code="unspeakable_input")
        # NOTE: joining, resampling and encoding minutes of audio must not stall the event loop.
        body, seconds = await asyncio.to_thread(
            render, chunks, voice.sample_rate, fmt, rate, self.config.sentence_pause_s
        )
        return Response(
            body,
            media_type=fmt.media_type,
            headers={
                "X-Chorus-Voice": voice.id,
                "X-Chorus-Sample-Rate": str(rate),
                "X-Chorus-Sentences": str(len(chunks)),
                "X-Chorus-Audio-Seconds": f"{seconds:.3f}",
            },
        )

    async def _synthesize(
        self, frontend: TextFrontend, sentences: list[str], voicing: Voicing
    ) -> list[Any]:
        chunks = []
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                async for _, pcm in ordered_audio(
                    frontend.sentences(sentences),
                    voicing,
                    self.synthesizer.synthesize.remote,
                    self.config.lookahead_items,
                ):
                    chunks.append(pcm)
        except TimeoutError:
            raise DeadlineExceeded(
                f"speech took longer than {self.config.request_timeout_s:g} s"
            ) from None
        except BackPressureError:
            raise Overloaded(
                "the model replicas' queues are full; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        except SynthesisError as exc:
            raise SynthesisFailed(f"synthesis failed: {exc.args[0] if exc.args else exc}") from None
        except RayActorError:
            raise Overloaded(
                "a model replica became unavailable; retry shortly",
                code="replica_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        return chunks

    @app.get("/v1/models", response_model=ModelList)
    async def list_models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=m) for m in self.config.models])

    @app.get("/v1/models/{model_id}", response_model=ModelCard, responses={404: _ERRORS[400]})
    async def get_model(self, model_id: str) -> ModelCard:
        if model_id not in self.config.models:
            raise NotFound(
                f"unknown model {model_id[:64]!r}", param="model", code="model_not_found"
            )
        return ModelCard(id=model_id)

    @app.get("/v1/audio/voices", response_model=VoiceList)
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
                "no model replica answered in time", code="not_ready", headers={"Retry-After": "5"}
            ) from None
        return {"status": "ready", **info}
