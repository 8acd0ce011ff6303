"""GPU batching on any machine: length-sorted groups and per-item noise on the device."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest
import torch

from load_tests import phonemes
from serve_app.model.engines.grouping import plan_groups
from serve_app.model.engines.noise import gaussian
from serve_app.model.engines.piper import PiperEngine

pytestmark = pytest.mark.timeout(120)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    eng = PiperEngine([phonemes.VOICE], decode_policy="batched", warm_buckets=False)
    eng.load("cpu")
    return eng


def test_standard_mix_in_arrival_order_groups_at_high_padding_efficiency(engine) -> None:
    items = phonemes.mix_items(64)
    frames = [a.frames for a in engine.voice("joe").align(items)]
    one_batch = sum(frames) / (len(frames) * max(frames))
    plan = plan_groups(frames, engine.max_batch_frames, engine.group_overhead_frames)
    assert plan.efficiency >= 0.8, (plan.efficiency, [len(g) for g in plan.groups])
    assert one_batch < 0.7  # what a padded batch in arrival order wastes
    assert sorted(i for g in plan.groups for i in g) == list(range(64))
    assert len(plan.groups) <= 8  # not one group per item: each group costs launches


def test_the_engine_reports_the_padding_of_the_groups_it_ran(engine) -> None:
    items = phonemes.mix_items(12, seed=2)
    audio = engine.synthesize(items)
    frames = [a.size // 256 for a in audio]
    plan = plan_groups(frames, engine.max_batch_frames, engine.group_overhead_frames)
    assert engine.padding_efficiency == pytest.approx(plan.efficiency)
    assert engine.padding_efficiency > sum(frames) / (len(frames) * max(frames))


def test_groups_respect_the_frame_budget() -> None:
    sizes = [random.Random(k).randint(20, 900) for k in range(100)]
    plan = plan_groups(sizes, budget=3000, overhead=500)
    for group in plan.groups:
        assert len(group) * max(sizes[i] for i in group) <= 3000
    # An item over the budget still runs, alone.
    plan = plan_groups([100, 5000, 120], budget=1000, overhead=10**6)
    assert [1] in plan.groups and len(plan.groups) == 2


def test_the_cut_is_the_cheapest_one() -> None:
    rng = random.Random(5)
    for _ in range(30):
        sizes = [rng.randint(1, 60) for _ in range(rng.randint(1, 7))]
        overhead, budget = rng.choice([0, 5, 40, 1000]), rng.choice([60, 150, 10**6])
        plan = plan_groups(sizes, budget, overhead)
        got = sum(overhead + len(g) * max(sizes[i] for i in g) for g in plan.groups)
        assert got == pytest.approx(brute_force(sorted(sizes), budget, overhead))


def brute_force(s: list[int], budget: int, overhead: float) -> float:
    best = math.inf
    for cuts in itertools.product([False, True], repeat=len(s) - 1):
        bounds = [0] + [k + 1 for k, cut in enumerate(cuts) if cut] + [len(s)]
        runs = [s[a:b] for a, b in itertools.pairwise(bounds)]
        if all(len(r) == 1 or len(r) * r[-1] <= budget for r in runs):
            best = min(best, sum(overhead + len(r) * r[-1] for r in runs))
    return best


def test_an_items_noise_depends_only_on_its_seed() -> None:
    alone = gaussian([7], 1, 192, [300], CPU)[0]
    together = gaussian([99, 7, 2**40 + 7], 1, 192, [500, 300, 120], CPU)
    assert torch.equal(together[1, :, :300], alone)
    assert not together[1, :, 300:].any()  # zero past its end
    longer = gaussian([7], 1, 192, [800], CPU)[0]
    assert torch.equal(longer[:, :300], alone)  # a longer item: the same start
    other = [gaussian([s], stream, 192, [300], CPU)[0] for s, stream in ((8, 1), (7, 0))]
    assert all(not torch.equal(o, alone) for o in other)
    assert not torch.equal(together[2, :, :120], alone[:, :120])  # 64-bit seeds count whole


def test_noise_is_standard_normal_and_uncorrelated() -> None:
    noise = gaussian(list(range(16)), 1, 192, [1000] * 16, CPU).double()
    assert abs(noise.mean().item()) < 0.01
    assert abs(noise.std().item() - 1) < 0.01
    assert abs(((noise**4).mean() - 3).item()) < 0.05  # normal tails, not uniform
    assert abs((noise[:, :, 1:] * noise[:, :, :-1]).mean().item()) < 0.01  # along time
    assert abs((noise[:, 1:] * noise[:, :-1]).mean().item()) < 0.01  # across channels
    assert abs((noise[1:] * noise[:-1]).mean().item()) < 0.01  # across seeds


def test_noise_follows_an_integer_recipe_that_any_device_computes_alike() -> None:
    """The same numbers from plain numpy uint32 arithmetic: no device generator involved."""
    seed, stream = 2**33 + 12345, 1
    ours = gaussian([seed], stream, 4, [50], CPU)[0].numpy()

    def mix(x):
        x = np.uint32(x)
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))

    with np.errstate(over="ignore"):
        key = mix(mix(np.uint32(seed & 0xFFFFFFFF) ^ mix(seed >> 32)) ^ np.uint32(0x9E3779B9))
        c, t = np.meshgrid(np.arange(4), np.arange(50), indexing="ij")
        first = mix(key ^ mix((c.astype(np.uint32) << np.uint32(22)) | t.astype(np.uint32)))
        second = mix(first ^ np.uint32(0x85EBCA6B))
    u1, u2 = (((h >> 8).astype(np.float64) + 0.5) / 2.0**24 for h in (first, second))
    reference = (np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)
    np.testing.assert_array_equal(ours, reference)


def test_the_phoneme_file_matches_the_phonemizer() -> None:
    assert json.loads(phonemes.PATH.read_text()) == phonemes.make()


def test_a_call_to_a_model_replica_leaves_room_for_another_behind_it() -> None:
    from serve_app.http.ingress import call_size

    # CPU: 2 items in flight per replica, one per call, so each comes back when it is done
    # and the replica always has the next one; a GPU's 128 keep the configured 16.
    assert (call_size(16, 2), call_size(16, 1), call_size(16, 128), call_size(4, 32)) == (
        1,
        1,
        16,
        4,
    )
