"""Serve-config builders for cluster tests: Chorus with the fake engine (never the main job)."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serve_app.app import bind_app
from serve_app.config import parse_app_args
from tests.fakes import FakeEngine


def build_fake_app(args: dict[str, Any]) -> Application:
    """Like `serve_app.app:build_app`, with the fake engine; `fake_delay_s` is its batch time."""
    args = dict(args)
    delay_s = float(args.pop("fake_delay_s", 0.3))
    return bind_app(parse_app_args(args), engine_cls=FakeEngine, engine_kwargs={"delay_s": delay_s})
