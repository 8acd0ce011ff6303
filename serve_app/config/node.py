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


GRPC_SWITCH = "RAY_SERVE_USE_GRPC_BY_DEFAULT"


def calls_over_grpc() -> bool:
    """Whether this process's calls to other deployments go over Serve's gRPC (NODE_SETTINGS).

    NOTE: a handle carries the choice of the process that made it (a test's driver binding
    the app, where Serve was imported before this was set), so the ingress asks its own."""
    return os.environ.get(GRPC_SWITCH) == "1"


def haproxy_adds_peer() -> bool:
    """Whether Serve's HAProxy here is run through chorus-haproxy, which has it append the
    address it saw to X-Forwarded-For."""
    return Path(os.environ.get(HAPROXY_BINARY, "")).name == CHORUS_HAPROXY


# Settings of Ray and of Serve's front door that Chorus needs on every node, and how each gets
# there. Those in TRAVELS go with the app (its serve configs' `runtime_env.env_vars`, which
# Ray applies to every replica it starts); the others are read by Serve's controller and
# proxy, which the app does not start: they must be in the environment of `ray start` (the
# image sets them; `make serve` and the tests too).
NODE_SETTINGS = {
    "RAY_max_direct_call_object_size": (
        "4000000",
        "a sentence's audio then returns inline, not through the object store, where the "
        "model replicas are called over Ray (RAY_SERVE_USE_GRPC_BY_DEFAULT=0; "
        "docs/performance.md, Sizing); set by the serve configs' runtime_env",
    ),
    # NOTE: the ingress's calls to the model replicas as in Ray's throughput-optimized Serve
    # (RAY_SERVE_THROUGHPUT_OPTIMIZED, which also buffers Serve's logs and turns on direct
    # ingress behind Serve's proxy too; not taken whole):
    # one client, 48 sentences alternated with Ray's defaults three times, 10.7-12.8 against
    # 14.6-18.8 ms a sentence outside the model, the ingress's CPU 8.5-10.4 against 11.7-15.4
    # ms (docs/performance.md, "Serve's calls over gRPC").
    GRPC_SWITCH: (
        "1",
        "the ingress then calls the model replicas over Serve's gRPC between replicas, not "
        "Ray actor calls (~3 ms less a sentence; docs/performance.md, Serve's calls over "
        "gRPC); set by the serve configs' runtime_env",
    ),
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": (
        "2147483647",
        "a model replica's answer then fits one gRPC message: Serve's default 4 MiB fails a "
        "call whose audio is longer (one 400-character sentence at speed 0.25 is ~64 s, 5.6 "
        "MB); set by the serve configs' runtime_env",
    ),
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": (
        "0",
        "Chorus's code then runs on each replica's own event loop, one thread hop less each "
        "way (as in Ray's throughput-optimized Serve); set by the serve configs' runtime_env",
    ),
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": (
        "0",
        "the ingress's router then runs on its event loop, one thread hop less each way (as in "
        "Ray's throughput-optimized Serve); set by the serve configs' runtime_env",
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
# The NODE_SETTINGS that every serve config sets in its runtime_env (read in the replicas).
TRAVELS = (
    "RAY_max_direct_call_object_size",
    GRPC_SWITCH,
    "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP",
)


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
