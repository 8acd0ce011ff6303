"""Admission under overload: rejection latency and accepted throughput at 1x, 2x and 4x
capacity, on the real voice.

    python -m load_tests.bench_admission [--seconds 30] [--loads 1,2,4] [--max-backlog-s 5]

First the capacity is measured: closed-loop clients send one-sentence requests (pcm, whole
response) until the server is saturated; capacity is their completed requests per second.
Then, for each load, requests arrive open-loop (Poisson) at that multiple of capacity for
`--seconds`, and every answer is recorded: accepted (200) requests' latency and the audio
seconds delivered per second; refused (503/429) requests' latency, status and Retry-After.
Beside each load, GET /healthz every 100 ms measures what any request costs through Serve's
proxy at that moment, the floor under the rejection latency. `--max-backlog-s` lowers the
server's `max_backlog_s` so that overload is reached within a short run (the default
config's 120 s would need minutes of 2x load to fill).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import httpx

from load_tests.common import machine, median, pct, save
from load_tests.local import deploy_args, running_chorus
from load_tests.texts import SENTENCES
from serve_app.app import build_app


def body(i: int) -> dict:
    text = SENTENCES[i % len(SENTENCES)]
    return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}


async def capacity(c: httpx.AsyncClient, seconds: float, clients: int) -> float:
    """Completed one-sentence requests per second with `clients` closed-loop clients."""
    done = 0
    end = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < end:
            r = await c.post("/v1/audio/speech", json=body(i))
            r.raise_for_status()
            done += 1
            i += clients

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return done / (time.perf_counter() - start)


async def open_loop(c: httpx.AsyncClient, rate: float, seconds: float, seed: int) -> dict:
    """Poisson arrivals at `rate` per second for `seconds`; every answer, summarised."""
    rng = random.Random(seed)
    accepted: list[float] = []
    refused: list[float] = []
    retry_after: list[int] = []
    statuses: dict[int, int] = {}
    audio_s = 0.0

    async def one(i: int) -> None:
        nonlocal audio_s
        t0 = time.perf_counter()
        r = await c.post("/v1/audio/speech", json=body(i))
        took = time.perf_counter() - t0
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code == 200:
            accepted.append(took)
            audio_s += len(r.content) / 2 / 24000
        else:
            refused.append(took)
            if "retry-after" in r.headers:
                retry_after.append(int(r.headers["retry-after"]))

    floor: list[float] = []

    async def probe() -> None:
        """GET /healthz every 100 ms: any request's cost through Serve's proxy right now."""
        while True:
            t0 = time.perf_counter()
            await c.get("/healthz")
            floor.append(time.perf_counter() - t0)
            await asyncio.sleep(0.1)

    prober = asyncio.create_task(probe())
    tasks = []
    start = time.perf_counter()
    i, due = 0, 0.0
    while due < seconds:  # arrival times fixed in advance: a slow answer delays no one
        await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i)))
        i += 1
        due += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    prober.cancel()
    ms = 1000
    return {
        "offered_per_s": round(i / seconds, 2),
        "sent": i,
        "statuses": statuses,
        "accepted_per_s": round(len(accepted) / elapsed, 2),
        "audio_s_per_s": round(audio_s / elapsed, 2),
        "accepted_latency_ms": {
            "p50": round(median(accepted) * ms),
            "p99": round(pct(accepted, 99) * ms),
        },
        "rejected_share": round(len(refused) / max(1, i), 3),
        "rejection_latency_ms": {
            "p50": round(median(refused) * ms, 1),
            "p99": round(pct(refused, 99) * ms, 1),
            "max": round(max(refused, default=float("nan")) * ms, 1),
        },
        "healthz_latency_ms": {
            "p50": round(median(floor) * ms, 1),
            "p99": round(pct(floor, 99) * ms, 1),
        },
        "retry_after_s": {
            "min": min(retry_after, default=None),
            "max": max(retry_after, default=None),
        },
    }


async def run(args: argparse.Namespace, url: str) -> dict:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        await capacity(c, 5, args.clients)  # warm-up: buckets, drain rate, phonemes per char
        cap = await capacity(c, args.capacity_seconds, args.clients)
        print(f"capacity: {cap:.2f} one-sentence requests/s")
        loads = {}
        for k in args.loads:
            await asyncio.sleep(args.max_backlog_s + 2)  # let the previous load drain
            loads[f"{k:g}x"] = result = await open_loop(c, k * cap, args.seconds, seed=int(k))
            print(f"{k:g}x: {result}")
    return {"capacity_per_s": round(cap, 2), "loads": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--capacity-seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--loads", default="1,2,4")
    parser.add_argument("--max-backlog-s", type=float, default=5)
    args = parser.parse_args()
    args.loads = [float(x) for x in args.loads.split(",")]
    config = {**deploy_args(), "max_backlog_s": args.max_backlog_s}
    with running_chorus(build_app(config)) as url:
        report = asyncio.run(run(args, url))
    report |= {"machine": machine(), "args": vars(args)}
    print(f"saved {save('admission_cpu', report)}")


if __name__ == "__main__":
    main()
