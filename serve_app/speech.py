"""One request's life: sentence items out with a bounded look-ahead, ordered audio back."""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import audio
from .engines.base import SynthesisItem
from .text import Sentence
from .voices import VoiceInfo

# submit(item) -> an awaitable with .cancel(), e.g. a Ray Serve DeploymentResponse.
Submit = Callable[[SynthesisItem], Any]


@dataclass(frozen=True)
class Voicing:
    """How one request wants its sentences spoken."""

    voice: VoiceInfo
    speed: float
    seed: int

    @classmethod
    def create(cls, voice: VoiceInfo, speed: float, seed: int | None) -> Voicing:
        return cls(voice, speed, secrets.randbits(63) if seed is None else seed)

    def item(self, sentence: Sentence) -> SynthesisItem:
        return SynthesisItem(
            voice=self.voice.id,
            phoneme_ids=sentence.phoneme_ids,
            length_scale=self.voice.length_scale / self.speed,
            noise_scale=self.voice.noise_scale,
            noise_w=self.voice.noise_w,
            seed=item_seed(self.seed, sentence.index),
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
) -> AsyncIterator[tuple[Sentence, np.ndarray]]:
    """Each sentence's audio, strictly in order, with at most `lookahead` items in flight.

    If the consumer stops (client gone, error, timeout), items not yet finished are cancelled,
    so the replicas drop them before their batch runs.
    """
    pending: deque[tuple[Sentence, Any]] = deque()
    try:
        async for sentence in sentences:
            pending.append((sentence, submit(voicing.item(sentence))))
            if len(pending) >= lookahead:
                sentence, response = pending.popleft()
                yield sentence, await response
        while pending:
            sentence, response = pending.popleft()
            yield sentence, await response
    finally:
        for _, response in pending:
            response.cancel()


def render(
    chunks: list[np.ndarray], voice_rate: int, fmt: audio.AudioFormat, rate: int, pause_s: float
) -> tuple[bytes, float]:
    """The response body for a request's sentence audio, and its length in seconds."""
    pcm = audio.resample(join_sentences(chunks, voice_rate, pause_s), voice_rate, rate)
    return audio.encode(pcm, rate, fmt), pcm.size / rate


def join_sentences(chunks: list[np.ndarray], rate: int, pause_s: float) -> np.ndarray:
    """Sentence audio joined with a short silence between sentences."""
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    gap = np.zeros(int(round(pause_s * rate)), dtype=np.float32)
    parts: list[np.ndarray] = []
    for i, chunk in enumerate(chunks):
        if i:
            parts.append(gap)
        parts.append(chunk.astype(np.float32, copy=False))
    return np.concatenate(parts)
