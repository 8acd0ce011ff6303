"""A CPU replica's threads, split among the items it runs side by side."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from serve_app.model.cores import CoreShare, EngineThreads

pytestmark = pytest.mark.timeout(60)


def test_every_count_the_lead_can_get_is_warmed_for() -> None:
    assert CoreShare(2, 2).shares() == [2, 1]
    assert CoreShare(8, 2).shares() == [8, 7]
    assert CoreShare(4, 4).shares() == [4, 3, 2, 1]
    assert CoreShare(2, 3).shares() == [2, 1]
    assert CoreShare(4, 1).shares() == [4]


def test_the_lead_alone_gets_every_thread_and_two_items_one_each() -> None:
    cores = CoreShare(2, 2)
    both_in = threading.Barrier(2, timeout=10)
    seen: dict[str, list[int]] = {}

    def item(name: str, partner: bool) -> None:
        # NOTE: a fresh thread, as the replica's engine threads are: torch's process-wide
        # count (set by the other thread) must not override the share on its first op.
        if name in ("alone", "a"):
            cores.lead_here()
        with cores.item():
            if partner:
                both_in.wait()
            counts = [cores.apply()]
            torch.ones(4).sum()  # the thread's first operation
            counts.append(torch.get_num_threads())
            if partner:
                both_in.wait()
        seen[name] = counts

    before = torch.get_num_threads()
    try:
        # NOTE: before any lead is named (a lead's thread id may be reused once it ends)
        beside = threading.Thread(target=item, args=("beside, alone", False))
        beside.start()
        beside.join()
        alone = threading.Thread(target=item, args=("alone", False))
        alone.start()
        alone.join()
        pair = [threading.Thread(target=item, args=(n, True)) for n in ("a", "b")]
        for t in pair:
            t.start()
        for t in pair:
            t.join()
    finally:
        torch.set_num_threads(before)
    # NOTE: only the lead ever runs with more than one thread (see serve_app.model.cores)
    assert seen == {"alone": [2, 2], "a": [1, 1], "b": [1, 1], "beside, alone": [1, 1]}
    assert cores.running == 0


def test_items_go_to_the_lead_whenever_it_is_free() -> None:
    cores = CoreShare(2, 2)
    threads = EngineThreads(2, 2, cores, lambda count: None)
    release = threading.Event()

    def where(wait: bool) -> bool:
        if wait:
            release.wait(10)
        return threading.current_thread().name.startswith("chorus-engine_")  # the lead's

    async def main() -> list[bool]:
        first = asyncio.ensure_future(threads.run(where, True))  # holds the lead
        await asyncio.sleep(0.05)
        second = await threads.run(where, False)  # beside it
        release.set()
        done = await first
        third = await threads.run(where, False)  # the lead again, free
        return [done, second, third]

    try:
        assert asyncio.run(asyncio.wait_for(main(), 20)) == [True, False, True]
    finally:
        threads.shutdown()
