"""Queue position, wait estimate and drain rate of the ingress's outstanding work."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.backlog import Backlog, RequestWork
from serve_app.engines.base import SynthesisItem

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def item(phonemes: int) -> SynthesisItem:
    return SynthesisItem("v", (1,) * phonemes, 1.0, 0.667, 0.8, 0)


class Response:
    """Like Ray's DeploymentResponse: cancelling its awaiter does not cancel the call."""

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __await__(self):
        return asyncio.shield(self.future).__await__()


class Replica:
    """Items finish when the test says so."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future] = []
        self.responses: list[Response] = []

    def send(self, _item: SynthesisItem) -> Response:
        self.futures.append(asyncio.get_running_loop().create_future())
        self.responses.append(Response(self.futures[-1]))
        return self.responses[-1]


def one_request(on_change=None) -> tuple[Clock, Replica, Backlog, RequestWork]:
    clock, replica = Clock(), Replica()
    backlog = Backlog(clock=clock, on_change=on_change)
    return clock, replica, backlog, backlog.request(replica.send)


def test_position_and_wait_come_from_work_ahead_and_measured_rate() -> None:
    async def run() -> None:
        clock, replica = Clock(), Replica()
        backlog = Backlog(clock=clock)
        early, late = backlog.request(replica.send), backlog.request(replica.send)
        assert late.ahead().items == 0 and late.ahead().wait_s() == 0.0
        first = [early(item(100)), early(item(50))]
        mine = late(item(10))
        assert (late.ahead().items, late.ahead().phonemes) == (2, 150)
        assert late.ahead().wait_s() is None  # nothing has finished: no honest estimate yet
        clock.now += 2.0
        replica.futures[0].set_result("audio")
        assert await first[0] == "audio"
        assert late.ahead().items == 1
        assert backlog.state().phonemes_per_s == pytest.approx(50.0)  # 100 phonemes in 2 s
        assert late.ahead().wait_s() == pytest.approx(1.0)  # 50 phonemes ahead at 50/s
        assert early.ahead().items == 0  # nothing is ahead of its own first item
        replica.futures[1].set_result("audio")
        replica.futures[2].set_result("audio")
        await asyncio.gather(first[1], mine)
        assert backlog.state().items == 0 and backlog.state().phonemes == 0
        with backlog.running(), backlog.running():
            assert backlog.requests == 2
        assert backlog.requests == 0

    asyncio.run(run())


def test_idle_time_does_not_slow_the_measured_rate() -> None:
    async def run() -> None:
        clock, replica, backlog, work = one_request()
        pending = work(item(100))
        clock.now += 1.0
        replica.futures[-1].set_result(None)
        await pending
        clock.now += 3600.0  # an idle hour
        pending = work(item(100))
        clock.now += 1.0
        replica.futures[-1].set_result(None)
        await pending
        assert backlog.state().phonemes_per_s == pytest.approx(100.0)

    asyncio.run(run())


def test_cancelled_work_leaves_the_queue_and_the_replica_call_is_cancelled() -> None:
    async def run() -> None:
        changes: list[tuple[int, bool]] = []
        clock, replica, backlog, work = one_request(lambda *change: changes.append(change))
        pending = work(item(100))
        await asyncio.sleep(0)
        clock.now += 5.0
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert replica.responses[0].cancelled
        assert backlog.state().items == 0
        assert backlog.state().phonemes_per_s is None  # dropped work drained nothing
        assert changes == [(1, False), (0, True)]  # what the in-flight and cancelled metrics see

    asyncio.run(run())


def test_failed_work_leaves_the_queue() -> None:
    async def run() -> None:
        replica = Replica()
        backlog = Backlog(clock=Clock())
        pending = backlog.request(replica.send)(item(10))
        replica.futures[0].set_exception(RuntimeError("boom"))
        with pytest.raises(RuntimeError):
            await pending
        assert backlog.state().items == 0

    asyncio.run(run())
