"""Limits that hold across ingress replicas: a client's rate, burst and concurrency cap are
the cluster's, not each replica's.

Every ingress replica keeps its clients' limits locally (the hot path never leaves the
process) and, every `every_s`, reports to one named actor, the `Board`, what each client
asked of it lately and has in progress there. The board answers with this replica's share of
each client's rate and burst, in proportion to where the client's requests arrive (every
replica keeps a floor, so a client's first request anywhere passes), and each client's
requests in progress at the other replicas, which count against its concurrency cap. The
shares of a client add up to 1, so its rate holds across any number of replicas; between
two reports a replica works on the last answer.

The board is rebuilt from the next reports if it is lost (each report carries the whole
state of its replica). A replica that cannot reach it keeps its last shares; after
`STALE_AFTER` missed reports it follows `shared_limits_fallback`: "local" goes on with the
last shares (limits hold while the set of ingress replicas is unchanged), "closed" refuses
the requests of every limited client with 503 until the board answers again.

The same reports carry the model time each client was given at the replica, so that fair
shares too hold across replicas (`queue.boosts`); a replica cut off from the board goes back
to its own fair shares.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from math import inf
from typing import Any, Protocol

import ray

from serve_app.clients import KeyStore
from serve_app.queue.boosts import Boosts, Service

logger = logging.getLogger("ray.serve.chorus.shared")

STALE_AFTER = 3  # reports missed before the fallback applies
FIRST_CONTACT_S = 15.0  # the first report may have to wait for the board's process to start
FORGET_AFTER = 4  # report intervals after which a silent replica no longer counts
NAMESPACE = "serve"  # where operators find the board: ray.get_actor(name, NAMESPACE)
FLOOR = 0.1  # an idle replica's part of a client's rate, relative to an equal split
SMOOTHING = 0.5  # weight of the newest interval in a client's smoothed demand


@dataclass
class Usage:
    """One client at one replica: requests per second asked lately, and in progress."""

    asked_per_s: float
    in_progress: int


@dataclass
class BoardAnswer:
    replicas: int  # ingress replicas reporting
    shares: dict[str, float]  # this replica's share of each client's rate and burst
    elsewhere: dict[str, int]  # each client's requests in progress at other replicas
    boosts: dict[str, float] = field(default_factory=dict)  # multipliers of weights (`boosts`)


class Board:
    """The cluster's view of every client's usage, by ingress replica (one per app)."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._reports: dict[str, tuple[float, dict[str, Usage]]] = {}
        self._service: dict[str, dict[str, Service]] = {}  # each replica's last interval
        self._boosts = Boosts()
        self._boosted_at = -inf

    def report(
        self, replica: str, usage: dict[str, Usage], service: dict[str, Service] | None = None
    ) -> BoardAnswer:
        now = self._clock()
        self._reports[replica] = (now, usage)
        horizon = now - FORGET_AFTER * self.every_s
        self._reports = {r: (t, u) for r, (t, u) in self._reports.items() if t >= horizon}
        self._service[replica] = service or {}
        self._service = {r: s for r, s in self._service.items() if r in self._reports}
        # NOTE: every replica reports once per interval, so the boosts move once per interval
        if now - self._boosted_at >= 0.9 * self.every_s:
            self._boosted_at = now
            self._boosts.update(list(self._service.values()))
        live = len(self._reports)
        others = [u for r, (_, u) in self._reports.items() if r != replica]
        shares, elsewhere = {}, {}
        for name in set(usage).union(*others):
            mine = usage.get(name, Usage(0.0, 0))
            theirs = [u[name] for u in others if name in u]
            total = mine.asked_per_s + sum(u.asked_per_s for u in theirs)
            floor = max(FLOOR * total / live, 1e-9)
            shares[name] = (mine.asked_per_s + floor) / (total + floor * live)
            elsewhere[name] = sum(u.in_progress for u in theirs)
        return BoardAnswer(live, shares, elsewhere, dict(self._boosts.boosts))

    def snapshot(self) -> dict[str, Any]:
        """Replicas reporting and their clients' usage (for operators and tests)."""
        return {r: {"age_s": self._clock() - t, "usage": u} for r, (t, u) in self._reports.items()}


class BoardHandle(Protocol):
    async def report(
        self, replica: str, usage: dict[str, Usage], service: dict[str, Service]
    ) -> BoardAnswer: ...


class RayBoard:
    """The `Board` as a named Ray actor, found or made on first use and again after a loss."""

    def __init__(self, name: str, every_s: float) -> None:
        self.name, self.every_s = name, every_s
        self._actor: Any = None

    async def report(
        self, replica: str, usage: dict[str, Usage], service: dict[str, Service]
    ) -> BoardAnswer:
        if self._actor is None:
            # NOTE: no CPU reserved, so it is placed even on a full node; owned by the replica
            # that made it, so it goes with the app (and is made again if that replica goes).
            cls = ray.remote(num_cpus=0, max_restarts=0)(Board)
            self._actor = cls.options(
                name=self.name, namespace=NAMESPACE, get_if_exists=True
            ).remote(self.every_s)
        try:
            return await self._actor.report.remote(replica, usage, service)
        except Exception:
            self._actor = None
            raise


@dataclass
class SharedLimits:
    """This replica's side: reports its clients' usage and model time, applies the board's
    answer (shares of limits to `keys`, weight boosts to `on_boosts`)."""

    keys: KeyStore
    in_progress: Callable[[], dict[str, int]]
    board: BoardHandle
    replica: str
    every_s: float = 0.5
    fallback: str = "local"
    clock: Callable[[], float] = time.monotonic
    service: Callable[[], dict[str, Service]] = dict
    on_boosts: Callable[[dict[str, float]], None] = lambda boosts: None
    _answered: bool = field(default=False, init=False)
    _demand: dict[str, float] = field(default_factory=dict, init=False)
    _last: float | None = field(default=None, init=False)
    _failures: int = field(default=0, init=False)

    @property
    def refusing(self) -> bool:
        """Whether limited clients are refused: the board is unreachable, fallback closed."""
        return self.fallback == "closed" and self.stale

    @property
    def stale(self) -> bool:
        """The last STALE_AFTER reports failed (each fails within its interval)."""
        return self._failures >= STALE_AFTER

    async def run(self) -> None:
        """Report every `every_s` until cancelled."""
        while True:
            await self.sync()
            await asyncio.sleep(self.every_s)

    async def sync(self) -> None:
        """One report and its answer applied; a failure is logged (once per outage)."""
        usage, service = self.usage(), self.service()
        timeout = self.every_s if self._answered else FIRST_CONTACT_S
        try:
            answer = await asyncio.wait_for(
                self.board.report(self.replica, usage, service), timeout
            )
        except Exception as exc:  # unreachable, dead, slow: the fallback decides
            self._failures += 1
            if self._failures == STALE_AFTER:
                self.on_boosts({})  # alone now: this replica's own fair shares
                logger.warning(
                    "shared limits: board unreachable (%s); fallback %s",
                    type(exc).__name__,
                    self.fallback,
                )
            return
        if self._failures >= STALE_AFTER:
            logger.info("shared limits: board answers again (%d replicas)", answer.replicas)
        self._failures = 0
        self._answered = True
        self.keys.reshare(answer.shares, 1 / answer.replicas)
        self.on_boosts(answer.boosts)
        for client in self.keys.clients():
            client.elsewhere = answer.elsewhere.get(client.name, 0)

    def usage(self) -> dict[str, Usage]:
        """Each limited client's smoothed requests per second asked here, and in progress
        here; clients with neither are left out."""
        now = self.clock()
        dt = max(now - self._last, 1e-3) if self._last is not None else self.every_s
        self._last = now
        in_progress = self.in_progress()
        usage = {}
        for client in self.keys.clients():
            if not client.limited:
                continue
            name = client.name
            asked = client.take_asked() / dt
            demand = SMOOTHING * asked + (1 - SMOOTHING) * self._demand.get(name, asked)
            if demand < 1e-3 and not in_progress.get(name):
                self._demand.pop(name, None)
                continue
            self._demand[name] = demand
            usage[name] = Usage(demand, in_progress.get(name, 0))
        return usage


def board_name(app: str) -> str:
    return f"chorus-limits:{app}"
