"""The door: every speech request is admitted or refused here, at once, before any of its work
(phonemization included).

In order: the client's lane (403); its requests in progress and token buckets (429), which
hold across ingress replicas (`queue.shared`: this replica enforces its share, and counts the
client's requests elsewhere); then the server's room: requests in progress, admitted work
against `max_backlog_s`, and the request's own deadline against its estimated finish (503).
Every estimate, Retry-After included, comes from the meter, which has a rate from the first
request on (the replicas' own probes).
"""

from __future__ import annotations

from serve_app.config import AppConfig
from serve_app.deadline import Deadline
from serve_app.errors import Forbidden, Overloaded, RateLimited
from serve_app.queue.backlog import Backlog, RequestWork
from serve_app.queue.keys import Client
from serve_app.queue.shared import STALE_AFTER, SharedLimits


class Door:
    def __init__(
        self, config: AppConfig, backlog: Backlog, shared: SharedLimits | None = None
    ) -> None:
        self.config = config
        self.backlog = backlog
        self.meter = backlog.meter
        self.shared = shared  # the other ingress replicas' view of each client's limits

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

    def admit(self, client: Client, lane: str, chars: int, deadline: Deadline) -> RequestWork:
        """Admit a request (its work then counts until `close()`), or raise 429/503."""
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
                retry_after_s=self.first_finish_s(client.name),
            )
        wait = client.rate_wait_s(chars)
        if wait > 0:
            raise RateLimited(
                f"this client's rate limit is reached; retry in {max(wait, 0.1):.1f} s",
                retry_after_s=wait,
            )
        self._check_room(lane, chars, deadline, client.name)
        client.charge(chars)
        return self.backlog.request(lane, client.name, client.weight, chars)

    def _check_room(self, lane: str, chars: int, deadline: Deadline, client: str) -> None:
        backlog, meter = self.backlog, self.meter
        if backlog.requests >= self.config.max_active_requests:
            raise Overloaded(
                "the server is at its limit of requests in progress; retry later",
                retry_after_s=self.first_finish_s(),
            )
        if not meter.can_refuse():
            return  # no replica profile and too little drained: the deadline still holds
        phonemes = meter.phonemes(chars)
        queue_s = meter.seconds(backlog.remaining(backlog.lanes_through(lane))) or 0.0
        own_s = meter.seconds(phonemes) or 0.0
        over = queue_s + own_s - self.config.max_backlog_s
        if queue_s > 0 and over > 0:
            raise Overloaded(
                f"the queue is full ({queue_s:.0f} s of work ahead); retry later",
                retry_after_s=min(over, queue_s),
            )
        finish = meter.seconds(*backlog.ahead_of_new(lane, phonemes, client)) or 0.0
        left = deadline.left_s()
        if finish > left:
            raise Overloaded(
                f"this request would take about {finish:.1f} s, past its deadline of "
                f"{deadline.seconds:g} s; retry later or allow more time",
                code="deadline_unmeetable",
                retry_after_s=finish - left,
            )

    def first_finish_s(self, client: str | None = None) -> float | None:
        """When one request in progress (of `client`) should finish, all sharing the model."""
        works = [w for w in self.backlog.active if client is None or w.client == client]
        if not works:
            return None
        return self.meter.seconds(min(w.remaining() for w in works) * len(self.backlog.active))

    def retry_after_s(self) -> float | None:
        """When the model replicas' queues should have room again (for a BackPressureError)."""
        return self.meter.seconds(self.backlog.state().phonemes)
