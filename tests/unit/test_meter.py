"""The meter: a rate from the replicas' own probes before anything drained, measured drain
taking over as busy time accumulates, and a fresh start when the replicas change."""

from __future__ import annotations

import pytest

from serve_app.model.profile import SpeedProfile, measure, probe_item
from serve_app.queue.meter import PROFILE_SHARE, TAKEOVER_S, Meter
from tests.fakes import Clock

pytestmark = pytest.mark.timeout(30)


def profile(replica: str = "a", stamp: float = 1.0, fixed_s: float = 0.9) -> SpeedProfile:
    # batch time 0.9 + 0.1 per item, for items of 100 phonemes
    return SpeedProfile(replica, stamp, 100, 4, fixed_s, 0.1)


def drain(meter: Meter, clock: Clock, seconds: float, phonemes: int) -> None:
    """One item of `phonemes` outstanding for `seconds`, then synthesized."""
    meter.added()
    clock.now += seconds
    meter.removed(phonemes, model_s=seconds)


def test_the_probe_times_one_item_and_a_full_batch() -> None:
    clock = Clock()

    def synthesize(items) -> None:
        clock.now += 0.9 + 0.1 * len(items)

    found = measure("r", "v", 4, synthesize, clock=clock)
    assert (found.fixed_s, found.per_item_s) == (pytest.approx(0.9), pytest.approx(0.1))
    assert found.phonemes == probe_item("v", 0).size
    assert found.phonemes_per_s(1) == pytest.approx(found.phonemes / 1.0)
    assert found.phonemes_per_s(4) == pytest.approx(4 * found.phonemes / 1.3)
    assert found.phonemes_per_s(64) == found.phonemes_per_s(4)  # never past its batch size


def test_a_cold_meter_counts_on_one_item_per_batch_until_answers_show_more() -> None:
    meter = Meter(batch=8, clock=Clock())
    assert meter.rate() is None and not meter.can_refuse()
    meter.learn_profile(profile())  # asked for before the first request
    assert meter.can_refuse()
    assert meter.rate() == pytest.approx(PROFILE_SHARE * 100 / 1.0)
    for _ in range(40):  # answers from batches of 4
        meter.learn_profile(profile(), batch=4)
    assert meter.batch_size() == pytest.approx(4.0)
    assert meter.rate() == pytest.approx(PROFILE_SHARE * 400 / 1.3)


def test_measured_drain_takes_over_as_busy_time_accumulates() -> None:
    clock = Clock()
    meter = Meter(batch=1, clock=clock)
    meter.learn_profile(profile())  # promises 100 phonemes/s (85 counted on)
    drain(meter, clock, TAKEOVER_S / 2, 250)  # measured: 50/s over half the takeover time
    prior = PROFILE_SHARE * 100
    assert meter.rate() == pytest.approx((50 + prior) / 2)
    drain(meter, clock, TAKEOVER_S / 2, 250)
    assert meter.rate() == pytest.approx(50.0)
    assert meter.seconds(100) == pytest.approx(2.0)
    assert meter.seconds(100, share=0.5) == pytest.approx(4.0)


def test_new_settings_or_new_replicas_start_the_evidence_afresh() -> None:
    clock = Clock()
    meter = Meter(batch=1, clock=clock)
    meter.learn_profile(profile())
    drain(meter, clock, TAKEOVER_S, 500)
    assert meter.rate() == pytest.approx(50.0)
    meter.learn_profile(profile(stamp=2.0, fixed_s=1.9))  # reconfigured: twice as slow
    assert meter.rate() == pytest.approx(PROFILE_SHARE * 50)
    drain(meter, clock, TAKEOVER_S, 250)
    meter.set_replicas(2)  # a second replica answers: the measured drain is of one
    assert meter.rate() == pytest.approx(2 * PROFILE_SHARE * 50)


def test_a_profile_no_answer_confirmed_lately_is_stale() -> None:
    clock = Clock()
    meter = Meter(batch=1, clock=clock)
    assert meter.profile_age_s() == float("inf")
    meter.learn_profile(profile())
    clock.now += 3
    assert meter.profile_age_s() == pytest.approx(3.0)


def test_just_after_an_answer_its_profile_holds_without_a_question() -> None:
    clock = Clock()
    meter = Meter(batch=1, clock=clock)
    meter.learn_profile(profile())  # a question's answer: says nothing of what comes after
    assert not meter.just_answered()
    meter.learn_profile(profile(), batch=1)  # an answer; the probe item alone takes 1.0 s
    clock.now += 0.4
    assert meter.just_answered()
    clock.now += 0.2  # slower settings could have timed their probe since
    assert not meter.just_answered()
    meter.learn_profile(profile(), batch=1)
    meter.set_replicas(2)  # the next request may go to the other one
    assert not meter.just_answered()
