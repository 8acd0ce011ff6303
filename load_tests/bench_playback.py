"""Streams as their listeners hear them: how soon speech starts, and whether it stops mid-way.

    python -m load_tests.bench_playback [--clients 1,4,8] [--seconds 60] [--open 0.5,0.9]
                                        [--args JSON] [--gpu-speed SPEEDUP]
                                        [--save-as playback_cpu]

The main job (`serve_app.local` with deploy/serve_config.yaml, the real voice) is started as
a subprocess; with `--gpu-speed`, the app runs instead with the engine as fast as a GPU
(`load_tests.gpu_speed`, H200 cost model divided by SPEEDUP; batches of 64, 32 items in
flight, as `load_tests.bench_serving`), so the question is which 64 items go together.
Streaming clients (`stream_format: audio`, pcm at 24 kHz) send texts of three to
four sentences:

- closed loop: `--clients` clients, each sending its next request when the last one ends, for
  `--seconds` each;
- open loop: requests arrive at random (Poisson) at each `--open` fraction of the capacity the
  largest closed-loop run served (in requests/s), for `--seconds` each.

A listener starts playing at the first audio byte and plays in real time; audio that arrives
after the listener would have needed it is a stall (playback waits for it, then goes on).
For every run: first audio p50/p99, the share of streams that stalled more than 50 ms in all,
the p99 of the streams' total stall, and the audio seconds served per second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from load_tests import servers as srv
from load_tests.common import machine, median, pct, save
from load_tests.texts import SENTENCES
from serve_app.queue.playback import Playback

BYTES_PER_S = 24000 * 2  # pcm: 16-bit mono at 24 kHz
STALL_S = 0.05  # a stall a listener notices
WARMUP_S = 5.0  # streams that start earlier are not counted


@dataclass
class Stream:
    """One streamed request as its listener hears it (the ingress's own model of a listener,
    `serve_app.queue.playback`, fed at the client)."""

    start: float
    status: int = 0
    playback: Playback = field(default_factory=Playback)

    def heard(self, at: float, size: int) -> None:
        """`size` bytes arrived at `at`."""
        self.playback.heard(size / BYTES_PER_S, at)

    @property
    def first_s(self) -> float | None:
        """First audio byte, after the request was sent."""
        started = self.playback.started
        return None if started is None else started - self.start

    @property
    def audio_s(self) -> float:
        return self.playback.heard_s

    @property
    def stall_s(self) -> float:
        return self.playback.stall_s


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(3, 4)))


async def stream(session: aiohttp.ClientSession, url: str, body: dict) -> Stream:
    s = Stream(time.perf_counter())
    async with session.post(url, json=body) as r:
        s.status = r.status
        if r.status != 200:
            await r.read()
            return s
        async for chunk in r.content.iter_any():
            if chunk:
                s.heard(time.perf_counter(), len(chunk))
    return s


def body(rng: random.Random, seed: int) -> dict:
    return {
        "model": "tts-1",
        "voice": "alloy",
        "input": text(rng),
        "response_format": "pcm",
        "stream_format": "audio",
        "seed": seed,
    }


async def closed_loop(url: str, clients: int, seconds: float) -> tuple[list[Stream], float]:
    speech, end = f"{url}/v1/audio/speech", time.perf_counter() + seconds
    done: list[Stream] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client(n: int) -> None:
            rng = random.Random(n)
            while time.perf_counter() < end:
                done.append(await stream(session, speech, body(rng, n * 100_000 + len(done))))
                if done[-1].status != 200:
                    await asyncio.sleep(1.0)  # refused: not straight back

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
    return done, time.perf_counter() - started


async def open_loop(url: str, rate: float, seconds: float) -> tuple[list[Stream], float]:
    speech, rng = f"{url}/v1/audio/speech", random.Random(7)
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        tasks = []
        while time.perf_counter() - started < seconds:
            tasks.append(asyncio.create_task(stream(session, speech, body(rng, len(tasks)))))
            await asyncio.sleep(rng.expovariate(rate))
        done = await asyncio.gather(*tasks)
    return list(done), time.perf_counter() - started


def summary(streams: list[Stream], elapsed_s: float, started: float) -> dict:
    counted = [s for s in streams if s.start - started >= WARMUP_S]
    ok = [s for s in counted if s.status == 200 and s.first_s is not None]
    first = [s.first_s for s in ok]
    stalls = [s.stall_s for s in ok]
    return {
        "streams": len(counted),
        "refused": sum(s.status != 200 for s in counted),
        "served_audio_s_per_s": round(sum(s.audio_s for s in streams) / elapsed_s, 2),
        "requests_per_s": round(len(streams) / elapsed_s, 3),
        "audio_s_per_stream": round(median([s.audio_s for s in ok]), 2),
        "first_audio_s": {"p50": round(median(first), 3), "p99": round(pct(first, 99), 3)},
        "stalled_share": round(sum(x > STALL_S for x in stalls) / max(1, len(ok)), 3),
        "stall_s": {"p50": round(median(stalls), 3), "p99": round(pct(stalls, 99), 3)},
    }


Run = Callable[[], Coroutine[Any, Any, tuple[list[Stream], float]]]


def run(label: str, coro_of: Run) -> dict:
    started = time.perf_counter()
    streams, elapsed = asyncio.run(coro_of())
    result = summary(streams, elapsed, started)
    print(label, json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--open", default="0.5,0.9", help="fractions of measured capacity")
    parser.add_argument("--args", type=json.loads, default={}, help="app args to override")
    parser.add_argument("--gpu-speed", type=float, metavar="SPEEDUP", help="GPU-speed engine")
    parser.add_argument("--save-as", default="playback_cpu")
    args = parser.parse_args()
    report: dict = {"machine": machine(), "args": vars(args), "closed": {}, "open": {}}
    with serving(args) as url:
        for n in (int(c) for c in args.clients.split(",")):
            report["closed"][n] = run(
                f"closed, {n} clients:", lambda n=n: closed_loop(url, n, args.seconds)
            )
        capacity = max(r["requests_per_s"] for r in report["closed"].values())
        report["capacity_requests_per_s"] = capacity
        for share in (float(f) for f in args.open.split(",") if f):
            report["open"][share] = run(
                f"open, {share:.0%} of {capacity} requests/s:",
                lambda s=share: open_loop(url, s * capacity, args.seconds),
            )
    print("saved", save(args.save_as, report))


@contextlib.contextmanager
def serving(args: argparse.Namespace) -> Iterator[str]:
    """The server's URL: the main job, or the app on the GPU-speed engine."""
    if args.gpu_speed:
        from load_tests.bench_serving import deploy
        from load_tests.local import free_port, running_chorus

        batching = {"max_batch_size": 64, "batch_wait_timeout_s": 0.005}
        app_args = {"items_in_flight": 32, "max_backlog_s": 600, "max_active_requests": 1024}
        app = deploy(1, args.gpu_speed, batching, app_args | args.args)
        with running_chorus(app, port=free_port()) as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with srv.running(srv.chorus(workdir, srv.free_port(), args.args), workdir) as chorus:
            yield chorus.url


if __name__ == "__main__":
    main()
