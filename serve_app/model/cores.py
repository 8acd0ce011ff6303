"""A CPU replica's cores, shared by the items it runs side by side.

Measured on 2 cores (docs/performance.md, "Items side by side"): one item at a time with two
torch threads leaves the cores half used under load (the model's many small operations wait
at each other's thread barriers), and two one-thread items side by side leave a lone item at
one thread's speed. So a replica runs up to `workers` items at once, and each item's stages
take an even share of the threads: a lone item all of them, two items one each.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CoreShare:
    """`threads` torch threads split evenly among the items running now (at most `workers`),
    re-split at every stage of an item (`apply`, called on the thread that runs it)."""

    def __init__(self, threads: int, workers: int) -> None:
        self.threads = threads
        self.workers = workers
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running

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
        """Every thread count an item can be given, most first (what to warm up for)."""
        return sorted({max(1, self.threads // n) for n in range(1, self.workers + 1)}, reverse=True)

    def share(self) -> int:
        """Threads for one running item now."""
        return max(1, self.threads // max(1, self._running))

    def least(self) -> int:
        """Threads of one item when every worker runs one."""
        return max(1, self.threads // self.workers)

    def apply(self, fixed: bool = False) -> int:
        """Set this thread's torch threads to its share now, or with `fixed` to the `least`
        share whatever runs beside it; returns the count."""
        import torch

        # NOTE: torch reads its process-wide thread count into a thread the first time the
        # thread runs an operation, over what was set there before: read it first, so the
        # count set below is the one this thread keeps.
        torch.get_num_threads()
        share = self.least() if fixed else self.share()
        if torch.get_num_threads() != share:
            torch.set_num_threads(share)
        return share
