"""A ten-line engine for testing the serving layer (the main job never uses it)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from serve_app.model.engines.base import Engine, SynthesisItem

POISON = 108  # phoneme id of "ʒ" in the packaged voice, as in "treasure"


class FakeEngine(Engine):
    """0.1 s of a constant tone per item (value from the seed); sleeps `delay_s` per batch;
    fails on any item containing the POISON phoneme id, which fails its whole batch."""

    def __init__(self, voices, delay_s: float = 0.0) -> None:
        self._voices = [v.id for v in voices]
        self.delay_s = delay_s

    def load(self, device: str) -> None:
        pass

    @property
    def voices(self) -> list[str]:
        return self._voices

    def sample_rate(self, voice: str) -> int:
        return 22050

    def synthesize(self, items: list[SynthesisItem]) -> list[np.ndarray]:
        time.sleep(self.delay_s)
        if any(POISON in it.phoneme_ids for it in items):
            raise RuntimeError("poisoned sentence")
        return [np.full(2205, (it.seed % 100) / 200, dtype=np.float32) for it in items]


class FaultyEngine(Engine):
    """A test-only fault wrapper around another engine.

    - Out of memory: a batch of more than `fits_items` items, or any item longer than
      `fits_phonemes`, raises torch's OutOfMemoryError, as CUDA does when a batch is too big.
    - Wedged: with `hang_once` (a file path), the first batch in any process that finds no
      such file creates it and then never returns, like a stuck GPU kernel.
    """

    def __init__(
        self,
        voices,
        inner=FakeEngine,
        inner_kwargs=None,
        fits_items: int | None = None,
        fits_phonemes: int | None = None,
        hang_once: str | None = None,
    ) -> None:
        self.inner = inner(voices, **(inner_kwargs or {}))
        self.fits_items, self.fits_phonemes, self.hang_once = fits_items, fits_phonemes, hang_once

    def load(self, device: str) -> None:
        self.inner.load(device)

    @property
    def voices(self) -> list[str]:
        return self.inner.voices

    def sample_rate(self, voice: str) -> int:
        return self.inner.sample_rate(voice)

    def synthesize(self, items: list[SynthesisItem]) -> list[np.ndarray]:
        if self.hang_once and not os.path.exists(self.hang_once):
            open(self.hang_once, "w").close()
            threading.Event().wait()
        too_many = self.fits_items is not None and len(items) > self.fits_items
        longest = max(len(it.phoneme_ids) for it in items)
        too_long = self.fits_phonemes is not None and longest > self.fits_phonemes
        if too_many or too_long:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.synthesize(items)
