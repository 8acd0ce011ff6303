"""A model engine as fast as a GPU, for measuring the serving layer (never the main job).

Its batch time follows a cost model of the H200 figures in the architecture notes: a fixed
cost per batch, plus a cost per *padded* frame of the length groups the real engine would
form (`engines.grouping.plan_groups`, the same planner and budget). It waits by sleeping on
the engine thread, so it burns no CPU while it "computes": every CPU cycle a benchmark sees
is the serving layer's. Each item's audio is `frames_per_phoneme` frames per phoneme id
(scaled by its length_scale; 2.15 is the packaged voice's median over the benchmark
sentences, 1.95-4.2), cut from real speech of the packaged voice made once at load,
so the resampler and encoders see speech, not a tone.

Default figures (exact float32, H200, see ../shared/design/ARCHITECTURE.md): one sentence alone
~108 audio-s/s, 64 sorted by length ~1,210 audio-s/s. `fixed_s` 0.040 and `frame_s` 6.6 us per
padded frame reproduce both (117 and ~1,200). `speedup` divides both: 3 for the ~3,800
audio-s/s estimated with a half-precision compiled decoder.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from serve_app.config import SynthesizerUserConfig
from serve_app.model.engines.base import Engine, SynthesisItem
from serve_app.model.engines.grouping import plan_groups

HOP = 256  # samples per frame, as Piper's medium voices
RATE = 22050
SPEECH_SECONDS = 20  # real speech made at load, cut into items' audio


class GpuSpeedEngine(Engine):
    def __init__(
        self,
        voices,
        fixed_s: float = 0.040,
        frame_s: float = 6.6e-6,
        speedup: float = 1.0,
        frames_per_phoneme: float = 2.15,
        group_overhead_frames: int = 1000,
        max_batch_frames: int = 400_000,
        real_speech: bool = True,
    ) -> None:
        self._voices = [v.id for v in voices]
        self._sources = voices
        self.fixed_s, self.frame_s, self.speedup = fixed_s, frame_s, speedup
        self.frames_per_phoneme = frames_per_phoneme
        self.group_overhead_frames = group_overhead_frames
        self.max_batch_frames = max_batch_frames
        self.real_speech = real_speech
        self._speech = np.zeros(RATE, dtype=np.float32)
        self.last_batch_s = 0.0  # the time the last batch "computed" (for tests)

    def load(self, device: str) -> None:
        if self.real_speech:
            self._speech = _real_speech(self._sources[0])

    def reconfigure(self, settings: SynthesizerUserConfig) -> None:
        if settings.max_batch_frames is not None:
            self.max_batch_frames = settings.max_batch_frames

    @property
    def voices(self) -> list[str]:
        return self._voices

    def sample_rate(self, voice: str) -> int:
        return RATE

    def frames(self, item: SynthesisItem) -> int:
        """The fixed frames-per-phoneme model of an item's length."""
        return max(1, round(item.size * self.frames_per_phoneme * item.length_scale))

    def batch_seconds(self, items: list[SynthesisItem]) -> float:
        """Fixed cost plus the padded frames of the length groups the real engine would run."""
        plan = plan_groups(
            [self.frames(it) for it in items], self.max_batch_frames, self.group_overhead_frames
        )
        self.padding_efficiency = plan.efficiency
        return (self.fixed_s + self.frame_s * plan.padded) / self.speedup

    def synthesize(self, items: list[SynthesisItem]) -> list[np.ndarray]:
        self.last_batch_s = self.batch_seconds(items)
        time.sleep(self.last_batch_s)  # NOTE: sleeping frees the CPU, as a GPU kernel would
        return [self._audio(it) for it in items]

    def _audio(self, item: SynthesisItem) -> np.ndarray:
        samples, speech = self.frames(item) * HOP, self._speech
        start = item.seed % speech.size
        if start + samples <= speech.size:
            return speech[start : start + samples].copy()
        reps = -(-(start + samples) // speech.size)  # a long item: the speech again and again
        return np.tile(speech, reps)[start : start + samples]

    def status(self) -> dict[str, Any]:
        return {"batch_policy": "gpu_speed_model", "speedup": self.speedup}


def _real_speech(source) -> np.ndarray:
    """About SPEECH_SECONDS of the packaged voice (the real engine, once, on CPU)."""
    from load_tests.texts import SENTENCES
    from serve_app.model.engines.piper import PiperEngine
    from serve_app.model.voices import VoiceInfo
    from serve_app.speech.text import TextFrontend

    info = VoiceInfo.load(source)
    frontend = TextFrontend(info, max_item_chars=400)
    engine = PiperEngine([source], warm_buckets=False)
    engine.load("cpu")
    parts, seconds = [], 0.0
    for i, sentence in enumerate(SENTENCES):
        item = SynthesisItem(info.id, frontend.phoneme_ids(sentence), 1.0, 0.667, 0.8, i)
        parts.append(engine.synthesize([item])[0])
        seconds += parts[-1].size / info.sample_rate
        if seconds >= SPEECH_SECONDS:
            break
    engine.close()
    return np.concatenate(parts).astype(np.float32)
