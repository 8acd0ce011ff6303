"""Fair shares across ingress replicas: a light key whose requests all land in one replica
still gets its share of the model, through the board's boosts (`queue.boosts`)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from serve_app.clients import KeyStore
from serve_app.config import AppConfig
from serve_app.queue.boosts import MAX_BOOST, Boosts, Service
from serve_app.queue.shared import SharedLimits
from tests.fakes import Clock, FlakyBoard, Replica, item, make_backlog, settle

pytestmark = pytest.mark.timeout(60)

SEEDS = {"light": 1, "heavy": 2}


async def shares(placement: list[dict[str, int]], boosted: bool, items: int = 600) -> Counter:
    """Two ingress replicas (capacity 1 each) in front of one model that answers in arrival
    order; `placement[n]` is how many closed-loop clients of each key send one-sentence
    requests to replica n (a client stays with its replica, as Serve's proxy tends to keep
    it). Reports every 0.5 s of simulated time; the items each key got after the first
    quarter."""
    clock, model = Clock(), Replica()
    board = FlakyBoard(clock)
    backlogs = [make_backlog(model, clock, capacity=1) for _ in placement]
    shared = [
        SharedLimits(
            KeyStore(AppConfig()),
            dict,
            board,
            f"r{n}",
            0.5,
            "local",
            clock,
            service=backlog.take_service,
            on_boosts=backlog.set_boosts if boosted else lambda boosts: None,
        )
        for n, backlog in enumerate(backlogs)
    ]
    done: Counter[str] = Counter()

    async def client(backlog, key: str) -> None:
        while True:
            work = backlog.request("interactive", key)
            try:
                await work(item(20, SEEDS[key]))
            finally:
                work.close(completed=True)
            done[key] += 1

    tasks = [
        asyncio.create_task(client(backlog, key))
        for backlog, keys in zip(backlogs, placement, strict=True)
        for key, count in keys.items()
        for _ in range(count)
    ]
    await settle()
    counted: Counter[str] = Counter()
    for n in range(items):
        before = Counter(done)
        await model.finish_next(backlogs[0], clock, 0.05)
        if n >= items // 4:
            counted.update(done - before)
        if n % 10 == 0:
            for s in shared:
                await s.sync()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counted


def share(counted: Counter, key: str) -> float:
    return counted[key] / sum(counted.values())


def test_a_light_key_in_one_replica_gets_its_share_when_a_heavy_key_fills_both() -> None:
    placement = [{"light": 4, "heavy": 12}, {"heavy": 12}]
    alone = asyncio.run(shares(placement, boosted=False))
    together = asyncio.run(shares(placement, boosted=True))
    # each replica shares its own half: the light key gets half of one half
    assert share(alone, "light") == pytest.approx(0.25, abs=0.03), alone
    # with the boosts, close to its fair half (MAX_BOOST bounds it just below)
    assert share(together, "light") >= 0.44, together


def test_keys_in_every_replica_keep_equal_shares_with_the_boosts_on() -> None:
    counted = asyncio.run(shares([{"light": 2, "heavy": 12}, {"light": 2, "heavy": 12}], True))
    assert share(counted, "light") == pytest.approx(0.5, abs=0.05), counted


def test_boosts_stay_within_bounds_and_fade_when_a_client_stops_waiting() -> None:
    boosts = Boosts()
    starved = [{"a": Service(10, True), "b": Service(90, True)}, {"b": Service(100, True)}]
    for _ in range(30):
        current = boosts.update(starved)
    assert current["a"] == MAX_BOOST and current["b"] == 1 / MAX_BOOST
    for _ in range(10):
        current = boosts.update([{"b": Service(100, True)}, {}])
    assert current == {}  # nobody left to share with: every weight is its own again
    # one replica alone is fair already
    assert Boosts().update([{"a": Service(10, True), "b": Service(90, True)}]) == {}
    # a key's weight counts: twice the weight, twice the model time is its share
    weighted = [{"a": Service(50, True, 2.0), "b": Service(50, True)}, {"b": Service(100, True)}]
    assert Boosts().update(weighted)["a"] > 1
