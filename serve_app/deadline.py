"""A request's deadline: set once at arrival, read by the door (can the queue meet it?) and by
the speech pipeline (how long may it still wait?), and raising its own 504 when it passes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from serve_app.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    seconds: float  # what the request was given, from its arrival
    start: float = field(default_factory=time.monotonic)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.start

    def left_s(self) -> float:
        return self.seconds - self.elapsed_s()

    def exceeded(self) -> DeadlineExceeded:
        """The error to raise once it has passed."""
        return DeadlineExceeded(f"speech not finished within its deadline of {self.seconds:g} s")
