"""Whether the model replicas can take work, without waiting behind that work.

A model replica is ready when Serve's controller has it RUNNING: it is RUNNING once loaded
(its constructor warmed the engine), and stops being so when it dies or fails its health
check (`Synthesizer.check_health`: no voices, or a batch stalled past `stall_timeout_s`).
A busy replica stays RUNNING, so a readiness probe answers in a few milliseconds under any
load. (Asking the replica itself queues the probe behind its batches.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ray import serve

from serve_app.errors import Overloaded

FRESH_S = 1.0  # how long one answer of the controller is reused


def running_replicas(app: str, deployment: str) -> dict[str, int]:
    """The deployment's replicas by state, as Serve's controller has them (blocking)."""
    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return {}
    return {str(k): v for k, v in status.deployments[deployment].replica_states.items()}


class Readiness:
    def __init__(
        self,
        app: str,
        deployment: str,
        timeout_s: float,
        states: Callable[[str, str], dict[str, int]] = running_replicas,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app, self.deployment, self.timeout_s = app, deployment, timeout_s
        self._states, self._clock = states, clock
        self._last: tuple[float, dict[str, int]] | None = None
        self._asking: asyncio.Task[dict[str, int]] | None = None

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

    async def _replica_states(self) -> dict[str, int]:
        now = self._clock()
        if self._last is not None and now - self._last[0] < FRESH_S:
            return self._last[1]
        if self._asking is None or self._asking.done():
            # NOTE: one question at a time, shared by every probe that comes meanwhile.
            self._asking = asyncio.ensure_future(
                asyncio.to_thread(self._states, self.app, self.deployment)
            )
        states = await asyncio.wait_for(asyncio.shield(self._asking), self.timeout_s)
        self._last = (self._clock(), states)
        return states
