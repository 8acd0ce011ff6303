"""What a model replica keeps around its engine's batches: what one run brings back, the
batch cap after running out of memory, and the gate between batches and a reconfigure."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import numpy as np


@dataclasses.dataclass
class BatchRun:
    """What one batch's run on an engine thread brings back."""

    results: list[np.ndarray | BaseException] = dataclasses.field(default_factory=list)
    sizes: dict[str, list[int]] = dataclasses.field(
        default_factory=lambda: {"ok": [], "oom": []}
    )  # batch sizes that ran, and that ran out of memory
    padding_efficiency: float | None = None


def cap_after_out_of_memory(sizes: dict[str, list[int]]) -> int | None:
    """After a batch ran out of memory: the largest batch size that then ran, below the
    smallest that failed (None when nothing ran out of memory)."""
    failed = sizes["oom"]
    if not failed:
        return None
    smallest = min(failed)
    return max([n for n in sizes["ok"] if n < smallest], default=1)


class Gate:
    """Batches run side by side (`shared`); a reconfigure waits for the running ones and runs
    alone, and batches that come while it waits wait behind it."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._shared = 0
        self._alone = False
        self._waiting = 0  # reconfigures waiting: new batches wait behind them

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._alone and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            async with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        async with self._changed:
            self._waiting += 1
            await self._changed.wait_for(lambda: not self._alone and not self._shared)
            self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            async with self._changed:
                self._alone = False
                self._changed.notify_all()
