"""A CPU replica's cores, shared by the items it runs side by side, and the threads that run
them.

Measured on 2 cores (docs/performance.md, "Against piper's own server"): one item at a time
with two torch threads leaves the cores half used under load (the model's many small
operations wait at each other's thread barriers), and two one-thread items side by side leave
a lone item at one thread's speed. So a replica runs up to `workers` items at once, and the
torch threads are re-split at every stage of an item: a lone item gets them all.

Only one engine thread, the lead, ever runs with more than one torch thread. GNU OpenMP keeps
a team of worker threads for every thread that has run with more than one, and once it
manages more threads than there are cores it stops spinning between parallel regions: after
a second thread had run with two, a lone short sentence with two threads took 62 ms instead
of 42 (as slow as with one). Items go to the lead whenever it is free; the others run beside
it with one torch thread each, and the lead takes what they leave.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class CoreShare:
    """`threads` torch threads shared by the items running now (at most `workers`), re-split
    at every stage of an item (`apply`, called on the thread that runs it)."""

    def __init__(self, threads: int, workers: int) -> None:
        self.threads = threads
        self.workers = workers
        self._running = 0
        self._lock = threading.Lock()
        self._lead: int | None = None  # the one thread that may run with more than one

    @property
    def running(self) -> int:
        return self._running

    def lead_here(self) -> None:
        """The calling thread is the lead (see the module's docstring)."""
        self._lead = threading.get_ident()

    @contextmanager
    def item(self) -> Iterator[None]:
        """One item runs while inside: it counts toward the split."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def shares(self) -> list[int]:
        """Every thread count the lead can be given, most first (what to warm up for)."""
        return sorted({max(1, self.threads - n) for n in range(self.workers)}, reverse=True)

    def share(self) -> int:
        """Threads for the calling thread's item now: the lead takes what the others leave."""
        if self.workers == 1:
            return self.threads
        if threading.get_ident() != self._lead:
            return 1
        return max(1, self.threads - max(0, self._running - 1))

    def apply(self, fixed: bool = False) -> int:
        """Set this thread's torch threads to its share now, or with `fixed` to what an item
        gets whatever runs beside it (one thread where items run side by side); returns it."""
        import torch

        # NOTE: torch reads its process-wide thread count into a thread the first time the
        # thread runs an operation, over what was set there before: read it first, so the
        # count set below is the one this thread keeps.
        torch.get_num_threads()
        share = (self.threads if self.workers == 1 else 1) if fixed else self.share()
        if torch.get_num_threads() != share:
            torch.set_num_threads(share)
        return share


class EngineThreads:
    """The lead engine thread (loading, settings, and items whenever it is free) and
    `workers - 1` threads beside it; each thread starts with `setup(torch threads)`."""

    def __init__(
        self, workers: int, threads: int | None, cores: CoreShare | None, setup: Callable
    ) -> None:
        def lead() -> None:
            setup(threads)
            if cores is not None:
                cores.lead_here()

        name = "chorus-engine"
        self._lead = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=lead)
        self._side = (
            ThreadPoolExecutor(workers - 1, f"{name}-side", initializer=setup, initargs=(1,))
            if workers > 1
            else None
        )
        self._busy: Future[Any] | None = None  # the lead's work, until it is done

    def on_lead(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future = self._busy = self._lead.submit(fn, *args)
        # NOTE: not kept once done: a failed call's traceback holds what it had, such as a
        # batch's device memory after an out-of-memory error.
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        if self._busy is future:
            self._busy = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the lead if it is free, else on a thread beside it."""
        if self._side is None or self._busy is None:
            return await asyncio.wrap_future(self.on_lead(fn, *args))
        return await asyncio.wrap_future(self._side.submit(fn, *args))

    def shutdown(self) -> None:
        for pool in (self._lead, self._side):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
