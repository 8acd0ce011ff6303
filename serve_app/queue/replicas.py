"""The ingress's view of the model replicas: sends sentence items (those sent in the same turn
of the event loop packed into one handle call), sends an item again when its replica died,
counts the replicas that answer lately (no more than Serve has running), passes on each
replica's speed profile (asked for once before the first request, then carried by every
answer), and says what a failure there tells the client (`classify`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
from ray.exceptions import OutOfMemoryError as WorkerKilledForMemory
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

from serve_app.errors import (
    ChorusError,
    ItemTooLarge,
    Overloaded,
    PayloadTooLarge,
    ReplicaUnavailable,
    SynthesisError,
    SynthesisFailed,
)
from serve_app.model.engines.base import SynthesisItem, Synthesized
from serve_app.model.profile import SpeedProfile

logger = logging.getLogger("ray.serve.chorus.replicas")

# A model replica (or its node) went away before answering: the item never finished. Sentence
# items are idempotent (same seed, same samples), so the ingress sends them again; once it
# stops retrying, the client hears "replica unavailable".
REPLICA_LOST = (
    RayActorError,
    WorkerCrashedError,
    NodeDiedError,
    ReplicaUnavailableError,
    WorkerKilledForMemory,
)

PROFILE_TIMEOUT_S = 10.0


class ModelReplicas:
    """Items go through `handle` (the Synthesizer's deployment handle), up to `per_call` in one
    call, `retries` more times when the replica is lost; remembers which replicas answered in
    the last `window_s`.

    NOTE: a handle call costs the ingress and the replica ~2 ms of CPU each whatever it
    carries, so items dispatched together (a batch came back and freed their slots) share one.
    """

    def __init__(
        self,
        handle: Any,
        retries: int = 3,
        per_call: int = 16,
        window_s: float = 30.0,
        on_retry: Callable[[], None] | None = None,
        on_count: Callable[[int], None] | None = None,
        on_profile: Callable[[SpeedProfile, int | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        running: Callable[[], int | None] = lambda: None,
    ) -> None:
        """`running`: how many replicas Serve's controller has running now, when known
        (`Readiness.running_now`)."""
        self._handle = handle
        self.retries = retries
        self.per_call = per_call
        self.window_s = window_s
        self._on_retry = on_retry
        self._on_count = on_count
        self._on_profile = on_profile
        self._counted = 1
        self._clock = clock
        self._running = running
        self._seen: dict[str, float] = {}  # replica id -> when it last answered
        self._asked: asyncio.Task[None] | None = None
        self._pack: _Pack | None = None  # items to send at the end of this loop turn

    async def profiled(self) -> None:
        """A replica's speed profile has been asked for and passed on (one call, shared by
        every request that arrives meanwhile); a failure is logged and the caller goes on."""
        if self._asked is None or self._asked.done():
            self._asked = asyncio.create_task(self._ask_profile(), name="chorus-profile")
        with contextlib.suppress(Exception):  # NOTE: then the door decides on measured drain
            await asyncio.shield(self._asked)

    async def _ask_profile(self) -> None:
        try:
            async with asyncio.timeout(PROFILE_TIMEOUT_S):
                profile = await self._handle.profile.remote()
        except Exception as exc:
            logger.warning("No speed profile from a model replica yet: %r", exc)
            raise
        if profile is not None and self._on_profile:
            self._on_profile(profile, None)

    async def send(self, item: SynthesisItem) -> Any:
        """The item's answer from some replica; a replica's loss is retried, with a short
        back-off that lets Serve route around it."""
        for attempt in range(self.retries):
            try:
                return await self._answer(item)
            except REPLICA_LOST:
                if self._on_retry:
                    self._on_retry()
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        return await self._answer(item)

    async def _answer(self, item: SynthesisItem) -> Any:
        if self._pack is None or len(self._pack.items) >= self.per_call:
            self._pack = _Pack(self._handle)
            # NOTE: sent from a context of its own: Serve cancels the calls a request made
            # when that request is cancelled, and a pack carries other requests' items too.
            loop = asyncio.get_running_loop()
            loop.call_soon(self._send, self._pack, context=contextvars.Context())
        pack = self._pack
        answer = pack.add(item)
        try:
            result = await answer
        except asyncio.CancelledError:
            pack.abandon(answer)
            raise
        if isinstance(result, Synthesized) and result.replica:
            self._seen[result.replica] = self._clock()
            self._recount()
            if result.profile is not None and self._on_profile:
                self._on_profile(result.profile, result.batch)
        return result

    def _send(self, pack: _Pack) -> None:
        if self._pack is pack:
            self._pack = None
        pack.send()

    def _recount(self) -> None:
        count = self.count()
        if count != self._counted:
            self._counted = count
            if self._on_count:
                self._on_count(count)

    def count(self) -> int:
        """Replicas that answered within the window, and no more than the controller has
        running now: on a rollout or a scale-down, replicas that stopped drop out at the
        controller's next answer, not when the window forgets them (at least 1: there is
        always one)."""
        cutoff = self._clock() - self.window_s
        self._seen = {r: t for r, t in self._seen.items() if t >= cutoff}
        running = self._running()
        answered = len(self._seen)
        return max(1, min(answered, running) if running else answered)


class _Pack:
    """Sentence items sent together in one handle call (`Synthesizer.synthesize_many`); each
    item gets its own answer or error. The call is cancelled (so its items dropped before their
    batch runs) once every item in it was abandoned."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.items: list[SynthesisItem] = []
        self.answers: list[asyncio.Future[Any]] = []
        self.response: Any = None
        self.cancelled = False  # by `abandon`, once every item was
        self._delivery: asyncio.Task[None] | None = None

    def add(self, item: SynthesisItem) -> asyncio.Future[Any]:
        self.items.append(item)
        self.answers.append(asyncio.get_running_loop().create_future())
        return self.answers[-1]

    def send(self) -> None:
        live = [(i, a) for i, a in zip(self.items, self.answers, strict=True) if not a.done()]
        if not live:
            return
        self.items, self.answers = [i for i, _ in live], [a for _, a in live]
        try:
            self.response = self.handle.synthesize_many.remote(self.items)
        except Exception as exc:
            self._fail(exc)
            return
        self._delivery = asyncio.create_task(self._deliver(self.response), name="chorus-pack")

    async def _deliver(self, response: Any) -> None:
        try:
            results = await response
        except asyncio.CancelledError:
            if not self.cancelled:  # not by us: its items must not wait forever
                self._fail(RuntimeError("the call to a model replica was cancelled"))
            return
        except Exception as exc:  # the call itself failed (replica lost, full): every item
            self._fail(exc)
            return
        for answer, result in zip(self.answers, results, strict=True):
            if answer.done():
                continue
            if isinstance(result, BaseException):
                answer.set_exception(result)
            else:
                answer.set_result(result)

    def _fail(self, exc: BaseException) -> None:
        for answer in self.answers:
            if not answer.done():
                answer.set_exception(exc)

    def abandon(self, answer: asyncio.Future[Any]) -> None:
        """An item's caller left (its request ended)."""
        answer.cancel()
        if self.response is not None and all(a.done() for a in self.answers):
            self.cancelled = True
            self.response.cancel()


def classify(exc: Exception, retry_after_s: float | None = None) -> ChorusError:
    """What the client is told about a failure while its sentences were being synthesized;
    `retry_after_s` is the server's estimate of when the queue will have room."""
    if isinstance(exc, ChorusError):
        return exc
    if isinstance(exc, BackPressureError):
        return Overloaded(
            "the model replicas' queues are full; retry shortly", retry_after_s=retry_after_s
        )
    if isinstance(exc, ItemTooLarge):
        return PayloadTooLarge(
            "a sentence of this input needs more model memory than a replica has; "
            "split it into shorter sentences",
            param="input",
            code="sentence_too_large",
        )
    if isinstance(exc, SynthesisError):
        return SynthesisFailed(f"synthesis failed: {exc.args[0] if exc.args else exc}")
    if isinstance(exc, REPLICA_LOST):
        return ReplicaUnavailable(
            "a model replica became unavailable; retry shortly", retry_after_s=retry_after_s
        )
    logger.error("Unexpected failure during synthesis", exc_info=exc)
    return ChorusError("internal server error")
