"""The ingress's view of the model replicas: sends sentence items, sends an item again when its
replica died, and counts the replicas that answer lately (items in flight follow that count)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from serve_app.errors import REPLICA_LOST
from serve_app.model.engines.base import SynthesisItem, Synthesized


class ModelReplicas:
    """Sends items through `submit` (a handle method's `.remote`), `retries` more times when
    the replica is lost; remembers which replicas answered in the last `window_s`."""

    def __init__(
        self,
        submit: Callable[[SynthesisItem], Any],
        retries: int = 3,
        window_s: float = 30.0,
        on_retry: Callable[[], None] | None = None,
        on_count: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._submit = submit
        self.retries = retries
        self.window_s = window_s
        self._on_retry = on_retry
        self._on_count = on_count
        self._counted = 1
        self._clock = clock
        self._seen: dict[str, float] = {}  # replica id -> when it last answered

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
        response = self._submit(item)
        try:
            result = await response
        except asyncio.CancelledError:
            response.cancel()
            raise
        if isinstance(result, Synthesized) and result.replica:
            self._seen[result.replica] = self._clock()
            self._recount()
        return result

    def _recount(self) -> None:
        cutoff = self._clock() - self.window_s
        self._seen = {r: t for r, t in self._seen.items() if t >= cutoff}
        count = max(1, len(self._seen))
        if count != self._counted:
            self._counted = count
            if self._on_count:
                self._on_count(count)

    def count(self) -> int:
        """Replicas that answered within the window (at least 1: there is always one)."""
        cutoff = self._clock() - self.window_s
        return max(1, sum(1 for t in self._seen.values() if t >= cutoff))
