"""Every Chorus metric, declared once, through Ray Serve's metrics API.

Ray's metrics agent on each node exports them for Prometheus with a `ray_` prefix and the
replica's `application`, `deployment` and `replica` tags (see docs/operations.md, "Operating
Chorus").
Each deployment creates its own set in `__init__`: metrics objects belong in a replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ray.serve.metrics import Counter, Gauge, Histogram

# Seconds, from a fast first sentence to a long queue or a long text.
LATENCY_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]
STALL_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30]
BATCH_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10]
BATCH_SIZE = [1, 2, 4, 8, 16, 32, 64]
RATIO = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
RTF = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2]


class SampledGauge:
    """A gauge that may be set on every change but is recorded at most once per `every_s`;
    the latest value always lands within `every_s`.

    NOTE: recording a Ray metric costs ~0.1 ms of CPU; set twice per sentence item, the
    items-in-flight gauge was ~8% of an ingress replica's CPU (load_tests.bench_serving).
    """

    def __init__(
        self, gauge: Gauge, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.gauge, self.every_s, self._clock = gauge, every_s, clock
        self.value: float | None = None
        self._recorded_at = float("-inf")
        self._pending = False

    def set(self, value: float) -> None:
        self.value = value
        wait = self._recorded_at + self.every_s - self._clock()
        if wait <= 0:
            self._record()
        elif not self._pending:
            try:
                asyncio.get_running_loop().call_later(wait, self._record)
                self._pending = True
            except RuntimeError:  # no event loop here: record now
                self._record()

    def _record(self) -> None:
        self._pending = False
        self._recorded_at = self._clock()
        self.gauge.set(self.value)


class IngressMetrics:
    """What the front door sees: requests, latency, first audio, audio out, queued items."""

    def __init__(self) -> None:
        self.requests = Counter(
            "chorus_requests_total",
            description="HTTP requests by route, status and reason (ok, bad_input, auth, "
            "rate_limit, overload, deadline, synthesis_failed, replica_unavailable, not_found, "
            "client_gone, internal).",
            tag_keys=("route", "status", "reason"),
        )
        self.stream_failures = Counter(
            "chorus_stream_failures_total",
            description="Streams that failed after their 200 was sent, by reason.",
            tag_keys=("reason",),
        )
        self.latency = Histogram(
            "chorus_request_latency_seconds",
            description="Speech requests that got their audio: arrival to last byte.",
            boundaries=LATENCY_S,
            tag_keys=("voice", "stream", "lane"),
        )
        self.first_audio = Histogram(
            "chorus_time_to_first_audio_seconds",
            description="Speech requests: arrival to their first sentence's audio.",
            boundaries=LATENCY_S,
            tag_keys=("voice", "stream", "lane"),
        )
        self.stream_stall = Histogram(
            "chorus_stream_stall_seconds",
            description="Streams that got their audio: playback time a listener playing from "
            "the first audio in real time would have waited for audio that came late, in all "
            "(0: none).",
            boundaries=STALL_S,
            tag_keys=("voice", "stream", "lane"),
        )
        self.audio_seconds = Counter(
            "chorus_audio_seconds_total",
            description="Seconds of audio delivered to clients.",
            tag_keys=("voice",),
        )
        self.characters = Counter(
            "chorus_input_characters_total",
            description="Input characters of speech requests that got their audio.",
            tag_keys=("voice",),
        )
        self.items_in_flight = SampledGauge(
            Gauge(
                "chorus_items_in_flight",
                description="Sentence items this ingress replica has sent and not got back.",
            )
        )
        self.items_cancelled = Counter(
            "chorus_items_cancelled_total",
            description="Sentence items dropped because their request ended first "
            "(client gone, deadline, failure).",
        )
        self.items_retried = Counter(
            "chorus_items_retried_total",
            description="Sentence items sent again because their model replica died or "
            "became unreachable.",
        )
        self.model_replicas = Gauge(
            "chorus_model_replicas_seen",
            description="Model replicas that answered this ingress replica lately; items in "
            "flight are items_in_flight per replica.",
        )


class SynthesizerMetrics:
    """What a model replica does: batches, their time and shape, items, waits, GPU memory."""

    def __init__(self, device: str) -> None:
        self.batch_seconds = Histogram(
            "chorus_batch_seconds",
            description="Model time per batch.",
            boundaries=BATCH_S,
            tag_keys=("device",),
        )
        self.batch_size = Histogram(
            "chorus_batch_size",
            description="Sentence items per batch.",
            boundaries=BATCH_SIZE,
            tag_keys=("device",),
        )
        self.padding_efficiency = Histogram(
            "chorus_batch_padding_efficiency",
            description="Real frames / frames computed (padding included) per batch; 1 = no "
            "padding.",
            boundaries=RATIO,
            tag_keys=("device",),
        )
        self.real_time_factor = Histogram(
            "chorus_real_time_factor",
            description="Model time / audio seconds produced, per batch (below 1: faster than "
            "real time).",
            boundaries=RTF,
            tag_keys=("device",),
        )
        self.queue_wait = Histogram(
            "chorus_queue_wait_seconds",
            description="Time a sentence item waited in the model replica before its batch ran.",
            boundaries=LATENCY_S,
            tag_keys=("device",),
        )
        self.items = Counter(
            "chorus_items_synthesized_total",
            description="Sentence items run through the model, by voice.",
            tag_keys=("voice", "device"),
        )
        self.audio_seconds = Counter(
            "chorus_model_audio_seconds_total",
            description="Seconds of audio the model produced.",
            tag_keys=("voice", "device"),
        )
        # NOTE: means are taken from counters (rate of a sum / rate of a count): Ray rebuilds a
        # histogram's _sum from bucket midpoints, which read a mean batch of 23 as 17.2.
        self.batches = Counter(
            "chorus_batches_total",
            description="Batches run through the model (mean batch size: "
            "chorus_items_synthesized_total / this).",
            tag_keys=("device",),
        )
        self.padding_efficiency_sum = Counter(
            "chorus_batch_padding_efficiency_sum_total",
            description="Per-batch padding efficiencies added up, for the mean (divided by "
            "chorus_padded_batches_total).",
            tag_keys=("device",),
        )
        self.padded_batches = Counter(
            "chorus_padded_batches_total",
            description="Batches that report a padding efficiency (batched decoders).",
            tag_keys=("device",),
        )
        self.out_of_memory = Counter(
            "chorus_out_of_memory_total",
            description="Batches that ran out of device memory (split and retried).",
            tag_keys=("device",),
        )
        self.gpu_memory = Gauge(
            "chorus_gpu_memory_bytes",
            description="CUDA memory of this replica's device: allocated and reserved.",
            tag_keys=("kind",),
        )
        for metric in vars(self).values():
            if metric is not self.gpu_memory:
                metric.set_default_tags({"device": device})
