"""`serve_app.app:build_app` is the import_path of every serve config."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.config import AppConfig, parse_app_args
from serve_app.http.routes import Ingress
from serve_app.model.engines.base import Engine
from serve_app.model.synthesizer import Synthesizer


def build_app(args: dict[str, Any]) -> Application:
    """Validate `args` (see `serve_app.config.AppConfig`) and bind the deployment graph."""
    return bind_app(parse_app_args(args))


def bind_app(
    config: AppConfig,
    engine_cls: type[Engine] | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    synthesizer_options: dict[str, Any] | None = None,
) -> Application:
    """The deployment graph for `config`.

    `engine_cls` swaps the model engine and `synthesizer_options` overrides the Synthesizer's
    deployment options (tests only; serve configs set options in their `deployments:`).
    """
    voices = [v.model_dump(mode="json", exclude_none=True) for v in config.voices]
    synthesizer = Synthesizer.options(**(synthesizer_options or {})).bind(
        voices, engine_cls=engine_cls, engine_kwargs=engine_kwargs, cpu_threads=config.cpu_threads
    )
    return Ingress.bind(synthesizer, config.model_dump(mode="json"))
