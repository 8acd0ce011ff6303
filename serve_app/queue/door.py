"""The door: every speech request is admitted or refused here, at once, before any of its work
(phonemization included).

In order: the client's lane (403); its requests in progress and token buckets (429), which
hold across ingress replicas (`queue.shared`: this replica enforces its share, and counts the
client's requests elsewhere); then the server's room: requests in progress, admitted work
against `max_backlog_s`, and the request's own deadline against its estimated finish (503).
Every estimate comes from the meter, which has a rate from the first request on (the
replicas' own probes).

While no model replica can take work yet (a fresh deploy, or every replica lost) and while no
replica has measured its speed, the door stands behind only a first window of work: what one
replica's first dispatch window holds in typical sentences (or one request alone), and only if
a replica is expected to take work soon enough; the rest get 503 `model_loading` with a
Retry-After of when one should be running.

A 503's Retry-After is when room for the request should exist, plus a jitter that spreads the
herd: uniform in [0, n x t), with n the requests refused in the last `REFUSED_WINDOW_S` and t
the time this request's own work takes at the current rate. If every client refused lately
came back, their work would take about that long: told so, they return spread over it instead
of in the same second.
"""

from __future__ import annotations

import random
from collections import deque

from serve_app.clients import Client
from serve_app.config import AppConfig
from serve_app.deadline import Deadline
from serve_app.errors import Forbidden, Overloaded, RateLimited
from serve_app.model.profile import PROBE_PHONEMES
from serve_app.queue.backlog import Backlog, RequestWork
from serve_app.queue.estimates import Estimates
from serve_app.queue.shared import STALE_AFTER, SharedLimits

REFUSED_WINDOW_S = 10.0  # refusals this recent spread the Retry-After of the next


class Door:
    def __init__(
        self,
        config: AppConfig,
        backlog: Backlog,
        shared: SharedLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.backlog = backlog
        self.meter = backlog.meter
        self.estimates = Estimates(backlog)
        self.shared = shared  # the other ingress replicas' view of each client's limits
        self._refused: deque[float] = deque()  # when recent 503s were given
        self._rng = rng or random.Random()

    def lane(self, client: Client, asked: str | None) -> str:
        """The lane a request runs in: the one it asked for, if its key may use it."""
        default = client.default_lane or (
            self.config.default_lane
            if self.config.default_lane in client.lanes
            else client.lanes[0]
        )
        lane = asked or default
        if lane not in client.lanes:
            raise Forbidden(
                f"this API key may not use the {lane!r} lane; allowed: {', '.join(client.lanes)}",
                param="priority",
                code="lane_not_allowed",
            )
        return lane

    def admit(
        self,
        client: Client,
        lane: str,
        chars: int,
        deadline: Deadline,
        streamed: bool = True,
        loading_s: float | None = None,
    ) -> RequestWork:
        """Admit a request (its work then counts until `close()`), or raise 429/503.
        `loading_s`: seconds until a model replica should take work, while none can."""
        client.asked += 1  # where a client's requests arrive decides its share of its limits
        if self.shared is not None and self.shared.refusing and client.limited:
            raise Overloaded(
                "this client's limits are shared by the cluster and cannot be checked now; "
                "retry later",
                code="limits_unavailable",
                retry_after_s=STALE_AFTER * self.shared.every_s,
            )
        cap = client.limits.max_concurrent
        here = self.backlog.per_client.get(client.name, 0)
        if cap is not None and here + client.elsewhere >= cap:
            raise RateLimited(
                f"this client already has {cap} requests in progress, its limit",
                code="too_many_concurrent_requests",
                retry_after_s=self.estimates.first_finish_s(client.name),
            )
        wait = client.rate_wait_s(chars)
        if wait > 0:
            raise RateLimited(
                f"this client's rate limit is reached; retry in {max(wait, 0.1):.1f} s",
                retry_after_s=wait,
            )
        self._check_room(lane, self.meter.phonemes(chars), deadline, client.name, loading_s)
        client.charge(chars)
        return self.backlog.request(lane, client.name, client.weight, chars, streamed)

    def _check_room(
        self, lane: str, phonemes: int, deadline: Deadline, client: str, loading_s: float | None
    ) -> None:
        backlog, estimates = self.backlog, self.estimates
        if backlog.requests >= self.config.max_active_requests:
            raise self._refuse(
                "the server is at its limit of requests in progress; retry later",
                phonemes,
                estimates.first_finish_s(),
            )
        if loading_s is not None or not self.meter.can_refuse():
            self._check_first_window(phonemes, deadline, loading_s)
            return
        queue_s = estimates.backlog_s(lane) or 0.0
        own_s = estimates.work_s(phonemes) or 0.0
        over = queue_s + own_s - self.config.max_backlog_s
        if queue_s > 0 and over > 0:
            raise self._refuse(
                f"the queue is full ({queue_s:.0f} s of work ahead); retry later",
                phonemes,
                min(over, queue_s),
            )
        finish = estimates.new_request_s(lane, phonemes, client) or 0.0
        left = deadline.left_s()
        if finish > left:
            raise self._refuse(
                f"this request would take about {finish:.1f} s, past its deadline of "
                f"{deadline.seconds:g} s; retry later or allow more time",
                phonemes,
                finish - left,
                code="deadline_unmeetable",
            )

    def _check_first_window(
        self, phonemes: int, deadline: Deadline, loading_s: float | None
    ) -> None:
        """No rate to judge by: a model replica is still loading (`loading_s` until it should
        take work), or none has measured its speed. Admit what one replica's first dispatch
        window holds in typical sentences (any one request while nothing else is admitted),
        if the replica should be taking work well within the backlog bound and the deadline."""
        wait = loading_s or 0.0
        window = self.config.items_in_flight * PROBE_PHONEMES
        admitted = self.backlog.remaining() + phonemes
        fits = not self.backlog.requests or admitted <= window
        bound = min(self.config.max_backlog_s, deadline.left_s())
        if fits and wait + self.estimates.work_or_cold_s(admitted) < bound:
            return
        if loading_s is None:
            message = "the model's speed is not measured yet; retry shortly"
        else:
            message = (
                f"the model is loading: no model replica is running yet (one is expected in "
                f"about {wait:.0f} s); retry then"
            )
        raise self._refuse(message, phonemes, wait, code="model_loading")

    def _refuse(
        self, message: str, phonemes: int, after_s: float | None, code: str = "overloaded"
    ) -> Overloaded:
        """A 503 with a Retry-After of `after_s` (when room for this request should exist)
        plus the herd's jitter (module docstring)."""
        now = self.meter.clock()
        recent = self._refused
        while recent and recent[0] < now - REFUSED_WINDOW_S:
            recent.popleft()
        recent.append(now)
        jitter = self._rng.uniform(0.0, len(recent) * self.estimates.work_or_cold_s(phonemes))
        return Overloaded(message, code=code, retry_after_s=(after_s or 0.0) + jitter)
