"""An open server (no API keys): each client address is a client of the fair scheduler and has
its own limits; a forwarded address counts only from a trusted proxy. And readiness: a busy
model replica is ready; a dead or wedged one is not."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import ray

from load_tests.load import Background
from tests.fakes import FaultyEngine
from tests.helpers import race, speech_body
from tests.integration.conftest import assert_envelope, fake_app

pytestmark = pytest.mark.timeout(240)

BEHIND_PROXY = {"trusted_proxies": ["127.0.0.1"], "items_in_flight": 1, "max_backlog_s": 60}
LIMITED = {"open_limits": {"requests_per_s": 1, "requests_burst": 3}}


def via(address: str) -> dict[str, str]:
    """Headers of a request a reverse proxy on 127.0.0.1 forwards from `address`."""
    return {"X-Forwarded-For": address}


def speak(c: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    body = speech_body("Hello.", response_format="pcm")
    return c.post("/v1/audio/speech", json=body, headers=headers)


def test_a_flooding_address_does_not_starve_another(server: str) -> None:
    with fake_app(
        server, "open", BEHIND_PROXY, delay_s=0.1, user_config={"max_batch_size": 1}
    ) as url:
        groups = {"flood": (30, via("198.51.100.1")), "quiet": (3, via("198.51.100.2"))}
        ok = asyncio.run(race(url, groups, answers=60))
    # first come, first served would give the quiet address 3/33 (9%); its fair share is half
    assert ok["quiet"] / sum(ok.values()) >= 0.4, ok


def test_each_address_has_its_own_rate_limit_and_forwarded_ones_need_a_trusted_proxy(
    server: str,
) -> None:
    with (
        fake_app(server, "perip", {**BEHIND_PROXY, **LIMITED}, delay_s=0) as url,
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        assert speak(c, via("192.0.2.99")).status_code == 200  # the app has warmed up
        flood = [speak(c, via("198.51.100.1")) for _ in range(8)]
        other = speak(c, via("198.51.100.2"))
        spoofed = speak(c, {"X-Forwarded-For": "198.51.100.1, 198.51.100.3"})
    statuses = [r.status_code for r in flood]
    assert statuses[:3] == [200] * 3 and statuses.count(429) >= 3, statuses  # 3, then 1/s
    refused = next(r for r in flood if r.status_code == 429)
    error = assert_envelope(refused, 429)
    assert error["code"] == "rate_limit_exceeded" and int(refused.headers["retry-after"]) >= 1
    assert other.status_code == 200  # another address is not throttled by the first
    assert spoofed.status_code == 200  # the client is the proxy's nearest hop (.3), not .1

    untrusted = {**LIMITED, "trusted_proxies": ["10.0.0.0/8"]}  # 127.0.0.1 is not a proxy
    with (
        fake_app(server, "direct", untrusted, delay_s=0) as url,
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        statuses = [speak(c, via(f"198.51.100.{n}")).status_code for n in range(9)]
    # every request is from 127.0.0.1, whatever its header says: one client, one limit
    assert statuses.count(429) >= 3, statuses


@pytest.mark.front_door
def test_each_source_address_is_its_own_client_whichever_the_front_door(server: str) -> None:
    """Two machines (127.0.0.1 and 127.0.0.2), no proxy trusted: each has its own limit, and
    a header naming the other changes nothing. Behind Serve's proxy the ingress learns the
    peer from the proxy; in HAProxy mode from the X-Forwarded-For line chorus-haproxy has
    HAProxy append (without it, both would be HAProxy's 127.0.0.1: one client)."""
    other = httpx.HTTPTransport(local_address="127.0.0.2")
    with (
        fake_app(server, "peers", LIMITED, delay_s=0) as url,
        httpx.Client(base_url=url, timeout=60) as one,
        httpx.Client(base_url=url, timeout=60, transport=other) as two,
    ):
        assert speak(two, {}).status_code == 200  # the app has warmed up (one of .2's three)
        flood = [speak(one, {}).status_code for _ in range(6)]
        assert flood[:3] == [200] * 3 and 429 in flood, flood
        assert speak(two, {}).status_code == 200  # .1's flood is not .2's
        # .2 claiming to be others is still .2: its burst runs out as before
        posing = [speak(two, via(f"198.51.100.{n}")).status_code for n in range(6)]
    assert 429 in posing, posing


class Prober:
    """Polls /readyz every 0.1 s in a thread; records each status."""

    def __init__(self, url: str) -> None:
        self.url, self.statuses = url, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as c:
            while not self._stop.is_set():
                r = c.get(f"{self.url}/readyz")
                if r.status_code != 200:
                    assert_envelope(r, 503)
                self.statuses.append(r.status_code)
                time.sleep(0.1)

    def wait_for(self, status: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.statuses and self.statuses[-1] == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"/readyz never answered {status}: {self.statuses[-20:]}")


def long_requests(url: str, clients: int) -> Background:
    """`clients` clients sending long requests (30 sentences each), left when the block ends
    (their answers are not the point here)."""
    text = " ".join(f"Sentence {i} is here." for i in range(30))
    body = speech_body(text, stream_format="file")
    return Background(url, clients, lambda i: body, finish=False)


@pytest.mark.front_door
def test_readiness_holds_under_load_and_fails_while_no_model_replica_runs(
    server: str, tmp_path
) -> None:
    options = {"max_ongoing_requests": 2, "user_config": {"max_batch_size": 1}}
    with (
        fake_app(server, "busy", {"items_in_flight": 2}, delay_s=0.3, **options) as url,
        long_requests(url, 8),  # ~70 s of model work queued at one replica
    ):
        with Prober(url) as busy:
            time.sleep(6)
        assert busy.statuses and set(busy.statuses) == {200}, busy.statuses
        victim = next(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::busy#Synthesizer")
        )
        with Prober(url) as killed:
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            killed.wait_for(503)
            killed.wait_for(200)  # Serve started a replacement

    flag = tmp_path / "hung"
    engine = (FaultyEngine, {"hang_once": str(flag)})
    options = {
        "user_config": {"stall_timeout_s": 1.0},
        "health_check_period_s": 1,
        "health_check_timeout_s": 5,
        "graceful_shutdown_timeout_s": 1,
    }
    with fake_app(server, "wedge", engine=engine, **options) as url, Prober(url) as wedged:
        wedged.wait_for(200)
        with long_requests(url, 1):  # its first batch never returns
            wedged.wait_for(503)  # the health check saw the stalled batch
            wedged.wait_for(200)
    assert flag.exists()
