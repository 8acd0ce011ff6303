"""The door: every speech request is admitted or refused here, at once, before any work.

In order: the key's lane (403), its requests in progress and token buckets (429), then the
server's room: requests in progress, admitted work against `max_backlog_s`, and the request's
own deadline against the estimated finish (503). Each refusal carries a Retry-After computed
from the measured drain rate. Nothing a refused request asked for reaches a model replica.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.config import AppConfig
from serve_app.errors import Forbidden, Overloaded, RateLimited, retry_after
from serve_app.model.engines.base import SynthesisItem
from serve_app.queue.backlog import Backlog, RequestWork
from serve_app.queue.keys import Client

# Busy seconds behind the measured drain rate before it may refuse a request.
MEASURED_BUSY_S = 2.0


class Admission:
    def __init__(self, config: AppConfig, backlog: Backlog) -> None:
        self.config = config
        self.backlog = backlog

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
        deadline_s: float,
        send: Callable[[SynthesisItem], Awaitable[Any]],
    ) -> RequestWork:
        """Admit a request (its work then counts until `close()`), or raise 429/503."""
        cap = client.limits.max_concurrent
        if cap is not None and self.backlog.per_client.get(client.name, 0) >= cap:
            raise RateLimited(
                f"this API key already has {cap} requests in progress, its limit",
                code="too_many_concurrent_requests",
                headers=retry_after(self._first_finish_s(client.name)),
            )
        wait = client.rate_wait_s(chars)
        if wait > 0:
            raise RateLimited(
                f"this API key's rate limit is reached; retry in {wait:.1f} s",
                headers=retry_after(wait),
            )
        self._check_room(lane, chars, deadline_s, client.name)
        client.charge(chars)
        return self.backlog.request(send, lane, client.name, client.weight, chars)

    def _check_room(self, lane: str, chars: int, deadline_s: float, client: str) -> None:
        backlog = self.backlog
        if backlog.requests >= self.config.max_active_requests:
            raise Overloaded(
                "the server is at its limit of requests in progress; retry later",
                headers=retry_after(self._first_finish_s()),
            )
        rate = backlog.rate(MEASURED_BUSY_S)
        if rate is None:
            return  # too little has drained for an honest estimate: the deadline still holds
        phonemes = round(chars * backlog.phonemes_per_char)
        queue_s = backlog.remaining(backlog.lanes_through(lane)) / rate
        over = queue_s + phonemes / rate - self.config.max_backlog_s
        if queue_s > 0 and over > 0:
            raise Overloaded(
                f"the queue is full ({queue_s:.0f} s of work ahead); retry later",
                headers=retry_after(min(over, queue_s)),
            )
        finish = backlog.finish_s(lane, phonemes, rate, client) or 0.0
        if finish > deadline_s:
            raise Overloaded(
                f"this request would take about {finish:.1f} s, past its deadline of "
                f"{deadline_s:g} s; retry later or allow more time",
                code="deadline_unmeetable",
                headers=retry_after(finish - deadline_s),
            )

    def _first_finish_s(self, client: str | None = None) -> float | None:
        """When one request in progress (of `client`) should finish, all sharing the model."""
        rate = self.backlog.rate()
        works = [w for w in self.backlog.active if client is None or w.client == client]
        if rate is None or not works:
            return None
        return min(w.remaining() for w in works) * len(self.backlog.active) / rate

    def retry_after_s(self) -> float | None:
        """When the model replicas' queues should have room again (for a BackPressureError)."""
        return self.backlog.state().wait_s()
