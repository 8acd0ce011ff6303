"""A ten-line engine for testing the serving layer (the main job never uses it)."""

from __future__ import annotations

import time

import numpy as np

from serve_app.engines.base import Engine, SynthesisItem

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
