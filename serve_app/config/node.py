"""The environment: the one module of the app that reads environment variables (Chorus's
own, and the settings of Ray and of Serve's front door every node needs), and logging.

(`serve_app.haproxy`, a command Serve runs before HAProxy, reads the one it is run by: it
keeps its imports light.)"""

from __future__ import annotations

import logging
import os
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Literal


def env(name: str, default: str | None = None) -> str | None:
    """Read a CHORUS_* environment variable (the only place the code reads the environment)."""
    return os.environ.get(f"CHORUS_{name}", default)


# Serve's front door (docs/operations.md, "The front door"): HAProxy with direct ingress, the
# ingress replicas taking HTTP themselves ("haproxy"), or Serve's Python proxy ("proxy").
FrontDoorKind = Literal["haproxy", "proxy"]
HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_BINARY = "RAY_SERVE_HAPROXY_BINARY_PATH"
CHORUS_HAPROXY = "chorus-haproxy"  # serve_app/haproxy.py, a console script of this package


def front_door(environ: Mapping[str, str] = os.environ) -> FrontDoorKind:
    """The front door a Ray node with `environ` runs (read by Serve as Ray starts)."""
    return "haproxy" if environ.get(HAPROXY_SWITCH) == "1" else "proxy"


def haproxy_adds_peer() -> bool:
    """Whether Serve's HAProxy here is run through chorus-haproxy, which has it append the
    address it saw to X-Forwarded-For."""
    return Path(os.environ.get(HAPROXY_BINARY, "")).name == CHORUS_HAPROXY


# Settings of Ray and of Serve's front door that Chorus needs on every node, and how each gets
# there. The first travels with the app (its serve configs' `runtime_env.env_vars`, which
# Ray applies to every replica it starts); the others are read by Serve's controller and
# proxy, which the app does not start: they must be in the environment of `ray start` (the
# image sets them; `make serve` and the tests too).
NODE_SETTINGS = {
    "RAY_max_direct_call_object_size": (
        "4000000",
        "a sentence's audio then returns inline, not through the object store "
        "(docs/performance.md, Sizing); set by the serve configs' runtime_env",
    ),
    "FORWARDED_ALLOW_IPS": (
        "",
        "Serve's proxy (and, in HAProxy mode, the ingress replicas' own HTTP servers) then "
        "believe X-Forwarded-For from no one, and trusted_proxies alone names the client "
        "(docs/operations.md, Security); set it where `ray start` runs",
    ),
    HAPROXY_SWITCH: (
        "1",
        "Serve's front door is then HAProxy, the ingress replicas taking HTTP directly "
        "(docs/operations.md, The front door; 0: Serve's Python proxy); set it where "
        "`ray start` runs",
    ),
    HAPROXY_BINARY: (
        str(Path(sysconfig.get_path("scripts")) / CHORUS_HAPROXY),
        "Serve's HAProxy then runs through chorus-haproxy, which adds the client's address "
        "to what it forwards: without it every request's client is HAProxy, one fair share "
        "and one set of open_limits for all (docs/operations.md, The front door); set it where "
        "`ray start` runs",
    ),
}


def unset_node_settings() -> list[str]:
    """Warnings for the NODE_SETTINGS this process runs without (one line each); the HAProxy
    binary matters only in HAProxy mode."""
    return [
        f"{name} is not set (want {value!r}): {why}"
        for name, (value, why) in NODE_SETTINGS.items()
        if name not in os.environ and (name != HAPROXY_BINARY or front_door() == "haproxy")
    ]


def configure_logging() -> None:
    """Set Chorus's log level from CHORUS_LOG_LEVEL (default INFO).

    NOTE: Chorus logs under "ray.serve" so that replicas write its lines with Serve's handler,
    request ids included.
    """
    logging.getLogger("ray.serve.chorus").setLevel((env("LOG_LEVEL", "INFO") or "INFO").upper())
