"""Who a client is (keys, addresses, trusted proxies), limits shared by ingress replicas, and
readiness from the controller's view of the model replicas."""

from __future__ import annotations

import asyncio
import random

import pytest

from serve_app.clients import MAX_CLIENTS, KeyStore
from serve_app.config import AppConfig
from serve_app.deadline import Deadline
from serve_app.errors import Overloaded, RateLimited
from serve_app.http.requests import client_address
from serve_app.queue.door import Door
from serve_app.queue.readiness import Readiness
from serve_app.queue.shared import STALE_AFTER, Board, SharedLimits, Usage
from tests.fakes import Clock, FakeRequest, FlakyBoard, Replica, make_backlog

pytestmark = pytest.mark.timeout(30)

KEY = "k" * 32
LIMITED = {"open_limits": {"requests_per_s": 4, "requests_burst": 4, "max_concurrent": 3}}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def address(peer: str | None, trusted: list[str] | None = None, **headers: str) -> str | None:
    networks = AppConfig.model_validate({"trusted_proxies": trusted or []}).proxy_networks
    return client_address(FakeRequest(peer, **headers), networks)


def test_a_forwarded_client_address_is_believed_only_from_a_trusted_proxy() -> None:
    spoofed = {"x_forwarded_for": "6.6.6.6"}
    assert address("203.0.113.9", **spoofed) == "203.0.113.9"  # no proxy trusted
    assert address("203.0.113.9", ["10.0.0.0/8"], **spoofed) == "203.0.113.9"  # not a proxy
    # Through two trusted proxies; the client's own (spoofed) entry to the left is ignored.
    chain = {"x_forwarded_for": "6.6.6.6, 198.51.100.7, 10.0.0.2"}
    assert address("10.0.0.1", ["10.0.0.0/8"], **chain) == "198.51.100.7"
    forwarded = {"forwarded": 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https'}
    assert address("10.0.0.1", ["10.0.0.1"], **forwarded) == "2001:db8:cafe::/64"
    assert address("10.0.0.1", ["10.0.0.1"], forwarded="for=unknown") == "10.0.0.1"
    assert address("10.0.0.1", ["10.0.0.1"]) == "10.0.0.1"  # a proxy with no header
    assert address("::ffff:192.0.2.1") == "192.0.2.1"
    assert address(None) is None
    with pytest.raises(ValueError, match="trusted_proxies"):
        address("10.0.0.1", ["not-a-network"])


def test_on_an_open_server_each_address_is_a_client_with_its_own_limits() -> None:
    keys = KeyStore(AppConfig.model_validate(LIMITED))
    a, b = keys.authenticate({}, "192.0.2.1"), keys.authenticate({}, "192.0.2.2")
    assert (a.name, b.name) == ("192.0.2.1", "192.0.2.2") and a.requests is not b.requests
    assert keys.authenticate({}, "192.0.2.1") is a  # its buckets' state is kept
    assert a.limits.requests_per_s == 4 and a.limited
    assert not KeyStore(AppConfig()).authenticate({}, "192.0.2.1").limited  # default: off
    for n in range(MAX_CLIENTS + 5):
        keys.authenticate({}, f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
    assert len(keys.clients()) == MAX_CLIENTS  # the least recently seen are forgotten


def test_the_board_shares_a_clients_rate_by_where_it_asks_and_counts_its_requests() -> None:
    clock = Clock()
    board = Board(every_s=0.5, clock=clock)
    board.report("r1", {"alice": Usage(9.0, 2), "bob": Usage(1.0, 1)})
    answer = board.report("r2", {"alice": Usage(1.0, 5)})
    assert answer.replicas == 2
    mine, theirs = answer.shares["alice"], board.report("r1", {"alice": Usage(9.0, 2)}).shares
    assert mine + theirs["alice"] == pytest.approx(1.0)  # the rate holds across replicas
    assert mine == pytest.approx((1 + 0.5) / (10 + 1.0))  # by demand, with a floor
    assert answer.elsewhere == {"alice": 2, "bob": 1}
    assert 0 < answer.shares["bob"] < 0.1  # asked nothing here: the floor only
    clock.now += 10  # r2 stops reporting: r1 alone has every client's whole limit
    assert board.report("r1", {"alice": Usage(9.0, 2)}).shares == {"alice": 1.0}


def shared_door(fallback: str, board: FlakyBoard, clock: Clock, replica: str = "r1"):
    cfg = AppConfig.model_validate({**LIMITED, "shared_limits_fallback": fallback})
    backlog = make_backlog(Replica(), clock)
    keys = KeyStore(cfg, clock=clock)
    shared = SharedLimits(
        keys, lambda: dict(backlog.per_client), board, replica, 0.5, fallback, clock
    )
    return Door(cfg, backlog, shared), keys, shared


def test_two_replicas_share_a_clients_limits_and_a_lost_board_falls_back() -> None:
    async def run() -> None:
        clock, board = Clock(), FlakyBoard()
        door1, keys1, shared1 = shared_door("closed", board, clock, "r1")
        door2, keys2, shared2 = shared_door("closed", board, clock, "r2")
        one, two = keys1.authenticate({}, "192.0.2.1"), keys2.authenticate({}, "192.0.2.1")
        works = [door1.admit(one, "interactive", 10, Deadline(60)) for _ in range(2)]
        for shared in (shared1, shared2, shared1):
            await shared.sync()
        assert two.elsewhere == 2  # with a cap of 3, one more request anywhere
        door2.admit(two, "interactive", 10, Deadline(60))
        with pytest.raises(RateLimited) as err:
            door2.admit(two, "interactive", 10, Deadline(60))
        assert err.value.code == "too_many_concurrent_requests"
        await shared2.sync()
        await shared1.sync()
        # Shares follow where the client asked (r1 first, then r2), and add up to its limit.
        assert one.requests.share + two.requests.share == pytest.approx(1.0, rel=0.01)
        assert one.chars.share == one.requests.share
        for w in works:
            w.close()

        board.down = True
        for _ in range(STALE_AFTER + 1):
            clock.now += 0.5
            await shared1.sync()
        with pytest.raises(Overloaded) as err:  # fallback "closed": limited clients wait
            door1.admit(one, "interactive", 10, Deadline(60))
        assert err.value.code == "limits_unavailable" and "Retry-After" in err.value.headers
        board.down = False
        clock.now += 10
        await shared1.sync()
        door1.admit(one, "interactive", 10, Deadline(60))  # the board answers again

    asyncio.run(run())


def test_with_fallback_local_a_lost_board_keeps_the_last_shares() -> None:
    async def run() -> None:
        clock, board = Clock(), FlakyBoard()
        door, keys, shared = shared_door("local", board, clock)
        client = keys.authenticate({}, "192.0.2.1")
        await shared.sync()
        board.down = True
        for _ in range(STALE_AFTER + 1):
            clock.now += 0.5
            await shared.sync()
        assert shared.stale and not shared.refusing
        for _ in range(3):
            door.admit(client, "interactive", 10, Deadline(60))
        with pytest.raises(RateLimited):  # its limits still hold, here
            door.admit(client, "interactive", 10, Deadline(60))

    asyncio.run(run())


def test_readiness_follows_the_controllers_running_replicas_not_their_load() -> None:
    async def run() -> None:
        clock = Clock()
        states = {"RUNNING": 1}
        asked = []

        def controller(app: str, deployment: str) -> dict[str, int]:
            asked.append((app, deployment))
            if states is None:
                raise ConnectionError("controller unreachable")
            return dict(states)

        ready = Readiness("chorus", "Synthesizer", 1.0, controller, clock)
        assert (await ready.check())["model_replicas"] == 1
        await asyncio.gather(*(ready.check() for _ in range(5)))
        assert asked == [("chorus", "Synthesizer")]  # one question per second at most
        states = {"STARTING": 1, "STOPPING": 1}  # the running one died or was unhealthy
        clock.now += 2
        with pytest.raises(Overloaded) as err:
            await ready.check()
        assert err.value.code == "not_ready" and "2 starting" in err.value.message
        states = None
        clock.now += 2
        with pytest.raises(Overloaded):
            await ready.check()

    asyncio.run(run())


async def admitted_per_s(split, seconds: float = 40.0, rate: float = 16.0) -> float:
    """A key limited to 4/s (burst 4) sending `rate`/s through two replicas that share its
    limits; `split(t)` is the share of its requests replica 0 gets at time t. Simulated time,
    reports every 0.5 s (staggered), as the ingress replicas make them."""
    cfg = AppConfig.model_validate(
        {
            "api_keys": [
                {
                    "name": "k",
                    "key": KEY,
                    "limits": {"requests_per_s": 4, "chars_per_s": None, "requests_burst": 4},
                }
            ]
        }
    )
    rng, clock = random.Random(7), Clock()
    board = FlakyBoard(clock)
    replicas = []
    for n in range(2):
        keys = KeyStore(cfg, clock=clock)
        replicas.append((keys, SharedLimits(keys, dict, board, f"r{n}", 0.5, "local", clock)))
    start, admitted, due = clock.now, 0, [0.0, 0.25]
    while clock.now < start + seconds:
        arrival = clock.now + rng.expovariate(rate)
        for n, (_, shared) in enumerate(replicas):
            while start + due[n] <= arrival:
                clock.now = max(clock.now, start + due[n])
                await shared.sync()
                due[n] += 0.5
        clock.now = arrival
        keys, _ = replicas[0 if rng.random() < split(clock.now - start) else 1]
        client = keys.authenticate(bearer(KEY))
        client.asked += 1
        if client.rate_wait_s(0) == 0:
            client.charge(0)
            admitted += 1
    return admitted / seconds


@pytest.mark.parametrize(
    "split",
    [lambda t: 0.5, lambda t: 0.8, lambda t: float(int(t / 10) % 2)],
    ids=["even", "80-20", "moving every 10 s"],
)
def test_shares_follow_where_a_clients_requests_arrive_without_passing_its_rate(split) -> None:
    per_s = asyncio.run(admitted_per_s(split))
    assert 4 * 0.85 <= per_s <= 4 * 1.05 + 4 / 40, per_s
