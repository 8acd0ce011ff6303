"""A burst at a cold server, on real Serve with the fake engine: the door knows the model's speed
from the first request (the replica's own probe), so it admits only what it can finish within
max_backlog_s and refuses the rest at once, with the envelope and a Retry-After. The same right
after a user_config change that makes the model twice as slow (the fake engine's decoder in
float32 instead of float16), and while the model replica is still loading (a fresh deploy)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
from ray import serve

from tests.fakes import FakeEngine
from tests.helpers import speech_body
from tests.integration.conftest import assert_envelope, fake_app, wait_ready

pytestmark = pytest.mark.timeout(240)

BURST = 300
BATCH_S = 2.4  # the fake engine's time per batch in float32, whatever its size; half in fp16
MAX_BACKLOG_S = 36.0
ARGS = {"max_backlog_s": MAX_BACKLOG_S, "items_in_flight": 8}


def text(i: int) -> str:
    """Three sentences about as long as the replica's probe item (about 100 phoneme ids),
    since the fake engine's batch time does not grow with length as a real one does."""
    return (
        f"Request number {i} begins with this first sentence here. "
        "Its middle part is made of the second sentence you read. "
        "And then it ends with the third sentence, which is this one."
    )


async def burst(url: str) -> list[tuple[float, float, httpx.Response]]:
    """BURST three-sentence requests at once: (sent, answered, response) each, in seconds
    from the burst's start."""
    limits = httpx.Limits(max_connections=BURST + 10, max_keepalive_connections=BURST + 10)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        start = time.perf_counter()

        async def one(i: int) -> tuple[float, float, httpx.Response]:
            sent = time.perf_counter() - start
            body = speech_body(text(i), response_format="pcm")
            r = await c.post("/v1/audio/speech", json=body)
            return sent, time.perf_counter() - start, r

        return await asyncio.gather(*(one(i) for i in range(BURST)))


def check(answers: list[tuple[float, float, httpx.Response]], item_s: float) -> dict[str, float]:
    admitted = [(sent, done) for sent, done, r in answers if r.status_code == 200]
    refused = [(done, r) for _, done, r in answers if r.status_code != 200]
    statuses = sorted({r.status_code for _, _, r in answers})
    assert set(statuses) <= {200, 429, 503}, statuses  # no 504, no 500
    assert admitted and refused, statuses
    for _, r in refused:
        assert_envelope(r)
        assert int(r.headers["retry-after"]) >= 1
    for _, _, r in answers:
        if r.status_code == 200:
            assert len(r.content) > 0
    longest = max(done - sent for sent, done in admitted)
    assert longest <= MAX_BACKLOG_S + item_s, (longest, len(admitted))
    last_refusal = max(done for done, _ in refused)
    first_finish = min(done for _, done in admitted)
    assert last_refusal < first_finish, (last_refusal, first_finish)
    return {
        "admitted": len(admitted),
        "longest_s": round(longest, 2),
        "last_refusal_s": round(last_refusal, 2),
        "first_finish_s": round(first_finish, 2),
    }


def test_a_burst_at_a_cold_server_and_after_a_config_change_is_admitted_honestly(
    server: str,
) -> None:
    fast = {"max_batch_size": 4, "decoder_dtype": "float16"}
    with fake_app(server, "cold", ARGS, delay_s=BATCH_S, user_config=fast) as url:
        cold = check(asyncio.run(burst(url)), BATCH_S / 2)
        # The model becomes twice as slow, and the door must know at once. This is the call
        # Serve makes on each replica when a `serve deploy` changes the user_config.
        handle = serve.get_deployment_handle("Synthesizer", app_name="cold")
        handle.reconfigure.remote({**fast, "decoder_dtype": "float32"}).result(timeout_s=60)
        slower = check(asyncio.run(burst(url)), BATCH_S)
    print(f"cold: {cold}; after the change: {slower}")  # with -s: docs/keys-and-limits.md's figures
    assert cold["admitted"] >= 1.5 * slower["admitted"], (cold, slower)


LOAD_S = 20.0  # the fake engine's load, as a real voice's takes


def test_a_burst_while_the_model_replica_loads_is_refused_at_once_but_for_a_first_window(
    server: str,
) -> None:
    args = {**ARGS, "model_load_s": LOAD_S}
    engine = (FakeEngine, {"delay_s": 0.3, "load_s": LOAD_S})
    with fake_app(server, "loading", args, engine=engine, blocking=False) as url:
        wait_ready(url, "/v1/models")  # the ingress is up
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 503  # the model is not
        answers = asyncio.run(burst(url))
        refused = [(done, r) for _, done, r in answers if r.status_code != 200]
        admitted = [done - sent for sent, done, r in answers if r.status_code == 200]
        codes = Counter(assert_envelope(r)["code"] for _, r in refused)
        assert codes == {"model_loading": len(refused)}, codes
        # a first window only: 8 items in flight x a 100-phoneme sentence, 3 sentences each
        assert 1 <= len(admitted) <= 3, len(admitted)
        assert all(len(r.content) > 0 for _, _, r in answers if r.status_code == 200)
        assert max(admitted) <= MAX_BACKLOG_S, admitted
        # refused while the replica loads, not after it (or after a wait for its profile)
        assert max(done for done, _ in refused) < min(admitted)
        waits = [int(r.headers["retry-after"]) for _, r in refused]
        assert len(set(waits)) >= 10, sorted(waits)  # the herd is spread...
        assert min(waits) >= 1 and sorted(waits)[len(waits) // 2] >= LOAD_S / 4  # ...from then
        # once it runs, the door knows its speed and admits by it
        after = httpx.post(
            f"{url}/v1/audio/speech",
            json=speech_body(text(0), response_format="pcm"),
            timeout=60,
        )
        assert after.status_code == 200 and len(after.content) > 0
