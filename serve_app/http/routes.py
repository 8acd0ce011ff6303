"""The HTTP surface: the ingress's FastAPI app, built by `make_app` from the ingress's service
(`http.ingress.IngressService`), its routes each a few lines that read the request, call the
part that serves it, and send what it returns. No model code, no queue rules
(`speech.pipeline`, `queue.door`), no error shapes (`http.responses`)."""

# NOTE: no `from __future__ import annotations` here: FastAPI reads the routes' parameter
# types (the closures' `Annotated[Client, Depends(...)]` included) at registration.

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from serve_app.clients import Client
from serve_app.errors import NotFound
from serve_app.http import openapi, playground
from serve_app.http.openapi import SPEECH_BODY, SPEECH_RESPONSES, responses
from serve_app.http.requests import client_address, read_speech_call
from serve_app.http.responses import CountRequests, register_error_handlers
from serve_app.protocol import (
    AudioModelList,
    Healthz,
    LaneInfo,
    ModelCard,
    ModelList,
    QueueInfo,
    Readyz,
    VoiceCard,
    VoiceList,
)
from serve_app.queue.meter import rounded
from serve_app.speech.pipeline import Answer

if TYPE_CHECKING:
    from serve_app.http.ingress import IngressService


def send(answer: Answer) -> Response:
    """The HTTP response for what the speech service answered."""
    if isinstance(answer.body, bytes):
        return Response(answer.body, media_type=answer.media_type, headers=answer.headers)
    if isinstance(answer.body, dict):
        return JSONResponse(answer.body, headers=answer.headers)
    return StreamingResponse(answer.body, media_type=answer.media_type, headers=answer.headers)


def make_app(service: "IngressService") -> FastAPI:
    """The ingress's app: every route, the error envelope, the request counter, and the
    OpenAPI document of what this server accepts.

    NOTE: /openapi.json and /docs are routes here: the document depends on the config
    (models, voices, limits), which FastAPI's own cached document cannot know."""
    config, catalogue, backlog = service.config, service.catalogue, service.backlog
    estimates = service.door.estimates
    app = FastAPI(
        title="Chorus",
        version="0.1.0",
        summary="OpenAI-compatible text-to-speech for many users at once, on Ray Serve.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    register_error_handlers(app)
    app.add_middleware(CountRequests, metrics=service.metrics)

    async def authenticated(request: Request) -> Client:
        """The caller, by API key (401 without a valid one, when the server has keys), or by
        client address on an open server."""
        keys = service.keys
        address = client_address(request, keys.trusted_proxies, service.front_door.forwards)
        return keys.authenticate(request.headers, address)

    auth = [Depends(authenticated)]

    @app.post(
        "/v1/audio/speech",
        response_class=Response,
        responses=SPEECH_RESPONSES,
        openapi_extra=SPEECH_BODY,
    )
    async def create_speech(
        request: Request, client: Annotated[Client, Depends(authenticated)]
    ) -> Response:
        """Generate audio from text (OpenAI-compatible); whole, streamed, or as events."""
        call = await read_speech_call(request, config)
        return send(await service.speech.respond(call, client))

    @app.get("/v1/queue", response_model=QueueInfo, responses=responses(), dependencies=auth)
    async def queue() -> QueueInfo:
        """This ingress replica's outstanding work, and the wait a new request would see,
        overall and per priority lane."""
        state = backlog.state()
        rate = service.meter.rate()
        return QueueInfo(
            requests=backlog.requests,
            items=state.items,
            phonemes=state.phonemes,
            phonemes_per_s=None if rate is None else round(rate, 1),
            estimated_wait_s=rounded(estimates.wait_s()),
            items_in_flight=backlog.in_flight,
            model_replicas=service.replicas.count(),
            lanes={lane: lane_info(lane) for lane in backlog.lanes},
        )

    def lane_info(lane: str) -> LaneInfo:
        """A lane as a new request in it would see the queue."""
        return LaneInfo(
            requests=backlog.lane_requests(lane),
            items_waiting=backlog.waiting(lane),
            estimated_wait_s=rounded(estimates.wait_s(lane)),
            backlog_s=rounded(estimates.backlog_s(lane)),
        )

    @app.get("/v1/models", response_model=ModelList, responses=responses(), dependencies=auth)
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=m) for m in config.models])

    @app.get(
        "/v1/models/{model_id}",
        response_model=ModelCard,
        responses=responses(404),
        dependencies=auth,
    )
    async def get_model(model_id: str) -> ModelCard:
        if model_id not in config.models:
            raise NotFound(
                f"unknown model {model_id[:64]!r}", param="model", code="model_not_found"
            )
        return ModelCard(id=model_id)

    @app.get(
        "/v1/audio/models", response_model=AudioModelList, responses=responses(), dependencies=auth
    )
    async def list_audio_models() -> AudioModelList:
        """The speech models (what Open WebUI asks for)."""
        cards = [ModelCard(id=m) for m in config.models]
        return AudioModelList(data=cards, models=cards)

    @app.get("/v1/audio/voices", response_model=VoiceList, responses=responses(), dependencies=auth)
    async def list_voices() -> VoiceList:
        """Every voice a request can name: each speaker of a multi-speaker voice is one."""
        aliases: dict[str, list[str]] = {}
        for alias, speaker in catalogue.aliases.items():
            aliases.setdefault(speaker.id, []).append(alias)
        cards = [
            VoiceCard(
                id=s.id,
                name=s.id,
                voice=s.voice.id,
                speaker=s.name,
                language=s.voice.language,
                sample_rate=s.voice.sample_rate,
                aliases=sorted(aliases.get(s.id, [])),
            )
            for s in catalogue.speakers()
        ]
        return VoiceList(data=cards, voices=cards)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground_page(request: Request) -> HTMLResponse:
        """The web playground (no key needed to load it; its requests send the key)."""
        body = playground.page(request.scope.get("root_path", ""), not service.keys.open)
        return HTMLResponse(body, headers=playground.HEADERS)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document(request: Request) -> JSONResponse:
        root = request.scope.get("root_path", "")
        servers = [{"url": root}] if root else []
        return JSONResponse({**document, **({"servers": servers} if servers else {})})

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        """Interactive docs (Swagger UI) of /openapi.json."""
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="Chorus API")

    @app.get("/healthz", response_model=Healthz)
    async def healthz() -> Healthz:
        """The ingress process is up."""
        return Healthz()

    @app.get("/readyz", response_model=Readyz, responses={503: responses()[503]})
    async def readyz() -> Readyz:
        """A model replica is loaded and healthy (busy or not): Serve's controller has it
        running. 503 `not_ready` while none is (dead, wedged, or still loading)."""
        return Readyz(**await service.readiness.check())

    document = openapi.document(app, config, catalogue.names())
    return app
