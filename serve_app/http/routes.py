"""The HTTP surface: FastAPI routes of the ingress deployment, each a few lines that read the
request, call the object that serves it, and send what it returns. No model code, no queue
rules (`speech.pipeline`, `queue.door`), no error shapes (`http.responses`).

The deployment's options are set by `serve_app.app` from config, not here."""

# NOTE: no `from __future__ import annotations` here: FastAPI must see real types through
# Ray Serve's class-based view wrapper.

import asyncio
import logging
from collections import Counter
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.config import AppConfig, configure_logging, unset_node_settings
from serve_app.errors import NotFound
from serve_app.http import openapi, playground
from serve_app.http.front_door import FrontDoor
from serve_app.http.openapi import SPEECH_BODY, SPEECH_RESPONSES, responses
from serve_app.http.requests import client_address, read_speech_call
from serve_app.http.responses import CountRequests, register_error_handlers
from serve_app.metrics import IngressMetrics
from serve_app.model.readiness import Readiness
from serve_app.model.replicas import ModelReplicas
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
from serve_app.queue.backlog import Backlog
from serve_app.queue.door import Door
from serve_app.queue.keys import Client, KeyStore
from serve_app.queue.meter import Meter, rounded
from serve_app.queue.shared import RayBoard, SharedLimits, board_name
from serve_app.speech import audio
from serve_app.speech.context import Catalogue
from serve_app.speech.pipeline import Answer, SpeechService

logger = logging.getLogger("ray.serve.chorus.ingress")

# NOTE: /openapi.json and /docs are routes of the ingress below: the document depends on the
# config (models, voices, limits), which FastAPI's own cached document cannot know.
app = FastAPI(
    title="Chorus",
    version="0.1.0",
    summary="OpenAI-compatible text-to-speech for many users at once, on Ray Serve.",
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
register_error_handlers(app)
app.add_middleware(CountRequests)


async def authenticated(request: Request) -> Client:
    """The caller, by API key (401 without a valid one, when the server has keys), or by
    client address on an open server."""
    keys: KeyStore = request.app.state.keys
    door: FrontDoor = request.app.state.front_door
    address = client_address(request, keys.trusted_proxies, door.forwards)
    return keys.authenticate(request.headers, address)


AUTH = [Depends(authenticated)]


def send(answer: Answer) -> Response:
    """The HTTP response for what the speech service answered."""
    if isinstance(answer.body, bytes):
        return Response(answer.body, media_type=answer.media_type, headers=answer.headers)
    if isinstance(answer.body, dict):
        return JSONResponse(answer.body, headers=answer.headers)
    return StreamingResponse(answer.body, media_type=answer.media_type, headers=answer.headers)


@serve.ingress(app)
class Ingress:
    """Builds the ingress's parts once; its routes call them."""

    def __init__(self, synthesizer: DeploymentHandle, config: dict[str, Any]) -> None:
        configure_logging()
        for warning in unset_node_settings():
            logger.warning(warning)
        if not audio.load_ffmpeg():
            logger.error("PyAV is not installed: mp3, opus and aac answers will fail")
        self.synthesizer = synthesizer
        self.config = config = AppConfig.model_validate(config)
        self.catalogue = Catalogue(config)
        self.metrics = IngressMetrics()
        self.meter = Meter(config.items_in_flight, self.catalogue.phonemes_per_char())
        self.replicas = ModelReplicas(
            synthesizer,
            retries=config.replica_retries,
            per_call=config.items_per_call,
            on_retry=self.metrics.items_retried.inc,
            on_count=self._replicas_changed,
            on_profile=self.meter.learn_profile,
            running=lambda: self.readiness.running_now(),
        )
        self.backlog = Backlog(
            self.replicas.send,
            self.meter,
            config.lane_shares,
            capacity=config.items_in_flight,
            on_change=self._backlog_changed,
        )
        self.keys = KeyStore(config)
        self.front_door = FrontDoor()
        if self.front_door.active:
            # NOTE: Serve runs __init__ on the replica's event loop; the task lives as long as it.
            self._nodes_task = asyncio.get_running_loop().create_task(
                self.front_door.run(), name="front-door"
            )
        self.shared = self._shared_limits() if config.shared_limits else None
        self.door = Door(config, self.backlog, self.shared)
        synthesizer.options()  # NOTE: starts its router now, and with it Serve's news of replicas
        self.readiness = Readiness(
            synthesizer.app_name,
            synthesizer.deployment_name,
            config.readiness_timeout_s,
            routed=synthesizer.running_replicas_populated,
        )
        self.readiness.watch()  # NOTE: on the replica's event loop, as the tasks above
        self.speech = SpeechService(
            config, self.catalogue, self.door, self.replicas, self.readiness, self.metrics
        )
        self.metrics.model_replicas.set(1)
        app.state.metrics = self.metrics
        app.state.keys = self.keys
        app.state.front_door = self.front_door
        self.openapi = openapi.document(app, config, self.catalogue.names())

    def _shared_limits(self) -> SharedLimits:
        context = serve.get_replica_context()
        every_s = self.config.shared_limits_every_s
        shared = SharedLimits(
            self.keys,
            lambda: dict(self.backlog.per_client),
            RayBoard(board_name(context.app_name), every_s),
            context.replica_id.unique_id,
            every_s,
            self.config.shared_limits_fallback,
            service=self.backlog.take_service,
            on_boosts=self.backlog.set_boosts,
        )
        # NOTE: Serve runs __init__ on the replica's event loop; the task lives as long as it.
        self._sync_task = asyncio.get_running_loop().create_task(shared.run(), name="limits")
        return shared

    def _replicas_changed(self, replicas: int) -> None:
        self.metrics.model_replicas.set(replicas)
        self.meter.set_replicas(replicas)
        self.backlog.set_capacity(self.config.items_in_flight * replicas)

    def _backlog_changed(self, items: int, cancelled: bool) -> None:
        self.metrics.items_in_flight.set(items)
        if cancelled:
            self.metrics.items_cancelled.inc()

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """What Chorus's autoscaling policy reads (`serve_app.autoscaling`): sentence items
        waiting here or running at the model replicas, and requests in progress."""
        return {"items": self.backlog.state().items, "requests": self.backlog.requests}

    @app.post(
        "/v1/audio/speech",
        response_class=Response,
        responses=SPEECH_RESPONSES,
        openapi_extra=SPEECH_BODY,
    )
    async def create_speech(
        self, request: Request, client: Annotated[Client, Depends(authenticated)]
    ) -> Response:
        """Generate audio from text (OpenAI-compatible); whole, streamed, or as events."""
        call = await read_speech_call(request, self.config)
        return send(await self.speech.respond(call, client))

    @app.get("/v1/queue", response_model=QueueInfo, responses=responses(), dependencies=AUTH)
    async def queue(self) -> QueueInfo:
        """This ingress replica's outstanding work, and the wait a new request would see,
        overall and per priority lane."""
        backlog, meter = self.backlog, self.meter
        state = backlog.state()
        rate = meter.rate()
        return QueueInfo(
            requests=backlog.requests,
            items=state.items,
            phonemes=state.phonemes,
            phonemes_per_s=None if rate is None else round(rate, 1),
            estimated_wait_s=rounded(meter.seconds(state.phonemes)),
            items_in_flight=backlog.in_flight,
            model_replicas=self.replicas.count(),
            lanes={lane: self._lane(lane) for lane in backlog.lanes},
        )

    def _lane(self, lane: str) -> LaneInfo:
        """A lane as a new request in it would see the queue."""
        backlog, meter = self.backlog, self.meter
        return LaneInfo(
            requests=backlog.lane_requests(lane),
            items_waiting=backlog.waiting(lane),
            estimated_wait_s=rounded(meter.seconds(backlog.state(lane).phonemes)),
            backlog_s=rounded(meter.seconds(backlog.remaining(backlog.lanes_through(lane)))),
        )

    async def live_tasks(self) -> dict[str, int]:
        """Chorus's own asyncio tasks alive in this replica, by name (a handle-only diagnostic:
        once every request has ended, it is empty)."""
        names = [t.get_name() for t in asyncio.all_tasks()]
        return dict(Counter(n for n in names if n.startswith("chorus-")))

    @app.get("/v1/models", response_model=ModelList, responses=responses(), dependencies=AUTH)
    async def list_models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=m) for m in self.config.models])

    @app.get(
        "/v1/models/{model_id}",
        response_model=ModelCard,
        responses=responses(404),
        dependencies=AUTH,
    )
    async def get_model(self, model_id: str) -> ModelCard:
        if model_id not in self.config.models:
            raise NotFound(
                f"unknown model {model_id[:64]!r}", param="model", code="model_not_found"
            )
        return ModelCard(id=model_id)

    @app.get(
        "/v1/audio/models", response_model=AudioModelList, responses=responses(), dependencies=AUTH
    )
    async def list_audio_models(self) -> AudioModelList:
        """The speech models (what Open WebUI asks for)."""
        cards = [ModelCard(id=m) for m in self.config.models]
        return AudioModelList(data=cards, models=cards)

    @app.get("/v1/audio/voices", response_model=VoiceList, responses=responses(), dependencies=AUTH)
    async def list_voices(self) -> VoiceList:
        """Every voice a request can name: each speaker of a multi-speaker voice is one."""
        aliases: dict[str, list[str]] = {}
        for alias, speaker in self.catalogue.aliases.items():
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
            for s in self.catalogue.speakers()
        ]
        return VoiceList(data=cards, voices=cards)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground_page(self, request: Request) -> HTMLResponse:
        """The web playground (no key needed to load it; its requests send the key)."""
        keys = request.app.state.keys
        body = playground.page(request.scope.get("root_path", ""), not keys.open)
        return HTMLResponse(body, headers=playground.HEADERS)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document(self, request: Request) -> JSONResponse:
        root = request.scope.get("root_path", "")
        servers = [{"url": root}] if root else []
        return JSONResponse({**self.openapi, **({"servers": servers} if servers else {})})

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        """Interactive docs (Swagger UI) of /openapi.json."""
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="Chorus API")

    @app.get("/healthz", response_model=Healthz)
    async def healthz(self) -> Healthz:
        """The ingress process is up."""
        return Healthz()

    @app.get("/readyz", response_model=Readyz, responses={503: responses()[503]})
    async def readyz(self) -> Readyz:
        """A model replica is loaded and healthy (busy or not): Serve's controller has it
        running. 503 `not_ready` while none is (dead, wedged, or still loading)."""
        return Readyz(**await self.readiness.check())
