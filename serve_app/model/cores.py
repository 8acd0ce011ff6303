"""A CPU replica's cores, shared by the items it runs side by side.

Measured on 2 cores (docs/performance.md, "Against piper's own server"): one item at a time
with two torch threads leaves the cores half used under load (the model's many small
operations wait at each other's thread barriers), and two one-thread items side by side make
more audio. So a replica runs up to `cpu_side_by_side` items at once, one per engine thread,
each with one torch thread; a lone item's decoder takes a helper thread for part of its work.

NOTE: every stage runs with one torch thread whatever runs beside it, because a thread count
moves a convolution's sums (2-3e-7 on the decoder's output here, which tips 16-bit samples
and, in the phoneme stage, can tip a duration's rounding): an item's samples are then the
same alone or beside others, to the bit. A helper runs whole decoder blocks at one thread
too (`engines.decoder`), so it changes how soon, never what.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


class CoreShare:
    """`threads` cores shared by the items running at once, one torch thread each, and
    `threads - 1` helpers a lone item may use."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._running = 0
        self._lock = threading.Lock()
        self._helpers: ThreadPoolExecutor | None = None

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

    def helpers(self) -> ThreadPoolExecutor | None:
        """Threads for a lone item's decoder now, None while other items run (they have the
        other cores) or where there is no other core."""
        if self.threads < 2 or self._running > 1:
            return None
        if self._helpers is None:
            self._helpers = ThreadPoolExecutor(
                self.threads - 1, "chorus-engine-helper", initializer=one_thread
            )
        return self._helpers

    def close(self) -> None:
        if self._helpers is not None:
            self._helpers.shutdown(wait=False, cancel_futures=True)


def one_thread() -> None:
    """Run this thread's torch operations with one thread.

    NOTE: torch reads its process-wide thread count into a thread the first time the thread
    runs an operation, over what was set there before: read it first, so the count set here
    is the one the thread keeps."""
    import torch

    torch.get_num_threads()
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
