"""A request's sentence items: bounded look-ahead, strict order, cancellation when abandoned."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_app.deadline import Deadline
from serve_app.errors import DeadlineExceeded
from serve_app.model.engines.base import Synthesized
from serve_app.model.voices import VoiceInfo
from serve_app.speech.ordering import Voicing, item_seed, ordered_audio, paced, spoken
from serve_app.speech.text import Sentence

pytestmark = pytest.mark.timeout(30)

VOICE = VoiceInfo("v", None, 22050, "en", "en-us", {}, 1.0, 0.667, 0.8)  # type: ignore[arg-type]


class FakeReplica:
    """Records what was in flight; with `slow_after`, items after the first few take long."""

    def __init__(self, slow_after: int | None = None) -> None:
        self.slow_after = slow_after
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.submitted = []

    def submit(self, item):
        self.submitted.append(item)
        n = len(self.submitted)
        slow = self.slow_after is not None and n > self.slow_after
        # Later items finish first (0.05/n), so order must come from the caller, not timing.
        return asyncio.ensure_future(self._run(item, delay=30.0 if slow else 0.05 / n))

    async def _run(self, item, delay):
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(delay)
            return Synthesized(np.full(3, item.seed, dtype=np.float32), 0.0, delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


async def sentences(n: int):
    for i in range(n):
        yield Sentence(i, f"s{i}", (1, i + 3, 2))


def test_audio_comes_back_in_order_with_bounded_lookahead() -> None:
    replica = FakeReplica()
    voicing = Voicing(VOICE, 1.0, 42)

    async def run():
        return [s.index async for s, _ in ordered_audio(sentences(10), voicing, replica.submit, 3)]

    assert asyncio.run(run()) == list(range(10))
    assert replica.max_in_flight == 3


def test_window_starts_small_and_grows_with_each_sentence_delivered() -> None:
    replica = FakeReplica()
    voicing = Voicing(VOICE, 1.0, 42)

    async def run():
        in_flight = []  # items sent and not yet handed over, as each sentence is handed over
        async for sentence, _ in ordered_audio(sentences(12), voicing, replica.submit, 6, start=2):
            in_flight.append(len(replica.submitted) - sentence.index)
        return in_flight

    assert asyncio.run(run()) == [2, 3, 4, 5, 6, 6, 6, 5, 4, 3, 2, 1]


def test_abandoned_request_cancels_its_pending_items() -> None:
    replica = FakeReplica(slow_after=1)
    voicing = Voicing(VOICE, 1.0, 42)

    async def run():
        gen = ordered_audio(sentences(10), voicing, replica.submit, 4)
        await anext(gen)
        await gen.aclose()  # what a disconnect does to the consumer
        await asyncio.sleep(0.01)

    asyncio.run(run())
    assert len(replica.submitted) == 2  # the starting window
    assert replica.cancelled == 1 and replica.in_flight == 0


def test_seeds_are_per_sentence_and_reproducible() -> None:
    a = Voicing(VOICE, 2.0, 7)
    items = [a.item(Sentence(i, "", (1,))) for i in range(3)]
    assert len({it.seed for it in items}) == 3
    assert items[0].seed == item_seed(7, 0) == Voicing(VOICE, 1.0, 7).item(Sentence(0, "", ())).seed
    assert items[0].length_scale == pytest.approx(0.5)
    speaker = VOICE.speaker(None)
    assert Voicing.create(speaker, 1.0, None).seed != Voicing.create(speaker, 1.0, None).seed


def test_sentences_are_laid_out_with_a_pause_and_their_offsets() -> None:
    async def audio():
        yield Sentence(0, "a", (1, 2)), Synthesized(np.ones(10, np.float32), 0.5, 0.1)
        yield Sentence(1, "b", (1,)), Synthesized(np.ones(5, np.float32), 0.0, 0.1)

    async def run():
        return [part async for part in spoken(audio(), 100, 0.1)]

    first, second = asyncio.run(run())
    joined = np.concatenate([first.audio, second.audio])
    assert joined.tolist() == [1.0] * 10 + [0.0] * 10 + [1.0] * 5
    assert (first.start_s, first.end_s) == (0.0, 0.1)
    assert (second.start_s, second.end_s) == (0.2, 0.25)
    assert second.timing() == {"index": 1, "text": "b", "start_s": 0.2, "end_s": 0.25}
    assert (first.phonemes, first.queue_s, first.model_s) == (2, 0.5, 0.1)


async def slow_source(cleaned: list[str], delays: list[float]):
    try:
        for i, delay in enumerate(delays):
            await asyncio.sleep(delay)
            yield i
    finally:
        cleaned.append("source closed")


def test_paced_ticks_while_waiting_and_passes_items_through() -> None:
    async def run():
        return [x async for x in paced(slow_source([], [0.0, 0.35, 0.0]), 0.1, Deadline(10))]

    out = asyncio.run(run())
    assert [x for x in out if x is not None] == [0, 1, 2]
    assert 2 <= out.count(None) <= 4 and out.index(1) > out.index(None)


def test_paced_times_out_and_stops_its_source() -> None:
    cleaned: list[str] = []

    async def run():
        async for _ in paced(slow_source(cleaned, [0.0, 30.0]), None, Deadline(0.2)):
            pass

    with pytest.raises(DeadlineExceeded) as err:
        asyncio.run(run())
    assert err.value.status == 504 and "0.2 s" in err.value.message
    assert cleaned == ["source closed"]


def test_closing_paced_stops_its_source_and_errors_reach_the_consumer() -> None:
    cleaned: list[str] = []

    async def failing():
        yield 1
        raise RuntimeError("replica gone")

    async def run():
        stream = paced(slow_source(cleaned, [0.0, 30.0]), 0.05, Deadline(60))
        assert await anext(stream) == 0
        await stream.aclose()
        with pytest.raises(RuntimeError, match="replica gone"):
            async for _ in paced(failing(), None, Deadline(60)):
                pass

    asyncio.run(run())
    assert cleaned == ["source closed"]


def test_a_cancellation_from_below_ends_the_request_instead_of_hanging_it() -> None:
    async def cancelled_underneath():
        yield 1
        raise asyncio.CancelledError()  # e.g. a sentence's call cancelled by someone else

    async def run():
        got = []
        with pytest.raises(RuntimeError, match="cancelled"):
            async for x in paced(cancelled_underneath(), 0.05, Deadline(60)):
                got.append(x)
        return got

    got = asyncio.run(asyncio.wait_for(run(), 5))
    assert 1 in got
