"""What this ingress has sent to the model replicas and not got back: queue position and wait.

Work is counted in phoneme ids, the model's input tokens: a sentence's synthesis time grows
with its length, so "phonemes ahead / phonemes drained per second" is an honest wait estimate
where "items ahead" is not. The drain rate is measured only over time when work was
outstanding, so an idle hour does not read as a slow server.

NOTE: each ingress replica sees only the work it sent. With several ingress replicas (and
traffic spread evenly) its share of the queue and its share of the drain rate shrink together,
so the wait estimate holds; positions are then positions among this replica's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .engines.base import SynthesisItem

T = TypeVar("T")


@dataclass(frozen=True)
class QueueState:
    items: int  # sentence items sent and not yet back
    phonemes: int
    phonemes_per_s: float | None  # measured drain rate; None before any work finished

    def wait_s(self) -> float | None:
        """Estimated seconds until this work has drained; None before any rate is measured."""
        if self.phonemes == 0:
            return 0.0
        return None if not self.phonemes_per_s else self.phonemes / self.phonemes_per_s


class Backlog:
    """Outstanding sentence items in submission order, and the rate at which they drain."""

    def __init__(
        self,
        window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int, bool], None] | None = None,
    ):
        self.window_s = window_s
        self._clock = clock
        self._on_change = on_change  # (items outstanding, whether one was just cancelled)
        self._tickets = itertools.count()
        self._outstanding: dict[int, int] = {}  # ticket -> phonemes, in submission order
        self._phonemes = 0
        self._busy_total = 0.0  # seconds during which something was outstanding
        self._busy_since = 0.0
        self._done: deque[tuple[float, int]] = deque()  # (busy clock, phonemes) of finished work
        self.requests = 0  # requests whose work is running (see `running`)

    def request(self, send: Callable[[SynthesisItem], Awaitable[Any]]) -> RequestWork:
        """A new request's view of the backlog."""
        return RequestWork(self, send)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Counts a request in `requests` while its work runs."""
        self.requests += 1
        try:
            yield
        finally:
            self.requests -= 1

    def track(self, response: Awaitable[T], phonemes: int) -> Tracked[T]:
        """Wrap a replica call so the backlog sees it leave, whether done, failed or cancelled."""
        ticket = self._add(phonemes)
        return Tracked(response, ticket, lambda *ended: self._remove(ticket, *ended))

    def state(self, before: int | None = None) -> QueueState:
        """The queue now; with `before`, only the work submitted ahead of that ticket."""
        if before is None:
            items, phonemes = len(self._outstanding), self._phonemes
        else:
            ahead = [p for t, p in self._outstanding.items() if t < before]
            items, phonemes = len(ahead), sum(ahead)
        return QueueState(items, phonemes, self._rate())

    def _add(self, phonemes: int) -> int:
        if not self._outstanding:
            self._busy_since = self._clock()
        ticket = next(self._tickets)
        self._outstanding[ticket] = phonemes
        self._phonemes += phonemes
        if self._on_change:
            self._on_change(len(self._outstanding), False)
        return ticket

    def _remove(self, ticket: int, finished: bool, cancelled: bool) -> None:
        busy = self._busy_clock()
        phonemes = self._outstanding.pop(ticket)
        self._phonemes -= phonemes
        if finished:
            self._done.append((busy, phonemes))
        if not self._outstanding:
            self._busy_total = busy
        while self._done and self._done[0][0] < busy - self.window_s:
            self._done.popleft()
        if self._on_change:
            self._on_change(len(self._outstanding), cancelled)

    def _busy_clock(self) -> float:
        if not self._outstanding:
            return self._busy_total
        return self._busy_total + (self._clock() - self._busy_since)

    def _rate(self) -> float | None:
        busy = self._busy_clock()
        recent = sum(p for b, p in self._done if b >= busy - self.window_s)
        span = min(self.window_s, busy)
        return recent / span if recent and span > 0 else None


class RequestWork:
    """One request's items going through the backlog; knows where the request stands."""

    def __init__(self, backlog: Backlog, send: Callable[[SynthesisItem], Awaitable[Any]]):
        self._backlog = backlog
        self._send = send
        self._first: int | None = None

    def __call__(self, item: SynthesisItem) -> Tracked[Any]:
        tracked = self._backlog.track(self._send(item), len(item.phoneme_ids))
        if self._first is None:
            self._first = tracked.ticket
        return tracked

    def ahead(self) -> QueueState:
        """The work queued before this request's first item (all of it, before that is sent)."""
        return self._backlog.state(before=self._first)


class Tracked(Awaitable[T]):
    """A replica call running as its own task, reported to the backlog when it ends.

    Cancelling it cancels the replica call too, so a queued item is dropped before its batch.
    """

    def __init__(self, response: Awaitable[T], ticket: int, on_end: Callable[[bool], None]) -> None:
        self.ticket = ticket  # submission order: work with a smaller ticket is ahead of it
        self._response = response
        self._task = asyncio.create_task(self._wait(), name="chorus-item")
        self._task.add_done_callback(
            lambda task: on_end(
                not task.cancelled() and task.exception() is None,  # finished with audio
                task.cancelled(),
            )
        )

    async def _wait(self) -> T:
        try:
            return await self._response
        except asyncio.CancelledError:
            cancel = getattr(self._response, "cancel", None)
            if cancel is not None:
                cancel()
            raise

    def cancel(self) -> None:
        self._task.cancel()

    def __await__(self) -> Any:
        return self._task.__await__()
