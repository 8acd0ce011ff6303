"""A model replica that runs out of memory or wedges: requests still get their own audio, and
only a sentence that can never fit fails (a test-only fault wrapper around the fake engine)."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import FaultyEngine
from tests.helpers import replica_stats
from tests.integration.conftest import assert_envelope, fake_app, speak_all

pytestmark = pytest.mark.timeout(180)

SHORT = [f"Number {n} is here." for n in ("one", "two", "three", "four", "five", "six")]
LONG = "This single sentence goes on and on " + "and on " * 30 + "until it ends."


def test_out_of_memory_splits_batches_lowers_the_cap_and_fails_only_what_cannot_fit(
    server: str,
) -> None:
    engine = (
        FaultyEngine,
        {"inner_kwargs": {"delay_s": 0.2}, "fits_items": 2, "fits_phonemes": 80},
    )
    batching = {"max_batch_size": 8, "batch_wait_timeout_s": 0.3}
    with fake_app(server, "oom", engine=engine, user_config=batching) as url:
        seeds = list(range(100, 106))
        together = asyncio.run(speak_all(url, SHORT, seeds))
        alone = [
            asyncio.run(speak_all(url, [t], [s]))[0] for t, s in zip(SHORT, seeds, strict=True)
        ]
        assert [r.status_code for r in together] == [200] * 6, [r.text for r in together]
        after_split = replica_stats("oom")
        # A sentence too long to fit even alone: 413 for it, audio for the others.
        mixed = asyncio.run(speak_all(url, [LONG, *SHORT[1:3]], [7, 8, 9]))
        after_long = replica_stats("oom")
    # The 6-item batch ran out of memory; its halves (3) too; then pairs fit.
    assert after_split["out_of_memory"] >= 2
    assert after_split["max_batch_size"] == 2
    # Each request got its own audio: the same as its seed and text give alone.
    assert [r.content for r in together] == [r.content for r in alone]
    assert len({r.content for r in together}) > 1
    error = assert_envelope(mixed[0], 413)
    assert (error["code"], error["param"]) == ("sentence_too_large", "input")
    assert [r.status_code for r in mixed[1:]] == [200, 200]
    assert after_long["out_of_memory"] > after_split["out_of_memory"]


def test_a_wedged_replica_fails_its_health_check_and_its_items_run_on_the_next(
    server: str, tmp_path
) -> None:
    flag = tmp_path / "hung"
    engine = (FaultyEngine, {"hang_once": str(flag)})
    with fake_app(
        server,
        "wedged",
        engine=engine,
        user_config={"stall_timeout_s": 1.0},
        health_check_period_s=1,
        health_check_timeout_s=5,
        graceful_shutdown_timeout_s=1,
    ) as url:
        before = replica_stats("wedged")
        responses = asyncio.run(speak_all(url, SHORT[:2], [1, 2]))
        after = replica_stats("wedged")
    assert flag.exists()  # the first batch did hang
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    assert after["replica"] != before["replica"]
