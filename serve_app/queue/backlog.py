"""The ingress's side of the queue: sentence items waiting for the model, items in flight, and
where each request stands (counted in phoneme ids; `meter` turns them into seconds).

Items wait here, not in the model replicas' queues: at most `capacity` items are in flight
to the replicas (enough to keep them busy), and the rest are handed out by the fair
scheduler (`scheduler.Fair`), so priority lanes and per-key shares decide who goes next. An
item its request gave up on while waiting here never reaches a replica.

Within a key, items go by due time (earliest first):
- a stream's first sentence is due at its request's arrival (its time to first audio);
- a stream's later sentences are due when its listener will need them, less
  `PLAYBACK_MARGIN_S`: when the audio heard so far, and the sentences before it not yet
  heard (estimated from their phoneme ids until their audio comes), will have played out
  (`playback.Playback`); before the first audio, the second sentence `FOLLOW_ON_S` after
  arrival and each later one its predecessors' audio after that;
- every sentence of a whole-file answer is due `FOLLOW_ON_S` after its request's arrival:
  a key's whole files finish in arrival order, behind streams' first sentences that came
  less than that after them.
A sentence about to be needed then goes ahead of audio nobody needs yet. Earlier rules,
measured: sharing the model equally between a key's requests made a long request's time grow
with the requests beside it (16 clients on 2 cores: p99 28 s, 10-sentence requests timing
out); whole files' first sentences with streams' head start made a burst of them finish late
together (`load_tests.bench_burst`); a stream's later sentences all due 2 s after its arrival
let 29-35% of 8 streams stall on 2 cores (`load_tests.bench_playback`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from math import inf
from typing import Any

from serve_app.model.engines.base import SynthesisItem, Synthesized
from serve_app.queue.boosts import Service
from serve_app.queue.meter import Meter
from serve_app.queue.playback import SPEECH_S_PER_PHONEME, Playback
from serve_app.queue.scheduler import Fair, Step

FOLLOW_ON_S = 2.0  # a whole-file answer's sentences are due this long after its arrival
PLAYBACK_MARGIN_S = 1.0  # a stream's sentence is due this long before its listener needs it

Send = Callable[[SynthesisItem], Awaitable[Any]]  # an item to a model replica, its answer back


@dataclass(frozen=True)
class QueueState:
    items: int  # sentence items waiting or in flight
    phonemes: int


class Backlog:
    """Every admitted request's outstanding items, handed to the replicas fairly through
    `send`; `lanes` are lane -> share of model time under contention, most urgent first."""

    def __init__(
        self,
        send: Send,
        meter: Meter,
        lanes: dict[str, float],
        capacity: int = 8,
        on_change: Callable[[int, bool], None] | None = None,
    ):
        self.send = send
        self.meter = meter
        self.lanes = lanes
        self.capacity = capacity  # items in flight to the replicas at most
        self._on_change = on_change  # (items outstanding, whether one was just cancelled)
        self._tickets = itertools.count()
        self._outstanding: dict[int, Tracked] = {}  # in submission order
        self._queue = Fair()
        self._phonemes = 0
        self.in_flight = 0
        self.active: set[RequestWork] = set()  # admitted requests not yet closed
        self.per_client: Counter[str] = Counter()
        self.boosts: dict[str, float] = {}  # multipliers of clients' weights (`queue.boosts`)
        self._served: Counter[str] = Counter()  # phonemes synthesized per client, this interval
        self._waited: set[str] = set()  # clients that had items waiting, this interval
        self._weights: dict[str, float] = {}
        self._accounting = False  # from the first take_service() on (the board asks for it)

    def request(
        self,
        lane: str,
        client: str = "anonymous",
        weight: float = 1.0,
        chars: int = 0,
        streamed: bool = True,
    ) -> RequestWork:
        """Register an admitted request (`streamed`: its first audio is sent as soon as it is
        ready); it counts until `RequestWork.close()`."""
        estimate = self.meter.phonemes(chars)
        work = RequestWork(self, lane, client, weight, estimate, chars, streamed)
        self.active.add(work)
        if self._accounting:
            self._weights[client] = weight
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
            return QueueState(len(self._outstanding), self._phonemes)
        before = work.first if work else None
        first = self._outstanding.get(before) if before is not None else None
        if before is not None and (first is None or first.dispatched):
            ahead = [t for k, t in self._outstanding.items() if t.dispatched and k < before]
        else:
            ahead = [t for t in self._outstanding.values() if t.dispatched]
            for urgent in self.lanes_through(lane) - {lane}:
                ahead += self._queue.items_under((urgent,))
            ahead += self._one_round(lane, work)
        return QueueState(len(ahead), sum(t.phonemes for t in ahead))

    def _one_round(self, lane: str, work: RequestWork | None) -> list[Tracked]:
        lane_node = self._queue.children.get(lane)
        if lane_node is None:
            return []
        before = work.first if work else None
        due = work.due(0) if work else self.meter.clock()
        mark = (due, before if before is not None else inf)
        mine = lane_node.children.get(work.client) if work else None
        ahead: list[Tracked] = []
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

    def lane_requests(self, lane: str) -> int:
        return sum(w.lane == lane for w in self.active)

    def waiting(self, lane: str) -> int:
        """Items of `lane` waiting here for their turn."""
        return self._queue.queued((lane,))

    def remaining(self, lanes: set[str] | None = None) -> int:
        """Phonemes the admitted requests (in `lanes`) still need synthesized, estimated."""
        return sum(w.remaining() for w in self.active if lanes is None or w.lane in lanes)

    def ahead_of_new(self, lane: str, phonemes: int, client: str | None) -> tuple[int, float]:
        """What new work of `phonemes` in `lane` from `client` waits for, in phonemes
        (more urgent lanes' work, its key's earlier requests and its own, while other keys of
        its lane take equal turns), and the share of model time its lane then has."""
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
        return ahead, share

    def take_service(self) -> dict[str, Service]:
        """Each client's model time and whether it waited, since the last call."""
        self._accounting = True
        for lane in self._queue.children.values():  # waiting now
            self._waited.update(name for name, node in lane.children.items() if node.size)
        service = {
            name: Service(self._served[name], name in self._waited, self._weights.get(name, 1.0))
            for name in set(self._served) | self._waited
        }
        self._served.clear()
        self._waited.clear()
        self._weights = {w.client: w.weight for w in self.active}
        return service

    def set_boosts(self, boosts: dict[str, float]) -> None:
        """Clients' weight multipliers from the board, for the items queued from now on."""
        self.boosts = boosts

    def set_capacity(self, capacity: int) -> None:
        """Items in flight at most from now on (e.g. when model replicas come and go)."""
        self.capacity = capacity
        self._dispatch()

    def _add(self, tracked: Tracked) -> int:
        self.meter.added()
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

    def _remove(self, tracked: Tracked, model_s: float | None, cancelled: bool) -> None:
        """`tracked` has ended: synthesized (in `model_s`), failed or cancelled."""
        self.meter.removed(tracked.phonemes, model_s)
        del self._outstanding[tracked.ticket]
        self._phonemes -= tracked.phonemes
        if tracked.dispatched:
            self.in_flight -= 1
            if model_s is not None and self._accounting:
                self._served[tracked.work.client] += tracked.phonemes
        else:
            self._queue.remove(tracked.work.names, tracked)
        if self._on_change:
            self._on_change(len(self._outstanding), cancelled)
        self._dispatch()

    def _close(self, work: RequestWork, completed: bool) -> None:
        self.active.discard(work)
        self.per_client[work.client] -= 1
        if not self.per_client[work.client]:
            del self.per_client[work.client]
        self._queue.discard(work.names)
        if completed:
            self.meter.learn_chars(work.chars, work.done)


class RequestWork:
    """One admitted request's items going through the backlog; knows where it stands.
    Calling it with an item queues that item (a `Tracked`, awaited for its answer)."""

    def __init__(
        self,
        backlog: Backlog,
        lane: str,
        client: str,
        weight: float,
        estimate: int,
        chars: int,
        streamed: bool = True,
    ):
        self.backlog = backlog
        self.lane, self.client, self.chars = lane, client, chars
        self.streamed = streamed  # its sentences are due by playback (module docstring)
        self.estimate = estimate  # phonemes, all sentences
        self.weight = weight
        self.names = (lane, client, id(self))
        self.first: int | None = None  # ticket of its first item
        self.arrival = backlog.meter.clock()
        self.outstanding = 0  # phonemes sent and not back
        self.done = 0  # phonemes synthesized
        self.closed = False
        self.playback = Playback()  # its listener's, for a stream
        self._planned: list[float] = []  # each queued item's audio seconds, estimated
        self._heard = 0  # items whose audio has gone to the client

    @property
    def path(self) -> tuple[Step, ...]:
        """Where its items queue, with the weights that hold now."""
        weight = self.weight * self.backlog.boosts.get(self.client, 1.0)
        lane = self.lane
        return ((lane, self.backlog.lanes[lane]), (self.client, weight), (id(self), 1.0))

    def __call__(self, item: SynthesisItem) -> Tracked:
        tracked = Tracked(self, item)
        if self.first is None:
            self.first = tracked.ticket
        return tracked

    def plan(self, item: SynthesisItem) -> int:
        """Its next item's index; the item's audio length is estimated until it is heard."""
        self._planned.append(len(item.phoneme_ids) * SPEECH_S_PER_PHONEME * item.length_scale)
        return len(self._planned) - 1

    def heard(self, seconds: float) -> None:
        """Its next sentence's audio (`seconds` long) went to the client."""
        self.playback.heard(seconds, self.backlog.meter.clock())
        self._heard += 1

    def due(self, index: int) -> float:
        """When its item `index` is due (module docstring)."""
        if not self.streamed:
            return self.arrival + FOLLOW_ON_S
        if index == 0:
            return self.arrival
        needed = self.playback.needed_at(sum(self._planned[self._heard : index]))
        if needed is None:  # no audio yet: the second FOLLOW_ON_S after arrival, and so on
            return self.arrival + FOLLOW_ON_S + sum(self._planned[1:index])
        return needed - PLAYBACK_MARGIN_S

    def ahead(self) -> QueueState:
        """The work that goes before this request's first item (all of it, before that
        item is queued)."""
        return self.backlog.state(self.lane, self)

    def remaining(self) -> int:
        return max(self.estimate - self.done, self.outstanding)

    def close(self, completed: bool = False) -> None:
        """The request has ended; safe to call twice."""
        if not self.closed:
            self.closed = True
            self.backlog._close(self, completed)


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
        self.index = work.plan(item)  # its place in its request
        backlog = work.backlog
        self._turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ticket = backlog._add(self)  # submission order
        work.outstanding += self.phonemes
        self._task = asyncio.create_task(self._run(item, backlog.send), name="chorus-item")
        self._task.add_done_callback(self._ended)
        backlog._dispatch()
        if not self.dispatched and backlog._accounting:  # it waits for a turn
            backlog._waited.add(work.client)

    @property
    def due(self) -> float:
        """When it is due; a stream's later sentences move as its audio is heard."""
        return self.work.due(self.index)

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

    async def _run(self, item: SynthesisItem, send: Send) -> Any:
        clock = self.work.backlog.meter.clock
        queued = clock()
        await self._turn
        waited = clock() - queued
        response = send(item)
        try:
            result = await response
        except asyncio.CancelledError:
            cancel = getattr(response, "cancel", None)  # a Serve response: drop the call
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
        self.work.backlog._remove(self, model_s if finished else None, task.cancelled())

    def cancel(self) -> None:
        self._task.cancel()

    def __await__(self) -> Any:
        return self._task.__await__()
