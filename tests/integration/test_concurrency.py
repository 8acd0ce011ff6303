"""Many users at once: each gets exactly its own audio, and a vanished client harms nobody."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from tests.helpers import TEXTS, pcm16, speech_body
from tests.integration.conftest import speech

pytestmark = pytest.mark.timeout(240)

# 16 different texts (two sentences each from the pool), each with its own seed.
JOBS = [(f"{TEXTS[i % len(TEXTS)]} {TEXTS[(i * 5 + 3) % len(TEXTS)]}", 1000 + i) for i in range(16)]


@pytest.mark.front_door
def test_sixteen_concurrent_requests_get_exactly_their_own_audio(client, server) -> None:
    alone = [
        pcm16(speech(client, input=text, seed=seed, response_format="pcm").content)
        for text, seed in JOBS
    ]

    async def together() -> list[bytes]:
        async with httpx.AsyncClient(base_url=server, timeout=180) as c:
            responses = await asyncio.gather(
                *(
                    c.post(
                        "/v1/audio/speech",
                        json=speech_body(text, seed=seed, response_format="pcm"),
                    )
                    for text, seed in JOBS
                )
            )
        assert all(r.status_code == 200 for r in responses)
        return [r.content for r in responses]

    concurrent = [pcm16(body) for body in asyncio.run(together())]
    for i, (mine, reference) in enumerate(zip(concurrent, alone, strict=True)):
        assert len(mine) == len(reference), f"request {i} got audio of another length"
        # Batched and alone differ by float rounding only (<= 1e-4), i.e. <= ~3 LSB.
        assert np.abs(mine - reference).max() <= 4 / 32767, f"request {i} got other audio"


@pytest.mark.front_door
def test_client_that_vanishes_mid_request_does_not_hurt_others(client, server) -> None:
    long_text = " ".join(TEXTS * 6)

    async def vanish() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=180) as c:
            task = asyncio.create_task(
                c.post(
                    "/v1/audio/speech",
                    json=speech_body(long_text),
                )
            )
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(vanish())
    after = speech(client, input="Still here.", response_format="wav")
    assert after.status_code == 200
    assert client.get("/readyz").status_code == 200
