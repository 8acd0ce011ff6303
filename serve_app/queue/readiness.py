"""Whether the model replicas can take work, without waiting behind that work.

A model replica is ready when Serve's controller has it RUNNING: it is RUNNING once loaded
(its constructor warmed the engine), and stops being so when it dies or fails its health
check (`Synthesizer.check_health`: no voices, or a batch stalled past `stall_timeout_s`).
A busy replica stays RUNNING, so a readiness probe answers in a few milliseconds under any
load. (Asking the replica itself queues the probe behind its batches.)

While none runs, the controller is asked every `WATCH_S` (through `serve.status()` a question
cost the ingress ~20 ms of CPU, most of it pickling, and once a second it slowed the refusals
of a burst at cold start; read as the controller answers, under 1 ms: `running_replicas`),
and the ingress's handle hears of a replica that starts running before that: Serve pushes
each handle its deployment's running replicas (its own proxies wait for the same news). An
answer of none running that was asked before the handle heard of one is stale, and asked
again at once: a request arriving just after a replica started is admitted, not told to come
back when the replica is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ray.serve.context import _get_global_client

from serve_app.errors import Overloaded

logger = logging.getLogger("ray.serve.chorus.readiness")

FRESH_S = 1.0  # how long one answer of the controller is reused
LATE_S = 2.0  # a replica later than expected is expected again this much later
NEWS_POLL_S = 0.05  # how often the watch looks for the handle's news while none runs
WATCH_S = 5.0  # how often the controller is asked while none runs (the news comes sooner)


def running_replicas(app: str, deployment: str) -> dict[str, int]:
    """The deployment's replicas by state, as Serve's controller has them (blocking): what
    `serve.status()` counts, read from the controller's answer as it comes.

    NOTE: `serve.status()` builds pydantic models from that answer, pickling each
    deployment's request router class on the way: ~20 ms of the ingress's CPU per question,
    a quarter of its busy time with one client, against under 1 ms for reading the dict."""
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:  # Serve is not up (yet)
        return {}
    details = client.get_serve_details().get("applications", {}).get(app)
    if details is None or deployment not in details.get("deployments", {}):
        return {}
    replicas = details["deployments"][deployment]["replicas"]
    states = Counter(str(getattr(r["state"], "value", r["state"])) for r in replicas)
    return dict(states)


class Readiness:
    def __init__(
        self,
        app: str,
        deployment: str,
        timeout_s: float,
        states: Callable[[str, str], dict[str, int]] = running_replicas,
        clock: Callable[[], float] = time.monotonic,
        routed: Callable[[], bool] = lambda: False,
    ) -> None:
        """`routed`: whether the ingress's handle has been told of a running replica (once
        it has, it stays so)."""
        self.app, self.deployment, self.timeout_s = app, deployment, timeout_s
        self._states, self._clock, self._routed = states, clock, routed
        self._routed_at: float | None = None  # when `routed` was first seen true
        self._last: tuple[float, dict[str, int]] | None = None
        self._asking: asyncio.Task[dict[str, int]] | None = None
        self._watch: asyncio.Future[None] | None = None
        # NOTE: an ingress starts with its app, so a model replica found not running then
        # is taken to have started when this one did.
        self._down_since: float | None = clock()

    async def check(self) -> dict[str, Any]:
        """The model replicas by state; raises 503 `not_ready` when none is running."""
        try:
            states = await self._replica_states()
        except Exception as exc:  # the controller is slow or unreachable
            raise Overloaded(
                f"the model replicas' state is unknown ({type(exc).__name__})",
                code="not_ready",
                retry_after_s=5,
            ) from None
        running = states.get("RUNNING", 0)
        if not running:
            starting = sum(v for k, v in states.items() if k != "RUNNING")
            raise Overloaded(
                f"no model replica is running ({starting} starting or recovering)",
                code="not_ready",
                retry_after_s=5,
            )
        return {"status": "ready", "model_replicas": running, "replica_states": states}

    async def running(self) -> int | None:
        """Model replicas running, by the controller's latest answer, without waiting for a
        new one (only for the first); None when the controller cannot say.

        NOTE: a controller answer can take most of a second while Serve is busy deploying,
        and a burst must not wait on it: the answer is kept fresh in the background, every
        `WATCH_S` while no replica runs (at once on the handle's news of one), and once one
        runs asked again on a call that finds it older than `FRESH_S`."""
        self.watch()
        if self._last is None:  # the first answer (the watch's own question, shared)
            with contextlib.suppress(Exception):  # unknown: the caller goes on without it
                await self._replica_states()
        elif not self._fresh():
            self._refresh()  # for the next call
        if self._last is None:
            return None
        return 1 if self._stale() else self._last[1].get("RUNNING", 0)

    def running_now(self) -> int | None:
        """Model replicas running by an answer of the controller at most 2 x `WATCH_S` old
        (the watch keeps one that fresh); None when there is none that recent."""
        if self._last is None or self._stale() or self._clock() - self._last[0] > 2 * WATCH_S:
            return None
        return self._last[1].get("RUNNING", 0)

    def watch(self) -> None:
        """Ask the controller in the background (unless already asking): now, and again
        every `WATCH_S`; sooner while no replica runs, as soon as the handle hears of one."""
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._watching())

    async def _watching(self) -> None:
        while True:
            try:
                if (await self._replica_states()).get("RUNNING", 0):
                    await asyncio.sleep(WATCH_S)  # keeps `running_now` current (a rollout)
                    continue
            except Exception as exc:  # noqa: BLE001 - asked again below
                logger.warning("Model replicas' state unknown: %r", exc)
                if self._last is None:
                    raise
            for _ in range(round(WATCH_S / NEWS_POLL_S)):  # or sooner, on the handle's news
                if self._stale():
                    break
                await asyncio.sleep(NEWS_POLL_S)

    def _stale(self) -> bool:
        """The last answer had none running, and the handle has heard of one since."""
        if self._last is None or self._last[1].get("RUNNING", 0):
            return False
        if self._routed_at is None and self._routed():
            self._routed_at = self._clock()
        return self._routed_at is not None and self._last[0] < self._routed_at

    def loading_s(self, load_s: float) -> float | None:
        """Seconds until a model replica should take work, when the controller's last answer
        had none running; `load_s` is how long one takes to start. None when one runs (or
        nothing is known)."""
        if self._last is None or self._last[1].get("RUNNING", 0) or self._down_since is None:
            return None
        if self._stale():
            return None
        return max(LATE_S, load_s - (self._clock() - self._down_since))

    def _fresh(self) -> bool:
        return (
            self._last is not None and self._clock() - self._last[0] < FRESH_S and not self._stale()
        )

    def _refresh(self) -> asyncio.Future[dict[str, int]]:
        """The question to the controller now in flight, asked if none is.

        NOTE: one question at a time, shared by every probe that comes meanwhile."""
        if self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self._ask())
            # a failure is seen by whoever awaits it; unawaited, it is not an error here
            self._asking.add_done_callback(lambda task: task.cancelled() or task.exception())
        return self._asking

    async def _replica_states(self) -> dict[str, int]:
        if self._fresh():
            assert self._last is not None
            return self._last[1]
        return await asyncio.wait_for(asyncio.shield(self._refresh()), self.timeout_s)

    async def _ask(self) -> dict[str, int]:
        now = self._clock()  # NOTE: when asked: the answer is no newer than that
        states = await asyncio.to_thread(self._states, self.app, self.deployment)
        self._last = (now, states)
        if states.get("RUNNING", 0):
            self._down_since = None
        elif self._down_since is None:
            self._down_since = now
        return states
