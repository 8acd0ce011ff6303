"""`serve_app.app:build_app` is the import_path of every serve config. It validates the args and
builds the two deployments from plain classes, with their default options set here (a serve
config's `deployments:` block overrides any of them)."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config import AppConfig, parse_app_args
from serve_app.http.ingress import Ingress
from serve_app.model.engines.base import Engine
from serve_app.model.synthesizer import Synthesizer

INGRESS_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 1024,
    "ray_actor_options": {"num_cpus": 0.25},
    "health_check_period_s": 10,
}
SYNTHESIZER_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 32,
    "max_queued_requests": 1024,
    "ray_actor_options": {"num_cpus": 1},
    "health_check_period_s": 10,
    "health_check_timeout_s": 60,
    "graceful_shutdown_timeout_s": 30,
}


def build_app(args: dict[str, Any]) -> Application:
    """Validate `args` (see `serve_app.config.AppConfig`) and bind the deployment graph."""
    return bind_app(parse_app_args(args))


def bind_app(
    config: AppConfig,
    engine_cls: type[Engine] | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    synthesizer_options: dict[str, Any] | None = None,
    ingress_options: dict[str, Any] | None = None,
) -> Application:
    """The deployment graph for `config`.

    `engine_cls` swaps the model engine and `synthesizer_options` / `ingress_options` override
    the deployments' options (tests and benchmarks only; serve configs set options in their
    `deployments:`).
    """
    voices = [v.model_dump(mode="json", exclude_none=True) for v in config.voices]
    synthesizer = serve.deployment(Synthesizer, **SYNTHESIZER_OPTIONS)
    ingress = serve.deployment(Ingress, **INGRESS_OPTIONS)
    model = synthesizer.options(**(synthesizer_options or {})).bind(
        voices,
        engine_cls=engine_cls,
        engine_kwargs=engine_kwargs,
        cpu_threads=config.cpu_threads,
        cpu_nice=config.cpu_engine_nice,
        cpu_side_by_side=config.cpu_side_by_side,
        cpu_engine=config.cpu_engine,
    )
    ingress = ingress.options(**(ingress_options or {}))
    return ingress.bind(model, config.model_dump(mode="json"))
