"""The door: API keys, lanes, token buckets, concurrency caps, room and deadlines."""

from __future__ import annotations

import asyncio
import random

import pytest
import yaml

from serve_app.clients import KeyStore, TokenBucket, main
from serve_app.config import AppConfig, hash_key
from serve_app.deadline import Deadline
from serve_app.errors import Forbidden, Overloaded, RateLimited, Unauthorized
from serve_app.queue.backlog import Backlog
from serve_app.queue.door import Door
from serve_app.queue.estimates import COLD_PHONEMES_PER_S
from serve_app.queue.readiness import LATE_S, WATCH_S, Readiness
from tests.fakes import Clock, Replica, item, make_backlog

pytestmark = pytest.mark.timeout(30)

KEY = "k" * 32


def config(**args) -> AppConfig:
    return AppConfig.model_validate(args)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=4, clock=clock)
    assert bucket.wait_s(4) == 0
    bucket.take(4)
    assert bucket.wait_s(1) == pytest.approx(0.5)
    clock.now += 10
    assert bucket.wait_s(4) == 0 and bucket.wait_s(8) == 0  # capped at burst, which...
    bucket.take(8)  # ...lets a larger request through when full, leaving a debt
    assert bucket.wait_s(1) == pytest.approx(2.5)


def test_a_bucket_share_scales_its_rate_and_burst_and_keeps_how_full_it_is() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=4.0, burst=8, clock=clock)
    bucket.take(4)  # half full
    bucket.reshare(0.25)  # this replica now enforces 1/s and a burst of 2: one token left
    assert bucket.wait_s(1) == 0 and bucket.wait_s(2) == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.wait_s(3) == 0  # full: a request larger than its share of burst passes
    bucket.take(3)
    assert bucket.wait_s(1) == pytest.approx(2.0)
    bucket.reshare(1.0)  # its traffic moved here: the debt of one token stays one token
    assert bucket.wait_s(1) == pytest.approx(0.5)


def test_keys_are_checked_by_hash_and_never_kept() -> None:
    cfg = config(api_keys=[{"name": "alice", "key": KEY}, {"name": "bob", "sha256": "a" * 64}])
    assert cfg.api_keys[0].key is None and cfg.api_keys[0].sha256 == hash_key(KEY)
    assert KEY not in cfg.model_dump_json()
    store = KeyStore(cfg)
    assert store.authenticate(bearer(KEY)).name == "alice"
    assert store.authenticate({"x-api-key": KEY}).name == "alice"
    for headers in ({}, bearer("wrong-key-wrong-key"), {"authorization": f"Basic {KEY}"}):
        with pytest.raises(Unauthorized) as err:
            store.authenticate(headers)
        assert err.value.status == 401 and KEY not in err.value.message
    assert KeyStore(config()).authenticate({}).name == "anonymous"  # no keys: open


def test_keys_file_is_reread_when_it_changes(tmp_path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump([{"name": "alice", "sha256": hash_key(KEY)}]))
    clock = Clock()
    store = KeyStore(config(api_keys_file=str(path)), clock=clock)
    assert store.authenticate(bearer(KEY)).name == "alice"
    path.write_text(yaml.safe_dump([{"name": "carol", "sha256": hash_key("c" * 20)}]))
    clock.now += 10
    with pytest.raises(Unauthorized):
        store.authenticate(bearer(KEY))  # revoked
    assert store.authenticate(bearer("c" * 20)).name == "carol"
    path.write_text("- name: [broken")
    clock.now += 10
    assert store.authenticate(bearer("c" * 20)).name == "carol"  # a bad edit keeps the keys


def test_config_refuses_limits_no_input_could_pass() -> None:
    with pytest.raises(ValueError, match="chars_burst"):
        config(key_limits={"chars_burst": 100})
    with pytest.raises(ValueError, match="exactly one"):
        config(api_keys=[{"name": "x"}])
    with pytest.raises(ValueError, match="default_lane"):
        config(
            api_keys=[{"name": "x", "key": KEY, "lanes": ["batch"], "default_lane": "interactive"}]
        )


def test_key_tool_prints_a_key_and_its_entry(capsys) -> None:
    main(["new", "alice"])
    out = capsys.readouterr().out
    key = out.split(": ")[1].split()[0]
    assert f"sha256: {hash_key(key)}" in out


class NoJitter(random.Random):
    """The herd's jitter at its low end: Retry-After values as the door computes their base."""

    def uniform(self, a: float, b: float) -> float:
        return a


def make_door(
    clock: Clock, rng: random.Random | None = None, **args
) -> tuple[Door, KeyStore, Backlog, Replica]:
    cfg = config(**args)
    replica = Replica()
    backlog = make_backlog(replica, clock, capacity=1)
    door = Door(cfg, backlog, rng=rng or NoJitter())
    return door, KeyStore(cfg, clock=clock), backlog, replica


def test_lanes_are_limited_per_key() -> None:
    door, keys, _, _ = make_door(
        Clock(), api_keys=[{"name": "bulk", "key": KEY, "lanes": ["batch"]}]
    )
    client = keys.authenticate(bearer(KEY))
    assert door.lane(client, None) == "batch"
    with pytest.raises(Forbidden):
        door.lane(client, "interactive")


def test_rate_limits_answer_429_with_the_wait_and_refusals_cost_nothing() -> None:
    clock = Clock()
    limits = {"requests_per_s": 0.1, "requests_burst": 2, "chars_per_s": 100, "chars_burst": 4096}
    door, keys, _, replica = make_door(
        clock, api_keys=[{"name": "a", "key": KEY, "limits": limits}]
    )
    client = keys.authenticate(bearer(KEY))
    door.admit(client, "interactive", 4000, Deadline(60)).close()
    with pytest.raises(RateLimited) as err:
        door.admit(client, "interactive", 500, Deadline(60))
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "5"  # 404 chars short
    clock.now += 5
    door.admit(client, "interactive", 500, Deadline(60)).close()
    with pytest.raises(RateLimited) as err:  # the request bucket: 2, then 1 per 10 s
        door.admit(client, "interactive", 1, Deadline(60))
    assert err.value.headers["Retry-After"] == "5"  # 0.5 requests left after 5 s


def test_concurrent_requests_are_capped_per_key() -> None:
    limits = {"max_concurrent": 2}
    door, keys, backlog, replica = make_door(
        Clock(), api_keys=[{"name": "a", "key": KEY, "limits": limits}]
    )
    client = keys.authenticate(bearer(KEY))
    works = [door.admit(client, "interactive", 10, Deadline(60)) for _ in range(2)]
    with pytest.raises(RateLimited) as err:
        door.admit(client, "interactive", 10, Deadline(60))
    assert err.value.code == "too_many_concurrent_requests"
    works[0].close()
    door.admit(client, "interactive", 10, Deadline(60))


def test_a_full_queue_or_an_unmeetable_deadline_is_refused_with_a_measured_retry_after() -> None:
    async def run() -> None:
        clock = Clock()
        door, keys, backlog, replica = make_door(clock, max_backlog_s=10)
        client = keys.authenticate({})
        warm = door.admit(client, "interactive", 0, Deadline(60))
        pending = warm(item(200))
        await asyncio.sleep(0)
        clock.now += 2.0
        replica.futures[0].set_result("audio")
        await pending
        warm.close()
        backlog.meter.phonemes_per_char = 1.6  # as if learnt
        # 100 phonemes/s measured
        door.admit(client, "batch", 1000, Deadline(60))  # 16 s of batch work
        door.admit(client, "interactive", 500, Deadline(60))  # batch does not count
        with pytest.raises(Overloaded) as err:
            door.admit(client, "batch", 10, Deadline(60))
        assert err.value.headers["Retry-After"] == "15"  # 24.16 s of work must drain to 10
        with pytest.raises(Overloaded) as err:
            door.admit(client, "interactive", 100, Deadline(1.0))
        assert err.value.code == "deadline_unmeetable"
        # 160 own after all 800 of the same key's earlier request (a key's requests go in
        # arrival order), at 90% of 100/s (batch work keeps 10%)
        assert err.value.headers["Retry-After"] == str(round(960 / 90 - 1 + 0.5))

    asyncio.run(run())


def test_requests_in_progress_are_bounded() -> None:
    door, keys, _, replica = make_door(Clock(), max_active_requests=2)
    client = keys.authenticate({})
    for _ in range(2):
        door.admit(client, "interactive", 10, Deadline(60))
    with pytest.raises(Overloaded):
        door.admit(client, "interactive", 10, Deadline(60))


def test_while_no_model_replica_runs_only_a_first_window_is_admitted() -> None:
    # 8 items in flight x a 100-phoneme probe sentence = 800 phonemes; 100 chars = 240.
    door, keys, backlog, _ = make_door(Clock(), max_backlog_s=120, items_in_flight=8)
    client = keys.authenticate({})
    works = [door.admit(client, "interactive", 100, Deadline(60), loading_s=20) for _ in range(3)]
    with pytest.raises(Overloaded) as err:
        door.admit(client, "interactive", 100, Deadline(60), loading_s=20)
    assert err.value.code == "model_loading" and "loading" in err.value.message
    assert err.value.headers["Retry-After"] == "20"  # when a replica should be running
    for work in works:
        work.close()
    with pytest.raises(Overloaded):  # a deadline the start alone would miss
        door.admit(client, "interactive", 1, Deadline(10), loading_s=20)
    with pytest.raises(Overloaded) as err:  # a start later than the backlog bound: none
        door.admit(client, "interactive", 10, Deadline(600), loading_s=200)
    assert err.value.headers["Retry-After"] == "200"
    big = door.admit(client, "interactive", 4000, Deadline(600), loading_s=20)  # alone: yes
    assert backlog.requests == 1
    big.close()


def test_a_running_replica_that_has_not_measured_its_speed_gets_a_first_window_too() -> None:
    door, keys, _, _ = make_door(Clock(), items_in_flight=2)  # 200 phonemes
    client = keys.authenticate({})
    door.admit(client, "interactive", 50, Deadline(60))
    with pytest.raises(Overloaded) as err:
        door.admit(client, "interactive", 50, Deadline(60))
    assert err.value.code == "model_loading" and "not measured" in err.value.message


def test_retry_after_spreads_the_refused_over_the_time_their_work_would_take() -> None:
    clock = Clock()
    door, keys, _, _ = make_door(clock, random.Random(7), max_active_requests=1, items_in_flight=1)
    client = keys.authenticate({})
    door.admit(client, "interactive", 1000, Deadline(60), loading_s=5)
    each = 2400 / COLD_PHONEMES_PER_S  # 1000 chars, before any rate is known
    waits = []
    for _ in range(100):
        with pytest.raises(Overloaded) as err:
            door.admit(client, "interactive", 1000, Deadline(60), loading_s=5)
        waits.append(int(err.value.headers["Retry-After"]))
        clock.now += 0.01
    assert max(waits[:5]) <= 5 * each + 1  # few refused so far: told to come back soon
    assert len(set(waits)) >= 40  # the herd is told different seconds...
    assert max(waits) <= 100 * each + 1  # ...over about what their work would take
    assert sorted(waits)[50] >= 100 * each / 8
    clock.now += 11  # the refusals age out of the window
    with pytest.raises(Overloaded) as err:
        door.admit(client, "interactive", 1000, Deadline(60), loading_s=5)
    assert int(err.value.headers["Retry-After"]) <= each + 1


def test_readiness_says_how_long_until_a_loading_replica_should_take_work() -> None:
    async def run() -> None:
        clock = Clock()
        states = {"STARTING": 1}

        def controller(app: str, deployment: str) -> dict[str, int]:
            return dict(states)

        async def running(expected: int) -> None:
            """`running()` answers at once; `expected` once the watch has asked again."""
            for _ in range(100):
                if await ready.running() == expected:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"never {expected} running")

        def routed() -> bool:  # the handle's news: once a replica ran, it stays so
            return heard

        heard = False
        ready = Readiness("chorus", "Synthesizer", 1.0, controller, clock, routed)
        assert ready.loading_s(30) is None  # nothing asked yet: nothing known
        clock.now += 5
        await running(0)
        assert ready.loading_s(30) == 25  # started with this ingress, 5 s ago
        clock.now += 40
        assert ready.loading_s(30) == LATE_S  # late: expected again shortly
        states, heard = {"RUNNING": 1}, True  # the handle hears of it: the watch asks at once
        clock.now += 2
        await running(1)
        assert ready.loading_s(30) is None
        await asyncio.sleep(0.3)  # the controller's answer to the watch's question
        states = {"STARTING": 1}  # every replica lost: loading again from now
        clock.now += 2
        assert await ready.running() == 1  # the last answer, at once; then asked again...
        await running(0)
        assert ready.loading_s(30) == 30  # ...from when it was seen

    asyncio.run(run())


def test_a_replica_the_handle_hears_of_counts_before_the_controller_is_asked_again() -> None:
    async def run() -> None:
        clock = Clock()
        states, routed, asked = {"STARTING": 1}, False, []

        def controller(app: str, deployment: str) -> dict[str, int]:
            asked.append(clock.now)
            return dict(states)

        ready = Readiness("chorus", "Synthesizer", 1.0, controller, clock, lambda: routed)
        assert await ready.running() == 0
        clock.now += 0.5  # the answer is still fresh...
        assert ready.loading_s(30) == 29.5
        states, routed = {"RUNNING": 1}, True  # ...but a replica started since it was asked
        assert await ready.running() == 1  # at once, and no loading estimate
        assert ready.loading_s(30) is None
        for _ in range(20):  # and the controller is asked again well within its second
            if len(asked) == 2:
                break
            await asyncio.sleep(0.01)
        assert asked == [100.0, 100.5]
        states = {"STARTING": 1}  # every replica lost later: the handle's news is old now
        clock.now += 2
        await ready.running()
        for _ in range(20):
            if await ready.running() == 0:
                break
            await asyncio.sleep(0.01)
        assert ready.loading_s(30) == 30

    asyncio.run(run())


def test_readiness_keeps_the_running_count_current_while_replicas_run() -> None:
    async def run() -> None:
        clock = Clock()
        states = {"RUNNING": 2}
        asked: list[float] = []

        def controller(app: str, deployment: str) -> dict[str, int]:
            asked.append(clock.now)
            return dict(states)

        ready = Readiness("chorus", "Synthesizer", 1.0, controller, clock)
        assert ready.running_now() is None  # not asked yet
        assert await ready.running() == 2
        assert ready.running_now() == 2
        clock.now += 2 * WATCH_S + 1
        assert ready.running_now() is None  # too old to count on
        states = {"RUNNING": 1, "STOPPING": 1}  # a rollout stopped one
        assert await ready.running() == 2  # the last answer at once; asked again meanwhile
        for _ in range(100):
            if ready.running_now() == 1:
                break
            await asyncio.sleep(0.01)
        assert ready.running_now() == 1
        assert len(asked) == 2

    asyncio.run(run())
