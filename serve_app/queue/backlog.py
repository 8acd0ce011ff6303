"""The ingress's side of the queue: sentence items waiting for the model, items in flight, the
rate at which work drains, and where each request stands.

Items wait here, not in the model replicas' queues: at most `capacity` items are in flight
to the replicas (enough to fill their batches), and the rest are handed out by the fair
scheduler (`scheduler.Fair`), so priority lanes and per-key shares decide who goes next. An
item its request gave up on while waiting here never reaches a replica.

Within a key, each item is due at its request's arrival, and items after a request's first
sentence `FOLLOW_ON_S` later: a new request's first sentence (its time to first audio) goes
before the rest of requests that came less than that earlier, and otherwise requests go in
arrival order. Sharing the model equally between a key's requests instead made a long
request's time grow with the number of requests beside it (measured with 16 clients on
2 cores: p99 28 s against 3.5 s at the median, and 10-sentence requests timing out).

Work is counted in phoneme ids, the model's input tokens: a sentence's synthesis time grows
with its length, so "phonemes ahead / phonemes drained per second" is an honest wait estimate
where "items ahead" is not. The drain rate is measured only over time when work was
outstanding, so an idle hour does not read as a slow server.

NOTE: each ingress replica sees only the work it sent. With several ingress replicas (and
traffic spread evenly) its share of the queue and its share of the drain rate shrink together,
so the estimates hold; positions are then positions among this replica's requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from math import inf
from typing import Any

from serve_app.model.engines.base import SynthesisItem, Synthesized
from serve_app.queue.scheduler import Fair

LANES = {"interactive": 0.9, "batch": 0.1}  # lane -> share of model time under contention
FOLLOW_ON_S = 2.0  # a request's later sentences are due this long after its first


@dataclass(frozen=True)
class QueueState:
    items: int  # sentence items waiting or in flight
    phonemes: int
    phonemes_per_s: float | None  # measured drain rate; None before any work finished

    def wait_s(self) -> float | None:
        """Estimated seconds until this work has drained; None before any rate is measured."""
        if self.phonemes == 0:
            return 0.0
        return None if not self.phonemes_per_s else self.phonemes / self.phonemes_per_s


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


class Backlog:
    """Every admitted request's outstanding items, handed to the replicas fairly."""

    def __init__(
        self,
        capacity: int = 8,
        lanes: dict[str, float] | None = None,
        window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int, bool], None] | None = None,
    ):
        self.capacity = capacity  # items in flight to the replicas at most
        self.lanes = dict(lanes or LANES)  # in priority order
        self.window_s = window_s
        self._clock = clock
        self._on_change = on_change  # (items outstanding, whether one was just cancelled)
        self._tickets = itertools.count()
        self._outstanding: dict[int, Tracked[Any]] = {}  # in submission order
        self._queue = Fair()
        self._phonemes = 0
        self.in_flight = 0
        self._busy_total = 0.0  # seconds during which something was outstanding
        self._busy_since = 0.0
        # (busy clock, phonemes, model seconds) of each finished item
        self._done: deque[tuple[float, int, float]] = deque()
        self.active: set[RequestWork] = set()  # admitted requests not yet closed
        self.per_client: Counter[str] = Counter()
        self.phonemes_per_char = 2.4  # learnt from finished requests

    def request(
        self,
        send: Callable[[SynthesisItem], Awaitable[Any]],
        lane: str = "interactive",
        client: str = "anonymous",
        weight: float = 1.0,
        chars: int = 0,
    ) -> RequestWork:
        """Register an admitted request; it counts until `RequestWork.close()`."""
        work = RequestWork(self, send, lane, client, weight, chars)
        self.active.add(work)
        self.per_client[client] += 1
        return work

    @property
    def requests(self) -> int:
        return len(self.active)

    def state(self, lane: str | None = None, work: RequestWork | None = None) -> QueueState:
        """Everything outstanding; with `lane`, the work that goes to the model before the
        first item of `work` (or of a new request) in that lane.

        That is: the items in flight (while its first item waits; once that is in flight, the
        ones sent before it), every waiting item of a more urgent lane, and of its own lane
        one round of fair queuing: the head item of each other request of its key waiting
        before it, and from each other key as many items as its own key has requests waiting.
        """
        if lane is None:
            return QueueState(len(self._outstanding), self._phonemes, self.rate())
        before = work.first if work else None
        first = self._outstanding.get(before) if before is not None else None
        if before is not None and (first is None or first.dispatched):
            ahead = [t for k, t in self._outstanding.items() if t.dispatched and k < before]
        else:
            ahead = [t for t in self._outstanding.values() if t.dispatched]
            for urgent in self.lanes_through(lane) - {lane}:
                ahead += self._queue.items_under((urgent,))
            ahead += self._one_round(lane, work)
        return QueueState(len(ahead), sum(t.phonemes for t in ahead), self.rate())

    def _one_round(self, lane: str, work: RequestWork | None) -> list[Tracked[Any]]:
        lane_node = self._queue.children.get(lane)
        if lane_node is None:
            return []
        before = work.first if work else None
        mark = (work.arrival if work else self._clock(), before if before is not None else inf)
        mine = lane_node.children.get(work.client) if work else None
        ahead: list[Tracked[Any]] = []
        if mine:  # its own key's items that are due before its first
            ahead += [t for t in mine.items_under() if (t.due, t.ticket) < mark]
        rounds = len(ahead) + 1
        for client in lane_node.children.values():
            if client is mine:
                continue
            # another key: as many turns as this key needs, in that key's own order
            ahead += sorted(client.items_under(), key=Tracked.order)[:rounds]
        return ahead

    def lanes_through(self, lane: str) -> set[str]:
        """`lane` and the lanes more urgent than it."""
        order = list(self.lanes)
        return set(order[: order.index(lane) + 1])

    def lane_view(self, lane: str) -> dict[str, Any]:
        """A lane as a new request in it would see the queue (see `schemas.LaneInfo`)."""
        rate = self.rate()
        ahead = self.remaining(self.lanes_through(lane))
        return {
            "requests": sum(w.lane == lane for w in self.active),
            "items_waiting": self.waiting(lane),
            "estimated_wait_s": rounded(self.state(lane).wait_s()),
            "backlog_s": None if rate is None else round(ahead / rate, 2),
        }

    def waiting(self, lane: str) -> int:
        """Items of `lane` waiting here for their turn."""
        return self._queue.queued((lane,))

    def remaining(self, lanes: set[str] | None = None) -> int:
        """Phonemes the admitted requests (in `lanes`) still need synthesized, estimated."""
        return sum(w.remaining() for w in self.active if lanes is None or w.lane in lanes)

    def finish_s(
        self, lane: str, phonemes: int, rate: float | None = None, client: str | None = None
    ) -> float | None:
        """How long new work of `phonemes` in `lane` from `client` would take to finish: after
        more urgent lanes' work and its key's earlier requests, while other keys of its lane
        take equal turns; `rate` is the drain rate when the caller has it already."""
        rate = rate or self.rate()
        if rate is None:
            return None
        order = list(self.lanes)
        rank = order.index(lane)
        urgent, keys = 0, Counter[str]()
        for work in self.active:
            work_rank = order.index(work.lane)
            if work_rank < rank:
                urgent += work.remaining()
            elif work_rank == rank:
                keys[work.client] += work.remaining()
        mine = phonemes + keys.pop(client, 0)
        ahead = urgent + mine + sum(min(other, mine) for other in keys.values())
        share = 1.0
        for slower in order[rank + 1 :]:  # less urgent lanes with work still take their share
            if any(w.lane == slower and w.remaining() for w in self.active):
                share -= self.lanes[slower]
        return ahead / (rate * share)

    def rate(self, min_busy_s: float = 0.0) -> float | None:
        """Phonemes drained per second over the last `window_s`; None before anything
        finished, or before `min_busy_s` of busy time has been seen.

        The larger of two measures: phonemes per second of busy time (right under load,
        whatever the number of replicas), and phonemes per second of the model's own time
        (right when items come one at a time, since busy time then counts round trips).

        NOTE: a few lone short items read the model slower than it is, even by its own time
        (fixed costs per item); a decision that refuses work asks for busy time behind it.
        """
        busy = self._busy_clock()
        recent = [(p, m) for b, p, m in self._done if b >= busy - self.window_s]
        phonemes = sum(p for p, _ in recent)
        model_s = sum(m for _, m in recent)
        span = min(self.window_s, busy)
        if not phonemes or span <= 0 or span < min_busy_s:
            return None
        return max(phonemes / span, phonemes / model_s if model_s else 0.0)

    def set_capacity(self, capacity: int) -> None:
        """Items in flight at most from now on (e.g. when model replicas come and go)."""
        self.capacity = capacity
        self._dispatch()

    def _add(self, tracked: Tracked[Any]) -> int:
        if not self._outstanding:
            self._busy_since = self._clock()
        ticket = next(self._tickets)
        self._outstanding[ticket] = tracked
        self._phonemes += tracked.phonemes
        self._queue.push(tracked.work.path, tracked)
        if self._on_change:
            self._on_change(len(self._outstanding), False)
        return ticket

    def _dispatch(self) -> None:
        """Hand waiting items to the replicas while there is room in flight."""
        while self.in_flight < self.capacity and self._queue.size:
            tracked = self._queue.pop(lambda t: t.phonemes, Tracked.order)
            if tracked.start():
                self.in_flight += 1

    def _remove(
        self, tracked: Tracked[Any], finished: bool, cancelled: bool, model_s: float = 0.0
    ) -> None:
        busy = self._busy_clock()
        del self._outstanding[tracked.ticket]
        self._phonemes -= tracked.phonemes
        if tracked.dispatched:
            self.in_flight -= 1
        else:
            self._queue.remove(tracked.work.names, tracked)
        if finished:
            self._done.append((busy, tracked.phonemes, model_s))
        if not self._outstanding:
            self._busy_total = busy
        while self._done and self._done[0][0] < busy - self.window_s:
            self._done.popleft()
        if self._on_change:
            self._on_change(len(self._outstanding), cancelled)
        self._dispatch()

    def _close(self, work: RequestWork, completed: bool) -> None:
        self.active.discard(work)
        self.per_client[work.client] -= 1
        if not self.per_client[work.client]:
            del self.per_client[work.client]
        self._queue.discard(work.names)
        if completed and work.chars and work.done:
            self.phonemes_per_char += 0.2 * (work.done / work.chars - self.phonemes_per_char)

    def _busy_clock(self) -> float:
        if not self._outstanding:
            return self._busy_total
        return self._busy_total + (self._clock() - self._busy_since)


class RequestWork:
    """One admitted request's items going through the backlog; knows where it stands."""

    def __init__(
        self,
        backlog: Backlog,
        send: Callable[[SynthesisItem], Awaitable[Any]],
        lane: str,
        client: str,
        weight: float,
        chars: int,
    ):
        self._backlog = backlog
        self._send = send
        self.lane, self.client, self.chars = lane, client, chars
        self.estimate = round(chars * backlog.phonemes_per_char)  # phonemes, all sentences
        self.names = (lane, client, id(self))
        self.path = ((lane, backlog.lanes[lane]), (client, weight), (id(self), 1.0))
        self.first: int | None = None  # ticket of its first item
        self.arrival = backlog._clock()
        self.outstanding = 0  # phonemes sent and not back
        self.done = 0  # phonemes synthesized
        self.closed = False

    def __call__(self, item: SynthesisItem) -> Tracked[Any]:
        tracked: Tracked[Any] = Tracked(self, item)
        if self.first is None:
            self.first = tracked.ticket
        return tracked

    def ahead(self) -> QueueState:
        """The work that goes before this request's first item (all of it, before that
        item is queued)."""
        return self._backlog.state(self.lane, self)

    def remaining(self) -> int:
        return max(self.estimate - self.done, self.outstanding)

    def close(self, completed: bool = False) -> None:
        """The request has ended; safe to call twice."""
        if not self.closed:
            self.closed = True
            self._backlog._close(self, completed)


class Tracked(Awaitable[Any]):
    """One sentence item: waits in the backlog for its turn, then runs as a replica call in a
    task of its own, reported to the backlog when it ends.

    Cancelling it drops it from the queue, or cancels the replica call, so a queued item is
    dropped before its batch runs. Its `queue_s` includes the wait here.
    """

    def __init__(self, work: RequestWork, item: SynthesisItem) -> None:
        self.work = work
        self.phonemes = len(item.phoneme_ids)
        self.dispatched = False
        self.due = work.arrival + (0.0 if work.first is None else FOLLOW_ON_S)
        backlog = work._backlog
        self._turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ticket = backlog._add(self)  # submission order
        work.outstanding += self.phonemes
        self._task = asyncio.create_task(self._run(item, backlog._clock), name="chorus-item")
        self._task.add_done_callback(self._ended)
        backlog._dispatch()

    def order(self) -> tuple[float, int]:
        """Its place among its key's items: due time, then submission."""
        return (self.due, self.ticket)

    def start(self) -> bool:
        """Its turn has come; False if it was cancelled meanwhile."""
        if self._turn.done():
            return False
        self.dispatched = True
        self._turn.set_result(None)
        return True

    async def _run(self, item: SynthesisItem, clock: Callable[[], float]) -> Any:
        queued = clock()
        await self._turn
        waited = clock() - queued
        response = self.work._send(item)
        try:
            result = await response
        except asyncio.CancelledError:
            cancel = getattr(response, "cancel", None)
            if cancel is not None:
                cancel()
            raise
        if isinstance(result, Synthesized):
            result = dataclasses.replace(result, queue_s=result.queue_s + waited)
        return result

    def _ended(self, task: asyncio.Task[Any]) -> None:
        finished = not task.cancelled() and task.exception() is None
        result = task.result() if finished else None
        model_s = result.model_s if isinstance(result, Synthesized) else 0.0
        self.work.outstanding -= self.phonemes
        if finished:
            self.work.done += self.phonemes
        self.work._backlog._remove(self, finished, task.cancelled(), model_s)

    def cancel(self) -> None:
        self._task.cancel()

    def __await__(self) -> Any:
        return self._task.__await__()
