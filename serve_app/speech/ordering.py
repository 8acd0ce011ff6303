"""The stages of one request's audio: sentence items out with a growing look-ahead window,
ordered audio back, laid out in time, paced with heartbeats and the deadline, and cancelled
when abandoned."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from serve_app.deadline import Deadline
from serve_app.model.engines.base import SynthesisItem, Synthesized
from serve_app.model.voices import Speaker, VoiceInfo
from serve_app.speech import audio
from serve_app.speech.text import Sentence

# submit(item) -> an awaitable with .cancel(), e.g. a Ray Serve DeploymentResponse.
Submit = Callable[[SynthesisItem], Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Voicing:
    """How one request wants its sentences spoken."""

    voice: VoiceInfo
    speed: float
    seed: int
    speaker: int = 0  # of a multi-speaker voice

    @classmethod
    def create(cls, speaker: Speaker, speed: float, seed: int | None) -> Voicing:
        """`speaker` at `speed`; with no `seed`, a random one of its own."""
        seed = secrets.randbits(63) if seed is None else seed
        return cls(speaker.voice, speed, seed, speaker.number)

    def item(self, sentence: Sentence) -> SynthesisItem:
        return SynthesisItem(
            voice=self.voice.id,
            phoneme_ids=sentence.phoneme_ids,
            length_scale=self.voice.length_scale / self.speed,
            noise_scale=self.voice.noise_scale,
            noise_w=self.voice.noise_w,
            seed=item_seed(self.seed, sentence.index),
            speaker=self.speaker,
        )


def item_seed(request_seed: int, index: int) -> int:
    """A sentence's own seed: fixed by the request seed and the sentence's position."""
    digest = hashlib.blake2b(f"{request_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


async def ordered_audio(
    sentences: AsyncIterator[Sentence],
    voicing: Voicing,
    submit: Submit,
    lookahead: int,
    start: int = 2,
) -> AsyncIterator[tuple[Sentence, Synthesized]]:
    """Each sentence's audio, strictly in order, with at most `lookahead` items in flight.

    NOTE: a new request has at most `start` items in flight; its window grows by one per
    sentence delivered. Under load every request's first sentence is then near the front of
    the queue (time to first audio), while a request already streaming keeps enough items
    in flight to fill batches.

    If the consumer stops (client gone, error, timeout), items not yet finished are cancelled,
    so the replicas drop them before their batch runs.
    """
    pending: deque[tuple[Sentence, Any]] = deque()
    delivered = 0
    try:
        async for sentence in sentences:
            pending.append((sentence, submit(voicing.item(sentence))))
            while len(pending) >= min(lookahead, start + delivered):
                sentence, response = pending.popleft()
                yield sentence, await response
                delivered += 1
        while pending:
            sentence, response = pending.popleft()
            yield sentence, await response
    finally:
        for _, response in pending:
            response.cancel()


@dataclass(frozen=True)
class Spoken:
    """One sentence's part of the response audio, and where its speech sits in time."""

    index: int
    text: str
    audio: np.ndarray  # at the voice's rate, led by the pause before it (not the first)
    start_s: float  # offsets of the speech in the response audio
    end_s: float
    phonemes: int
    queue_s: float  # what it cost in the model replica (see `Synthesized`)
    model_s: float

    def timing(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": self.text,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
        }


async def spoken(
    audio: AsyncIterator[tuple[Sentence, Synthesized]], rate: int, pause_s: float
) -> AsyncIterator[Spoken]:
    """Sentence audio laid end to end with a short pause between sentences."""
    gap = np.zeros(int(round(pause_s * rate)), dtype=np.float32)
    offset = 0  # samples so far
    # NOTE: closing this closes `audio` at once (not when the garbage collector gets to it),
    # so the request's queued items are cancelled now. Same in `paced` and the ingress.
    async with contextlib.aclosing(audio):
        async for sentence, done in audio:
            lead = gap if offset else gap[:0]
            part = np.concatenate([lead, done.audio.astype(np.float32, copy=False)])
            start = offset + lead.size
            offset += part.size
            yield Spoken(
                sentence.index,
                sentence.text,
                part,
                start / rate,
                offset / rate,
                len(sentence.phoneme_ids),
                done.queue_s,
                done.model_s,
            )


async def paced(
    source: AsyncIterator[T], tick_s: float | None, deadline: Deadline
) -> AsyncIterator[T | None]:
    """`source`'s items, produced by a task of their own; None whenever `tick_s` passes
    without one (a chance to send a heartbeat). The deadline's own error once it passes.

    Closing this (client gone, error) cancels the task, and so `source`'s pending work.
    """
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue(maxsize=1)
    end = object()

    async def pump() -> None:
        try:
            async with contextlib.aclosing(source):
                async for item in source:
                    await queue.put((item, None))
            await queue.put((end, None))
        except Exception as exc:  # handed to the consumer, which tells the client
            await queue.put((end, exc))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # closed by the consumer
            # NOTE: a cancellation from below (not of this task) must still end the request,
            # or its consumer would wait, sending heartbeats, until the deadline.
            await queue.put((end, RuntimeError("a sentence's work was cancelled")))

    task = asyncio.create_task(pump(), name="chorus-speech")
    try:
        while True:
            wait = deadline.left_s()
            if wait <= 0:
                raise deadline.exceeded()
            try:
                item, error = await asyncio.wait_for(queue.get(), min(tick_s or wait, wait))
            except TimeoutError:
                if tick_s is not None and deadline.left_s() > 0:
                    yield None
                continue
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def render(
    parts: list[np.ndarray], voice_rate: int, fmt: audio.AudioFormat, rate: int
) -> tuple[bytes, float]:
    """The whole response body for a request's sentence audio, and its length in seconds."""
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    pcm = audio.resample(joined, voice_rate, rate)
    return audio.encode(pcm, rate, fmt), pcm.size / rate
