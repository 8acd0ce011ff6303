"""The ingress's queue: items wait for room in flight, lanes and fair shares decide who goes
next, and positions, drain rate and finish estimates come out of it (with its meter)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.model.engines.base import Synthesized
from serve_app.queue.backlog import Backlog, RequestWork
from tests.fakes import Clock, Replica, item, make_backlog, settle

pytestmark = pytest.mark.timeout(30)


def wait_s(backlog: Backlog, work: RequestWork) -> float | None:
    """The estimated wait before `work`'s first item."""
    return backlog.meter.seconds(work.ahead().phonemes)


def finish_s(backlog: Backlog, lane: str, phonemes: int, client: str) -> float | None:
    return backlog.meter.seconds(*backlog.ahead_of_new(lane, phonemes, client))


def one_request(on_change=None) -> tuple[Clock, Replica, Backlog, RequestWork]:
    clock, replica = Clock(), Replica()
    backlog = make_backlog(replica, clock, on_change=on_change)
    return clock, replica, backlog, backlog.request("interactive")


def test_position_and_wait_come_from_work_ahead_and_measured_rate() -> None:
    async def run() -> None:
        clock, replica = Clock(), Replica()
        backlog = make_backlog(replica, clock)
        early, late = backlog.request("interactive"), backlog.request("interactive")
        assert late.ahead().items == 0 and wait_s(backlog, late) == 0.0
        first = [early(item(100)), early(item(50))]
        mine = late(item(10))
        assert (late.ahead().items, late.ahead().phonemes) == (2, 150)
        assert wait_s(backlog, late) is None  # nothing has finished: no honest estimate yet
        await replica.finish_next(backlog, clock, 2.0)
        assert await first[0] == "audio"
        assert late.ahead().items == 1
        assert backlog.meter.rate() == pytest.approx(50.0)  # 100 phonemes in 2 s
        assert wait_s(backlog, late) == pytest.approx(1.0)  # 50 phonemes ahead at 50/s
        assert early.ahead().items == 0  # nothing is ahead of its own first item
        replica.futures[1].set_result("audio")
        replica.futures[2].set_result("audio")
        await asyncio.gather(first[1], mine)
        assert backlog.state().items == 0 and backlog.state().phonemes == 0
        assert backlog.requests == 2
        early.close(completed=True)
        late.close()
        late.close()  # twice is harmless
        assert backlog.requests == 0 and not backlog.per_client

    asyncio.run(run())


def test_only_capacity_items_reach_the_replicas_and_a_waiting_item_given_up_never_does() -> None:
    async def run() -> None:
        clock, replica = Clock(), Replica()
        backlog = make_backlog(replica, clock, 2)
        work = backlog.request("interactive")
        pending = [work(item(10, seed=i)) for i in range(4)]
        await settle()
        assert replica.sent == [0, 1] and backlog.in_flight == 2
        assert backlog.waiting("interactive") == 2
        pending[2].cancel()
        await replica.finish_next(backlog, clock)
        assert replica.sent == [0, 1, 3]  # item 2 was dropped while it waited here
        await replica.finish_next(backlog, clock)
        await replica.finish_next(backlog, clock)
        assert [await p for p in (pending[0], pending[1], pending[3])] == ["audio"] * 3
        assert backlog.in_flight == 0 and backlog.state().items == 0

    asyncio.run(run())


def test_interactive_goes_first_and_batch_keeps_its_share() -> None:
    async def run() -> None:
        clock, replica = Clock(), Replica()
        backlog = make_backlog(replica, clock, 1, {"interactive": 0.75, "batch": 0.25})
        bulk = backlog.request("batch")
        for i in range(10):
            bulk(item(10, seed=100 + i))
        await settle()  # item 100 is in flight before anything interactive arrives
        chat = backlog.request("interactive")
        for i in range(9):
            chat(item(10, seed=i))
        for _ in range(12):
            await replica.finish_next(backlog, clock)
        # 3 interactive items per batch item while both wait: batch never starves; once
        # interactive work is done, batch has the model to itself
        assert replica.sent == [100, 0, 1, 2, 101, 3, 4, 5, 102, 6, 7, 8, 103]

    asyncio.run(run())


def test_a_light_key_gets_an_equal_share_against_a_heavy_one() -> None:
    async def run() -> None:
        clock, replica = Clock(), Replica()
        backlog = make_backlog(replica, clock, 1)
        heavy = [backlog.request("interactive", client="heavy") for _ in range(10)]
        for n, work in enumerate(heavy):
            for i in range(3):
                work(item(10, seed=1000 + 10 * n + i))
        light = backlog.request("interactive", client="light")
        for i in range(3):
            light(item(10, seed=i))
        for _ in range(8):
            await replica.finish_next(backlog, clock)
        served = replica.sent[:8]
        assert [s for s in served if s < 1000] == [0, 1, 2], served  # all 3 in the first 8
        # the heavy key's requests share its half: its first 4 items come from 4 requests
        assert len({(s - 1000) // 10 for s in served if s >= 1000}) >= 4, served

    asyncio.run(run())


async def order_of_a_burst_then_a_stream(streamed: bool) -> list[int]:
    """The seeds in the order they reach the replica: 3 requests of 3 sentences at once
    (seeds 10n..10n+2; streams or whole files), then a stream of 2 sentences (30, 31) 1 s later."""
    clock, replica = Clock(), Replica()
    backlog = make_backlog(replica, clock, 1)
    for n in range(3):
        work = backlog.request("interactive", streamed=streamed)
        for i in range(3):
            work(item(10, seed=10 * n + i))
    clock.now += 1
    late = backlog.request("interactive")
    late(item(10, seed=30))
    late(item(10, seed=31))
    for _ in range(11):
        await replica.finish_next(backlog, clock, 0.1)
    return replica.sent


def test_a_keys_first_sentences_go_first_then_each_streams_next_one() -> None:
    # every first sentence that came within FOLLOW_ON_S goes before any later sentence; then,
    # with no audio heard yet, every stream's second sentence before any stream's third
    sent = asyncio.run(order_of_a_burst_then_a_stream(streamed=True))
    assert sent == [0, 10, 20, 30, 1, 11, 21, 2, 12, 22, 31]


def test_a_streams_next_sentence_goes_when_its_listener_will_need_it() -> None:
    async def run() -> list[int]:
        clock, replica = Clock(), Replica()
        backlog = make_backlog(replica, clock, 1)
        long, short = backlog.request("interactive"), backlog.request("interactive")
        long(item(400, seed=0))  # 10 s of audio
        short(item(10, seed=10))  # 0.25 s
        await replica.finish_next(backlog, clock, 0.1)
        await replica.finish_next(backlog, clock, 0.1)
        long.heard(10.0)
        short.heard(0.25)
        backlog.request("interactive")(item(10, seed=99))  # in flight while the rest queue
        long(item(10, seed=1))  # needed in 10 s
        short(item(10, seed=11))  # needed in 0.25 s: late already, with the margin
        new = backlog.request("interactive")
        new(item(10, seed=20))  # its first audio: due now
        for _ in range(4):
            await replica.finish_next(backlog, clock, 0.1)
        return replica.sent

    assert asyncio.run(run()) == [0, 10, 99, 11, 20, 1]


def test_a_keys_whole_file_answers_go_in_arrival_order_and_a_new_streams_start_first() -> None:
    # the first file's answer is done after 3 items, not 9 (nobody listens to a file's first
    # sentence alone); the stream's first sentence goes ahead of the files that came less
    # than FOLLOW_ON_S before it
    sent = asyncio.run(order_of_a_burst_then_a_stream(streamed=False))
    assert sent == [0, 30, 1, 2, 10, 11, 12, 20, 21, 22, 31]


def test_position_counts_one_fair_round_not_everything_queued() -> None:
    async def run() -> None:
        clock, replica = Clock(), Replica()
        backlog = make_backlog(replica, clock, 1)
        heavy = [backlog.request("interactive", client="heavy") for _ in range(3)]
        for work in heavy:
            for _ in range(3):
                work(item(10))
        await settle()  # 1 in flight, 8 waiting: 2 first sentences, then 6 later ones
        clock.now += 1
        mate = backlog.request("interactive", client="heavy")
        mate(item(10))
        # the 2 waiting first sentences of its key, due before its own, + the one in flight
        assert mate.ahead().items == 1 + 2
        light = backlog.request("interactive", client="light")
        light(item(10, seed=7))
        assert light.ahead().items == 1 + 1  # the heavy key gets one turn before it
        batch = backlog.request("batch", client="light")
        batch(item(10))
        assert batch.ahead().items == 1 + 10  # every interactive item goes first
        assert backlog.state().items == 12
        for _ in range(3):
            await replica.finish_next(backlog, clock)
        assert 7 in replica.sent[1:3]  # it went within two turns, as estimated

    asyncio.run(run())


def test_finish_estimate_counts_the_keys_earlier_requests_and_other_keys_turns() -> None:
    async def run() -> None:
        clock, replica = Clock(), Replica()
        backlog = make_backlog(replica, clock, 1)
        work = backlog.request("interactive", chars=0)
        work(item(100))
        await replica.finish_next(backlog, clock, 1.0)  # rate: 100 phonemes/s
        backlog.meter.phonemes_per_char = 1.6
        long = backlog.request("interactive", client="a", chars=1000)  # 1600 phonemes estimated
        short = backlog.request("interactive", client="a", chars=10)  # 16
        assert (long.remaining(), short.remaining()) == (1600, 16)
        # a new 50-phoneme request of key a goes after a's earlier requests
        assert finish_s(backlog, "interactive", 50, "a") == pytest.approx(16.66)
        # of key b: its own 50, while key a takes as many turns
        assert finish_s(backlog, "interactive", 50, "b") == pytest.approx(1.0)
        bulk = backlog.request("batch", client="a", chars=100)
        # batch work takes its share from interactive work, and waits for all of it
        assert finish_s(backlog, "interactive", 50, "b") == pytest.approx(1.0 / 0.9)
        assert finish_s(backlog, "batch", 50, "b") == pytest.approx((1616 + 100) / 100)
        assert bulk.remaining() == 160
        assert backlog.remaining({"interactive"}) == 1616

    asyncio.run(run())


def test_phonemes_per_character_is_learnt_from_finished_requests() -> None:
    async def run() -> None:
        clock, replica = Clock(), Replica()
        backlog = make_backlog(replica, clock)
        for _ in range(20):
            work = backlog.request("interactive", chars=100)
            pending = work(item(300))
            await replica.finish_next(backlog, clock)
            await pending
            work.close(completed=True)
        assert backlog.meter.phonemes_per_char == pytest.approx(3.0, rel=0.02)

    asyncio.run(run())


def test_the_models_own_time_sets_the_rate_when_round_trips_dominate() -> None:
    async def run() -> None:
        clock, replica, backlog, work = one_request()
        pending = work(item(100))
        await settle()
        clock.now += 1.0  # a second of busy time, of which the model took 0.25 s
        replica.futures[0].set_result(Synthesized(np.zeros(1), queue_s=0.0, model_s=0.25))
        assert (await pending).model_s == 0.25
        assert backlog.meter.rate() == pytest.approx(400.0)  # not 100: the round trip is not work
        assert not backlog.meter.can_refuse()  # too little seen to refuse anyone by

    asyncio.run(run())


def test_idle_time_does_not_slow_the_measured_rate() -> None:
    async def run() -> None:
        clock, replica, backlog, work = one_request()
        pending = work(item(100))
        await replica.finish_next(backlog, clock, 1.0)
        await pending
        clock.now += 3600.0  # an idle hour
        pending = work(item(100))
        await replica.finish_next(backlog, clock, 1.0)
        await pending
        assert backlog.meter.rate() == pytest.approx(100.0)

    asyncio.run(run())


def test_cancelled_work_leaves_the_queue_and_the_replica_call_is_cancelled() -> None:
    async def run() -> None:
        changes: list[tuple[int, bool]] = []
        clock, replica, backlog, work = one_request(lambda *change: changes.append(change))
        pending = work(item(100))
        await settle()
        clock.now += 5.0
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert replica.responses[0].cancelled
        assert backlog.state().items == 0 and backlog.in_flight == 0
        assert backlog.meter.rate() is None  # dropped work drained nothing
        assert changes == [(1, False), (0, True)]  # what the in-flight and cancelled metrics see

    asyncio.run(run())


def test_failed_work_leaves_the_queue() -> None:
    async def run() -> None:
        replica = Replica()
        backlog = make_backlog(replica, Clock())
        pending = backlog.request("interactive")(item(10))
        await settle()
        replica.futures[0].set_exception(RuntimeError("boom"))
        with pytest.raises(RuntimeError):
            await pending
        assert backlog.state().items == 0 and backlog.in_flight == 0

    asyncio.run(run())


def test_a_client_with_nothing_in_progress_is_forgotten_by_the_scheduler() -> None:
    async def run() -> None:
        clock, replica = Clock(), Replica()
        backlog = make_backlog(replica, clock, 1)
        for n in range(50):  # an open server sees many addresses, each briefly
            work = backlog.request("interactive", client=f"192.0.2.{n}")
            work(item(10, seed=n))
            await replica.finish_next(backlog, clock)
            work.close(completed=True)
        assert backlog._queue.children == {}  # no client left, nor their lane

    asyncio.run(run())
