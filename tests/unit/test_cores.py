"""A CPU replica's threads, split among the items it runs side by side."""

from __future__ import annotations

import threading

import pytest
import torch

from serve_app.model.cores import CoreShare

pytestmark = pytest.mark.timeout(60)


def test_every_count_an_item_can_get_is_warmed_for() -> None:
    assert CoreShare(2, 2).shares() == [2, 1]
    assert CoreShare(8, 2).shares() == [8, 4]
    assert CoreShare(2, 3).shares() == [2, 1]
    assert CoreShare(4, 1).shares() == [4]
    assert CoreShare(8, 2).least() == 4


def test_a_lone_item_gets_every_thread_and_two_items_one_each() -> None:
    cores = CoreShare(2, 2)
    both_in = threading.Barrier(2, timeout=10)
    seen: dict[str, list[int]] = {}

    def item(name: str, partner: bool) -> None:
        # NOTE: a fresh thread, as the replica's engine threads are: torch's process-wide
        # count (set by the other thread) must not override the share on its first op.
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
    assert seen == {"alone": [2, 2], "a": [1, 1], "b": [1, 1]}
    assert cores.running == 0
