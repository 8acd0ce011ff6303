"""Every "how long" the server says, in one place: work in the backlog (phoneme ids) turned
into seconds at the meter's rate. The door judges room and deadlines with it, `/v1/queue`
and the SSE queue event report it, and a 503 or 429 takes its Retry-After from it. Each
answer is None while there is no rate to judge by (`Meter.seconds`)."""

from __future__ import annotations

from serve_app.queue.backlog import Backlog

# NOTE: the speed assumed while no replica has measured its own (Retry-After jitter and the
# first window's time only): about one 2-core CPU replica of the packaged voice (1,154
# phonemes/s measured by its probe); a GPU replica is faster, so this errs wide.
COLD_PHONEMES_PER_S = 1000.0


class Estimates:
    def __init__(self, backlog: Backlog) -> None:
        self.backlog = backlog
        self.meter = backlog.meter

    def work_s(self, phonemes: int) -> float | None:
        """How long `phonemes` of work take at the current rate."""
        return self.meter.seconds(phonemes)

    def work_or_cold_s(self, phonemes: int) -> float:
        """The same, at the assumed cold speed while there is no rate yet."""
        seconds = self.meter.seconds(phonemes)
        return phonemes / COLD_PHONEMES_PER_S if seconds is None else seconds

    def wait_s(self, lane: str | None = None) -> float | None:
        """The work waiting or running here (in `lane`, or in all): what a request's place
        in the queue is worth."""
        return self.meter.seconds(self.backlog.state(lane).phonemes)

    def backlog_s(self, lane: str) -> float | None:
        """Admitted work still to do that goes before a new request in `lane` (lanes as
        urgent or more), against `max_backlog_s`."""
        backlog = self.backlog
        return self.meter.seconds(backlog.remaining(backlog.lanes_through(lane)))

    def new_request_s(self, lane: str, phonemes: int, client: str) -> float | None:
        """When a new request of `phonemes` from `client` in `lane` should finish: the work
        ahead of it at its share of the model, then its own."""
        return self.meter.seconds(*self.backlog.ahead_of_new(lane, phonemes, client))

    def first_finish_s(self, client: str | None = None) -> float | None:
        """When one request in progress (of `client`) should finish: a key's requests go in
        arrival order, and the keys with work share the model."""
        active = self.backlog.active
        works = [w for w in active if client is None or w.client == client]
        if not works:
            return None
        keys = len({w.client for w in active})
        return self.meter.seconds(min(w.remaining() for w in works) * keys)

    def room_s(self) -> float | None:
        """When the model replicas' queues should have room again (for a BackPressureError):
        all the work here done."""
        return self.meter.seconds(self.backlog.state().phonemes)
