"""A CPU replica's cores, shared by the items it runs side by side."""

from __future__ import annotations

import threading

import pytest
import torch

from serve_app.model.cores import CoreShare, one_thread

pytestmark = pytest.mark.timeout(60)


def test_a_lone_item_gets_a_helper_and_items_side_by_side_get_none() -> None:
    cores = CoreShare(2)
    try:
        with cores.item():
            helper = cores.helpers()
            assert helper is not None and helper.submit(lambda: 3).result(timeout=10) == 3
            with cores.item():  # a second item: each has a core of its own
                assert cores.running == 2 and cores.helpers() is None
        assert cores.running == 0
        assert CoreShare(1).helpers() is None  # no other core
    finally:
        cores.close()


def test_an_engine_thread_keeps_one_torch_thread() -> None:
    seen: list[int] = []

    def fresh() -> None:
        # NOTE: a fresh thread, as the replica's engine threads are: torch's process-wide
        # count must not override it on the thread's first operation.
        one_thread()
        torch.ones(4).sum()
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        thread = threading.Thread(target=fresh)
        thread.start()
        thread.join(10)
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
