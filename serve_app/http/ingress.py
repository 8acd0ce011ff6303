"""The ingress deployment: builds the ingress's service graph once (`build_service`, every
collaborator passed explicitly), then its FastAPI app from it (`routes.make_app`), at replica
start. No FastAPI app exists at import time, and nothing is handed over through `app.state`.

The deployment's options are set by `serve_app.app` from config, not here."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.clients import KeyStore
from serve_app.config import AppConfig, calls_over_grpc, configure_logging, unset_node_settings
from serve_app.http import routes
from serve_app.http.front_door import FrontDoor
from serve_app.metrics import IngressMetrics
from serve_app.queue.backlog import Backlog
from serve_app.queue.door import Door
from serve_app.queue.meter import Meter
from serve_app.queue.readiness import Readiness
from serve_app.queue.replicas import ModelReplicas
from serve_app.queue.shared import RayBoard, SharedLimits, board_name
from serve_app.speech import audio
from serve_app.speech.context import Catalogue
from serve_app.speech.pipeline import SpeechService

logger = logging.getLogger("ray.serve.chorus.ingress")


@dataclass
class IngressService:
    """What an ingress replica serves with: the parts its routes call."""

    config: AppConfig
    catalogue: Catalogue
    metrics: IngressMetrics
    meter: Meter
    replicas: ModelReplicas
    backlog: Backlog
    keys: KeyStore
    front_door: FrontDoor
    door: Door
    readiness: Readiness
    speech: SpeechService
    shared: SharedLimits | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)  # live as long as the replica


def call_size(items_per_call: int, items_in_flight: int) -> int:
    """Most items in one handle call: `items_per_call`, and at most half a replica's window.

    NOTE: a call goes to one replica and its answers come back together, when its last item
    is done. A call as large as the window left that replica nothing queued behind it, and a
    larger one left other replicas idle: 2 one-thread CPU replicas with 2 items in flight
    served 12.2 audio-s/s with calls of up to 16 items, 17.0 with calls of 2 and 19.7-20.4
    with calls of 1 (load_tests.bench_vs_piper, results/comparisons/calls_per_replica/)."""
    return max(1, min(items_per_call, items_in_flight // 2))


def build_service(synthesizer: DeploymentHandle, config: AppConfig) -> IngressService:
    """The ingress's parts, wired together; their background tasks run on the current event
    loop (Serve runs a replica's constructor on its loop)."""
    loop = asyncio.get_running_loop()
    catalogue = Catalogue(config)
    metrics = IngressMetrics()
    meter = Meter(config.items_in_flight, catalogue.phonemes_per_char())
    readiness: Readiness | None = None  # made below: the replicas' count asks it

    def replicas_changed(count: int) -> None:
        metrics.model_replicas.set(count)
        meter.set_replicas(count)
        backlog.set_capacity(config.items_in_flight * count)

    def backlog_changed(items: int, cancelled: bool) -> None:
        metrics.items_in_flight.set(items)
        if cancelled:
            metrics.items_cancelled.inc()

    replicas = ModelReplicas(
        synthesizer,
        retries=config.replica_retries,
        per_call=call_size(config.items_per_call, config.items_in_flight),
        on_retry=metrics.items_retried.inc,
        on_count=replicas_changed,
        on_profile=meter.learn_profile,
        running=lambda: readiness.running_now() if readiness else None,
    )
    backlog = Backlog(
        replicas.send,
        meter,
        config.lane_shares,
        capacity=config.items_in_flight,
        on_change=backlog_changed,
    )
    keys = KeyStore(config)
    front_door = FrontDoor()
    tasks = []
    if front_door.active:
        tasks.append(loop.create_task(front_door.run(), name="front-door"))
    shared = None
    if config.shared_limits:
        shared = shared_limits(config, keys, backlog)
        tasks.append(loop.create_task(shared.run(), name="limits"))
    door = Door(config, backlog, shared)
    synthesizer.options()  # NOTE: starts its router now, and with it Serve's news of replicas
    readiness = Readiness(
        synthesizer.app_name,
        synthesizer.deployment_name,
        config.readiness_timeout_s,
        routed=synthesizer.running_replicas_populated,
    )
    readiness.watch()
    speech = SpeechService(config, catalogue, door, replicas, readiness, metrics)
    metrics.model_replicas.set(1)
    return IngressService(
        config,
        catalogue,
        metrics,
        meter,
        replicas,
        backlog,
        keys,
        front_door,
        door,
        readiness,
        speech,
        shared,
        tasks,
    )


def shared_limits(config: AppConfig, keys: KeyStore, backlog: Backlog) -> SharedLimits:
    """This replica's side of the limits and fair shares shared across ingress replicas."""
    context = serve.get_replica_context()
    every_s = config.shared_limits_every_s
    return SharedLimits(
        keys,
        lambda: dict(backlog.per_client),
        RayBoard(board_name(context.app_name), every_s),
        context.replica_id.unique_id,
        every_s,
        config.shared_limits_fallback,
        service=backlog.take_service,
        on_boosts=backlog.set_boosts,
    )


@serve.ingress()
class Ingress:
    """The ingress deployment: its service graph, then its app (`__serve_build_asgi_app__`,
    which Serve calls after the constructor)."""

    def __init__(self, synthesizer: DeploymentHandle, config: dict[str, Any]) -> None:
        configure_logging()
        for warning in unset_node_settings():
            logger.warning(warning)
        if not audio.load_ffmpeg():
            logger.error("PyAV is not installed: mp3, opus and aac answers will fail")
        # NOTE: the transport this replica's environment names (`calls_over_grpc`), whoever
        # made the handle.
        synthesizer = synthesizer.options(_by_reference=not calls_over_grpc())
        self.service = build_service(synthesizer, AppConfig.model_validate(config))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return routes.make_app(self.service)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """What Chorus's autoscaling policy reads (`serve_app.autoscaling`): sentence items
        waiting here or running at the model replicas, and requests in progress."""
        backlog = self.service.backlog
        return {"items": backlog.state().items, "requests": backlog.requests}

    async def live_tasks(self) -> dict[str, int]:
        """Chorus's own asyncio tasks alive in this replica, by name (a handle-only diagnostic:
        once every request has ended, it is empty)."""
        names = [t.get_name() for t in asyncio.all_tasks()]
        return dict(Counter(n for n in names if n.startswith("chorus-")))
