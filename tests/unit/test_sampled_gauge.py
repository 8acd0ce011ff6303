"""The items-in-flight gauge is recorded at most once a second, and always ends on the latest
value (recording a Ray metric on every item change was a measured hot spot)."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.metrics import SampledGauge

pytestmark = pytest.mark.timeout(30)


class Recorded:
    def __init__(self) -> None:
        self.values: list[float] = []

    def set(self, value: float) -> None:
        self.values.append(value)


async def test_many_changes_are_recorded_once_then_the_latest_within_the_period() -> None:
    gauge = Recorded()
    sampled = SampledGauge(gauge, every_s=0.2)
    for value in range(100):
        sampled.set(value)
    assert gauge.values == [0]  # the first at once, the rest held
    await asyncio.sleep(0.3)
    assert gauge.values == [0, 99]  # the latest, within the period
    await asyncio.sleep(0.3)
    sampled.set(7)  # quiet for longer than the period: at once
    assert gauge.values == [0, 99, 7]


def test_without_an_event_loop_it_records_at_once() -> None:
    gauge = Recorded()
    sampled = SampledGauge(gauge, every_s=60)
    sampled.set(1)
    sampled.set(2)
    assert gauge.values == [1, 2]
