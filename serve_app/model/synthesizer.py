"""The model replica: batches sentence items from all requests through one engine, and
measures its own speed when it starts or is reconfigured (`model.profile`). Its deployment
options are set by `serve_app.app` from config."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
from ray import serve

from serve_app.config import SynthesizerUserConfig, VoiceSource, configure_logging
from serve_app.errors import ItemTooLarge, SynthesisError
from serve_app.metrics import SynthesizerMetrics
from serve_app.model.cores import CoreShare
from serve_app.model.engines.base import Engine, SynthesisItem, Synthesized, is_out_of_memory
from serve_app.model.profile import SpeedProfile, measure
from serve_app.model.runs import BatchRun, Gate, cap_after_out_of_memory

logger = logging.getLogger("ray.serve.chorus.synthesizer")

# NOTE: a CPU replica runs a batch's items one by one and returns them together: a batch
# there only holds back its first items' audio (load_tests.bench_playback).
DEFAULT_BATCH = {"cpu": 1, "cuda": 64}
# NOTE: a replica's load time counts from here: its process loads this module just before it
# builds the replica (Ray's worker may have started long before).
LOADING_SINCE = time.monotonic()


def engine_thread(threads: int | None, nice: int = 0) -> None:
    """Set up the engine's worker thread: torch uses `threads` CPU threads (None: leave as
    is), and the thread runs at niceness `nice`.

    NOTE: niceness is per thread on Linux, and a thread inherits its creator's: set here,
    before torch starts its OpenMP team from this thread, it holds for every thread the
    engine computes on, and for nothing else in the replica (its event loop, health checks
    and answers keep their priority)."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run as is
            logger.warning("Engine threads keep their priority (niceness %d: %r)", nice, exc)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _built(
    sources: list[VoiceSource],
    engine_cls: type[Engine] | None,
    engine_kwargs: dict[str, Any],
    device: str,
    cores: CoreShare | None,
    cpu_engine: str = "onnxruntime",
) -> Engine:
    """The engine, loaded on `device` (by default the voices in PyTorch, or on CPU in
    onnxruntime when `cpu_engine` says so); given `cores` to share when it can run items side
    by side."""
    if engine_cls is None and device == "cpu" and cpu_engine == "onnxruntime":
        from serve_app.model.engines.ort import OrtEngine

        engine_cls = OrtEngine
    elif engine_cls is None:
        from serve_app.model.engines.piper import PiperEngine

        engine_cls = PiperEngine
    engine = engine_cls(sources, **engine_kwargs)
    if engine.concurrent_calls:
        engine.cores = cores
    engine.load(device)
    return engine


def cuda_usable() -> bool:
    """CUDA works in this process."""
    import torch

    return torch.cuda.is_available()


def pick_device() -> str:
    # NOTE: with num_gpus 0 Ray leaves CUDA_VISIBLE_DEVICES unset, so torch could still see
    # every GPU of the node; the replica's assigned GPU ids are the truth.
    return "cuda" if ray.get_gpu_ids() else "cpu"


class Synthesizer:
    """Runs `engine.synthesize` over batches of sentence items (`@serve.batch`)."""

    def __init__(
        self,
        voices: list[dict[str, Any]],
        engine_cls: type[Engine] | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        cpu_threads: int | None = None,
        cpu_nice: int = 0,
        cpu_side_by_side: int | None = None,
        cpu_engine: str = "onnxruntime",
    ) -> None:
        configure_logging()
        self.device = pick_device()
        # NOTE: a test cluster's fake GPUs give a "cuda" device without CUDA.
        self._cuda = self.device == "cuda" and cuda_usable()
        cpu = self.device == "cpu"
        threads = (cpu_threads or os.cpu_count() or 1) if cpu else None
        # NOTE: engine threads run everything torch does here, loading included: the event
        # loop stays free to take items, cancellations and health checks while a batch runs.
        # On a GPU one thread runs batches one after another. On CPU up to `side_by_side`
        # items run at once, one per thread, sharing the cores (`model.cores`): each with one
        # torch thread, a lone item's decoder with a helper. Two items each with all the
        # threads would start two OpenMP teams of more threads than cores, and GNU OpenMP
        # then stops spinning between the decoder's many small parallel regions (measured on
        # 2 cores: 1.5 cores used and 10.7 audio-s/s, against 2.0 and 14.9 with one item at
        # a time).
        workers = (cpu_side_by_side or threads or 1) if cpu else 1
        cores = CoreShare(threads) if cpu and threads and workers > 1 else None
        self._executor = ThreadPoolExecutor(
            workers,
            thread_name_prefix="chorus-engine",
            initializer=engine_thread,
            initargs=(threads, cpu_nice if cpu else 0),
        )
        sources = [VoiceSource.model_validate(v) for v in voices]
        # NOTE: the engine is imported (torch with it), built and loaded on its own thread
        # too, at its niceness: a CPU replica's start then yields the cores to the ingress
        # and the front door, which meanwhile answer a burst (measured: 2.5 CPU-s of a 3 s
        # cold burst went to the start, and refusals waited for it; load_tests.bench_burst).
        self.engine = self._executor.submit(
            _built, sources, engine_cls, engine_kwargs or {}, self.device, cores, cpu_engine
        ).result()
        # Batches at once: as many as items side by side where the engine shares the cores.
        self.side_by_side = workers if self.engine.cores is not None else 1
        self._gate = Gate()  # batches share the engine; a reconfigure has it alone
        self._batch = serve.batch(
            max_batch_size=4,
            batch_wait_timeout_s=0.005,
            max_concurrent_batches=self.side_by_side,
        )(self._run_queued)
        self.items_run = 0  # sentence items the engine has been given, ever
        self.batches_run = 0
        self.out_of_memory = 0  # batches that ran out of device memory
        self.batch_sizes: Counter[int] = Counter()  # batches run, by size
        self.padding_sum, self.padding_batches = 0.0, 0  # efficiencies reported, and how many
        self.busy_s = 0.0  # seconds batches have run, ever
        self._running_since: dict[int, float] = {}  # batches running now: when each started
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.metrics = SynthesizerMetrics(self.device)
        self.speed: SpeedProfile | None = None  # measured by reconfigure()
        self.load_s: float | None = None  # from LOADING_SINCE to the first speed measured
        self._apply_batching(SynthesizerUserConfig())  # until reconfigure() runs
        logger.info("Synthesizer ready on %s with voices %s", self.device, self.engine.voices)

    async def reconfigure(self, user_config: dict[str, Any] | None, rank: Any = None) -> None:
        """Apply the user_config (in place on a `serve deploy` that changes it).

        NOTE: `rank` in the signature makes Serve call this at start even without a
        user_config, so the engine is tuned (its decoder compiled and checked) once, with the
        final settings, before the replica takes requests.
        """
        settings = SynthesizerUserConfig.model_validate(user_config or {})
        loop = asyncio.get_running_loop()
        async with self._gate.alone():  # NOTE: never beside a running batch
            await loop.run_in_executor(self._executor, self.engine.reconfigure, settings)
            self._apply_batching(settings)
            await self._measure_speed()

    async def _measure_speed(self) -> None:
        """Time probe batches at one item and at the batch size (the ingress's door counts on
        this until it has measured drain of its own). A probe that fails or stalls leaves no
        profile: the door then waits for measured drain, as on a server without one."""
        loop = asyncio.get_running_loop()
        probe = loop.run_in_executor(self._executor, self._probe, self.max_batch_size)
        try:
            speed = await asyncio.wait_for(probe, self.settings.stall_timeout_s)
        except Exception as exc:
            self.speed = None
            logger.warning("Speed not measured (%r); the ingress measures drain instead", exc)
            return
        if self.load_s is None:
            self.load_s = time.monotonic() - LOADING_SINCE
        self.speed = dataclasses.replace(speed, load_s=round(self.load_s, 2))
        logger.info(
            "Speed: %.0f phonemes/s alone, %.0f at batch %d; loaded in %.1f s",
            speed.phonemes_per_s(1),
            speed.phonemes_per_s(speed.max_batch),
            speed.max_batch,
            self.load_s,
        )

    def _probe(self, max_batch: int) -> SpeedProfile:
        with self._running():  # NOTE: a wedged probe fails the health check
            return measure(self.replica, self.engine.voices[0], max_batch, self.engine.synthesize)

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Engine work on this thread, watched by the health check."""
        key = threading.get_ident()
        self._running_since[key] = time.monotonic()
        try:
            yield
        finally:
            del self._running_since[key]

    def _apply_batching(self, settings: SynthesizerUserConfig) -> None:
        self.settings = settings
        batch = settings.max_batch_size or DEFAULT_BATCH.get(self.device, 4)
        self.max_batch_size = batch  # NOTE: a new size replaces a cap set after an OOM
        self._batch.set_max_batch_size(batch)
        self._batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        logger.info("Batching: max_batch_size=%d wait=%.3fs", batch, settings.batch_wait_timeout_s)

    async def synthesize(self, item: SynthesisItem) -> Synthesized:
        """Audio of one sentence item (batched with whatever else is waiting)."""
        result = await self._batch(item, time.monotonic())
        if isinstance(result, BaseException):
            raise result
        return result

    async def synthesize_many(self, items: list[SynthesisItem]) -> list[Synthesized | Exception]:
        """Several items in one call (what the ingress sent at once): each joins the batch
        queue on its own, and gets its own audio or error."""
        arrival = time.monotonic()
        return await asyncio.gather(
            *(self._batch(item, arrival) for item in items), return_exceptions=True
        )

    async def _run_queued(
        self, items: list[SynthesisItem], arrivals: list[float]
    ) -> list[Synthesized | BaseException]:
        """One batch from the queue (`self._batch`, made in __init__: `@serve.batch` with as
        many batches at once as the replica runs side by side)."""
        loop = asyncio.get_running_loop()
        async with self._gate.shared():
            start = time.monotonic()
            run = await loop.run_in_executor(self._executor, self._run_batch, items)
            seconds = time.monotonic() - start
        results = run.results
        cap = cap_after_out_of_memory(run.sizes)
        if cap is not None and cap < self.max_batch_size:
            logger.warning("Batch cap lowered from %d to %d", self.max_batch_size, cap)
            self.max_batch_size = cap
            self._batch.set_max_batch_size(cap)
        self._record(items, results, seconds, run.padding_efficiency)
        waits = [start - arrival for arrival in arrivals]
        for wait in waits:
            self.metrics.queue_wait.observe(wait)
        share = seconds / len(items)
        return [
            Synthesized(r, wait, share, self.replica, self.speed, len(items))
            if isinstance(r, np.ndarray)
            else r
            for r, wait in zip(results, waits, strict=True)
        ]

    def _record(
        self,
        items: list[SynthesisItem],
        results: list[Any],
        seconds: float,
        padding_efficiency: float | None,
    ) -> None:
        m = self.metrics
        m.batch_seconds.observe(seconds)
        m.batch_size.observe(len(items))
        m.batches.inc()
        self.batch_sizes[len(items)] += 1
        self.busy_s += seconds
        audio_s = 0.0
        for item, result in zip(items, results, strict=True):
            tags = {"voice": item.voice}
            m.items.inc(1, tags=tags)
            if isinstance(result, np.ndarray):
                item_s = result.size / self.engine.sample_rate(item.voice)
                m.audio_seconds.inc(item_s, tags=tags)
                audio_s += item_s
        if audio_s:
            m.real_time_factor.observe(seconds / audio_s)
        if padding_efficiency is not None:
            m.padding_efficiency.observe(padding_efficiency)
            m.padding_efficiency_sum.inc(padding_efficiency)
            m.padded_batches.inc()
            self.padding_sum += padding_efficiency
            self.padding_batches += 1
        if self._cuda:
            import torch

            m.gpu_memory.set(torch.cuda.memory_allocated(), tags={"kind": "allocated"})
            m.gpu_memory.set(torch.cuda.memory_reserved(), tags={"kind": "reserved"})

    def _run_batch(self, items: list[SynthesisItem]) -> BatchRun:
        """On an engine thread: the batch's results, the sizes that ran or ran out of memory,
        and the padding measured (the engine keeps it per thread)."""
        run = BatchRun()
        with self._running():
            run.results = self._run(items, run.sizes)
        run.padding_efficiency = self.engine.padding_efficiency
        return run

    def _run(
        self, items: list[SynthesisItem], sizes: dict[str, list[int]]
    ) -> list[np.ndarray | BaseException]:
        self.items_run += len(items)
        self.batches_run += 1
        try:
            audio = list(self.engine.synthesize(items))
        except Exception as exc:
            if not is_out_of_memory(exc):
                return self._after_failure(items, sizes)
        else:
            sizes["ok"].append(len(items))
            return audio
        # NOTE: out of memory. The halves run only now, outside the `except`: until it ends,
        # the error's traceback holds the failed batch's tensors, and the device has no more
        # room for a half than it had for the whole (seen on an H200: a real OOM split down
        # to single sentences that all failed again).
        sizes["oom"].append(len(items))
        return self._after_out_of_memory(items, sizes)

    def _after_failure(
        self, items: list[SynthesisItem], sizes: dict[str, list[int]]
    ) -> list[np.ndarray | BaseException]:
        """After an error other than out of memory (called while it is handled)."""
        if len(items) == 1:
            logger.exception("Synthesis failed for one item")
            return [SynthesisError("the model failed on this sentence")]
        # NOTE: a batch failure fails every caller, so find the bad item(s) one by one.
        logger.warning("Batch of %d failed; retrying items one by one", len(items))
        return [self._run([item], sizes)[0] for item in items]

    def _after_out_of_memory(
        self, items: list[SynthesisItem], sizes: dict[str, list[int]]
    ) -> list[np.ndarray | BaseException]:
        """Free cached memory, then run each half of the batch. Only an item that fails alone
        fails its request."""
        self.out_of_memory += 1
        self.metrics.out_of_memory.inc()
        if self._cuda:
            import torch

            torch.cuda.empty_cache()
        if len(items) == 1:
            logger.error("Out of memory on one item of %d phonemes", items[0].size)
            return [ItemTooLarge("one sentence does not fit in the replica's memory")]
        half = len(items) // 2
        logger.warning("Out of memory on a batch of %d; retrying halves", len(items))
        return self._run(items[:half], sizes) + self._run(items[half:], sizes)

    async def profile(self) -> SpeedProfile | None:
        """This replica's speed, measured at start and after each reconfigure."""
        return self.speed

    async def stats(self) -> dict[str, Any]:
        """Work done so far (a cancelled item that was dropped never counts), and settings."""
        return {
            "items": self.items_run,
            "batches": self.batches_run,
            "out_of_memory": self.out_of_memory,
            "batch_sizes": dict(self.batch_sizes),
            "padding_efficiency_sum": self.padding_sum,
            "padding_batches": self.padding_batches,
            "busy_s": self.busy_s,
            "max_batch_size": self.max_batch_size,
            "replica": self.replica,
            "node": ray.get_runtime_context().get_node_id(),
            "device": self.device,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "pid": os.getpid(),
            "engine": self.engine.status(),
        }

    def check_health(self) -> None:
        if not self.engine.voices:
            raise RuntimeError("engine has no voices loaded")
        since = min(self._running_since.values(), default=None)
        if since is not None and time.monotonic() - since > self.settings.stall_timeout_s:
            # NOTE: a wedged engine thread cannot be interrupted; Serve replaces the replica,
            # and the ingress sends its items again to another one.
            raise RuntimeError(
                f"a batch has been running for over {self.settings.stall_timeout_s:g} s"
            )

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
