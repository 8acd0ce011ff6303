"""Test doubles for the serving layer (the main job never uses them): a ten-line engine, a
fault wrapper around it, and a model replica whose answers the test releases by hand."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from types import SimpleNamespace

import numpy as np
from starlette.datastructures import Headers

from serve_app.config import SynthesizerUserConfig
from serve_app.model.engines.base import Engine, SynthesisItem
from serve_app.model.profile import PROBE_IDS
from serve_app.queue.backlog import Backlog
from serve_app.queue.meter import Meter
from serve_app.queue.replicas import REPLICA_LOST
from serve_app.queue.shared import Board

POISON = 108  # phoneme id of "ʒ" in the packaged voice, as in "treasure"


class FakeEngine(Engine):
    """0.1 s of a constant tone per item (value from the seed); sleeps `delay_s` per batch
    (`probe_delay_s` for the replica's speed probe: a model slower than it measured itself;
    half of it with a half-precision `decoder_dtype` in the user_config, as a GPU decoder is
    faster in half precision); fails on any item containing the `poison` phoneme id, which
    fails its whole batch. Loading takes `load_s`, as a real voice's does."""

    def __init__(
        self,
        voices,
        delay_s: float = 0.0,
        probe_delay_s: float | None = None,
        poison: int | None = POISON,
        load_s: float = 0.0,
    ) -> None:
        self._voices = [v.id for v in voices]
        self.load_s = load_s
        self.poison = poison
        self.delay_s = delay_s
        self.probe_delay_s = delay_s if probe_delay_s is None else probe_delay_s
        self.speedup = 1.0

    def reconfigure(self, settings: SynthesizerUserConfig) -> None:
        self.speedup = 1.0 if settings.decoder_dtype == "float32" else 2.0

    def load(self, device: str) -> None:
        time.sleep(self.load_s)

    @property
    def voices(self) -> list[str]:
        return self._voices

    def sample_rate(self, voice: str) -> int:
        return 22050

    def synthesize(self, items: list[SynthesisItem]) -> list[np.ndarray]:
        probe = all(it.phoneme_ids == PROBE_IDS for it in items)
        time.sleep((self.probe_delay_s if probe else self.delay_s) / self.speedup)
        if any(self.poison in it.phoneme_ids for it in items):
            raise RuntimeError("poisoned sentence")
        return [np.full(2205, (it.seed % 100) / 200, dtype=np.float32) for it in items]


class _BatchMemory:
    """Stands for the device memory of a batch that ran out of it."""


class FaultyEngine(Engine):
    """A test-only fault wrapper around another engine.

    - Out of memory: a batch of more than `fits_items` items, or any item longer than
      `fits_phonemes`, raises torch's OutOfMemoryError, as CUDA does when a batch is too big;
      and, as on a device, so does any batch while that error (its traceback holds the failed
      batch's tensors) is still alive.
    - Wedged: with `hang_once` (a file path), the first batch of request items (not the
      replica's speed probe) in any process that finds no such file creates it and then
      never returns, like a stuck GPU kernel.
    """

    def __init__(
        self,
        voices,
        inner=FakeEngine,
        inner_kwargs=None,
        fits_items: int | None = None,
        fits_phonemes: int | None = None,
        hang_once: str | None = None,
    ) -> None:
        self.inner = inner(voices, **(inner_kwargs or {}))
        self.fits_items, self.fits_phonemes, self.hang_once = fits_items, fits_phonemes, hang_once
        self._failed_batch: weakref.ref | None = None

    def load(self, device: str) -> None:
        self.inner.load(device)

    @property
    def voices(self) -> list[str]:
        return self.inner.voices

    def sample_rate(self, voice: str) -> int:
        return self.inner.sample_rate(voice)

    def synthesize(self, items: list[SynthesisItem]) -> list[np.ndarray]:
        probe = all(it.phoneme_ids == PROBE_IDS for it in items)
        if self.hang_once and not probe and not os.path.exists(self.hang_once):
            open(self.hang_once, "w").close()
            threading.Event().wait()
        import torch

        if self._failed_batch is not None and self._failed_batch() is not None:
            raise torch.OutOfMemoryError("CUDA out of memory: a failed batch still holds it")
        too_many = self.fits_items is not None and len(items) > self.fits_items
        longest = max(len(it.phoneme_ids) for it in items)
        too_long = self.fits_phonemes is not None and longest > self.fits_phonemes
        if too_many or too_long:
            tensors = _BatchMemory()  # held by the error's traceback, as a real batch's are
            self._failed_batch = weakref.ref(tensors)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.synthesize(items)


class FakeRequest:
    """What `client_address` reads of a request: its peer, and its headers as header lines
    (`pairs`, a name may repeat) and keyword arguments (`x_forwarded_for=...`)."""

    def __init__(self, peer: str | None, *pairs: tuple[str, str], **headers: str) -> None:
        self.client = None if peer is None else SimpleNamespace(host=peer)
        lines = [*pairs, *((k.replace("_", "-"), v) for k, v in headers.items())]
        self.headers = Headers(raw=[(k.encode(), v.encode()) for k, v in lines])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def item(phonemes: int, seed: int = 0) -> SynthesisItem:
    return SynthesisItem("v", (1,) * phonemes, 1.0, 0.667, 0.8, seed)


class Response:
    """Like Ray's DeploymentResponse: cancelling its awaiter does not cancel the call."""

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        return asyncio.shield(self.future).__await__()


class Replica:
    """Items finish when the test says so; `sent` is what reached the replica, in order."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future] = []
        self.responses: list[Response] = []
        self.sent: list[int] = []

    def send(self, it: SynthesisItem) -> Response:
        self.sent.append(it.seed)
        self.futures.append(asyncio.get_running_loop().create_future())
        self.responses.append(Response(self.futures[-1]))
        return self.responses[-1]

    async def finish_next(self, backlog: Backlog, clock: Clock, seconds: float = 1.0) -> None:
        """The oldest unfinished call finishes after `seconds`."""
        await settle()
        clock.now += seconds
        next(f for f in self.futures if not f.done()).set_result("audio")
        await settle()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


LANES = {"interactive": 0.9, "batch": 0.1}


def make_backlog(
    replica: Replica, clock: Clock, capacity: int = 8, lanes=None, on_change=None
) -> Backlog:
    """A backlog sending to `replica`, its meter on `clock` (no replica profile)."""
    meter = Meter(capacity, clock=clock)
    return Backlog(replica.send, meter, lanes or LANES, capacity, on_change=on_change)


class Handle:
    """A fake Synthesizer handle: `synthesize_many.remote(items)` is `submit(item)` for each
    (a replica lost fails the whole call; other errors are that item's answer), and
    `profile.remote()` answers `profile`."""

    def __init__(self, submit, profile=None) -> None:
        async def answer():
            return profile

        self.calls: list[Packed] = []

        def many(items):
            self.calls.append(Packed([submit(it) for it in items]))
            return self.calls[-1]

        self.synthesize_many = SimpleNamespace(remote=many)
        self.profile = SimpleNamespace(remote=answer)


class Packed:
    """A fake multi-item handle call over one fake call per item."""

    def __init__(self, calls) -> None:
        self.calls, self.cancelled = calls, False

    def __await__(self):
        return self._results().__await__()

    async def _results(self):
        results = []
        for call in self.calls:
            try:
                results.append(await call)
            except REPLICA_LOST:
                raise
            except Exception as exc:
                results.append(exc)
        return results

    def cancel(self) -> None:
        self.cancelled = True
        for call in self.calls:
            getattr(call, "cancel", lambda: None)()


class FlakyBoard:
    """The shared limits' board as its actor is called (async), and can be cut off (`down`),
    like an actor that died or a network split."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.board = Board(every_s=0.5, clock=clock) if clock else Board(every_s=0.5)
        self.down = False

    async def report(self, replica: str, usage: dict, service: dict | None = None):
        if self.down:
            raise ConnectionError("board unreachable")
        return self.board.report(replica, usage, service)
