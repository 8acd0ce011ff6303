"""Time to first audio versus full latency, streamed, for 1-, 5- and 20-sentence inputs.

    python -m load_tests.bench_streaming [--sizes 1,5,20] [--repeats 5] [--load-clients 8]
                                         [--start-windows 2,8]

A probe client sends `stream_format: audio` (pcm) requests one after another and times the
first audio byte and the last. It runs alone, then beside `--load-clients` closed-loop clients
sending one- to three-sentence requests; under load it also compares the estimated start
that SSE clients are shown (`speech.queue`) with their actual first audio. The whole run
repeats for each starting look-ahead window (`lookahead_start_items`), so the effect of the
window on first audio under load is measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import httpx
from ray import serve

from load_tests.common import machine, median, pct, save
from load_tests.load import Background
from load_tests.local import deploy_args, running_chorus
from load_tests.texts import SENTENCES
from serve_app.app import build_app


def text_of(sentences: int, offset: int) -> str:
    return " ".join(SENTENCES[(offset + i) % len(SENTENCES)] for i in range(sentences))


async def probe(c: httpx.AsyncClient, text: str, seed: int) -> tuple[float, float, float]:
    """(time to first audio, full latency, audio seconds) of one streamed request."""
    body = {
        "model": "tts-1",
        "voice": "alloy",
        "input": text,
        "response_format": "pcm",
        "stream_format": "audio",
        "seed": seed,
    }
    t0 = time.perf_counter()
    first, size = None, 0
    async with c.stream("POST", "/v1/audio/speech", json=body) as r:
        r.raise_for_status()
        async for chunk in r.aiter_raw():
            if chunk and first is None:
                first = time.perf_counter() - t0
            size += len(chunk)
    assert first is not None
    return first, time.perf_counter() - t0, size / 2 / 24000


async def estimate_probe(c: httpx.AsyncClient, text: str, seed: int) -> tuple[float, float]:
    """(estimated start from the first `speech.queue` event, actual time to first audio)."""
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    t0 = time.perf_counter()
    estimate = None
    async with c.stream(
        "POST",
        "/v1/audio/speech",
        json={**body, "stream_format": "sse", "chorus_events": True, "seed": seed},
    ) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            if event["type"] == "speech.queue" and estimate is None:
                estimate = event["estimated_start_s"]
            elif event["type"] == "speech.audio.delta":
                first = time.perf_counter() - t0
                break
    return (float("nan") if estimate is None else estimate), first


def background_body(i: int) -> dict:
    """Background request `i`: one to three sentences, whole-file wav, its own seed."""
    rng = random.Random(i)
    text = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"}
    return body | {"stream_format": "file", "seed": rng.randrange(2**31)}


async def measure(url: str, sizes: list[int], repeats: int, load_clients: int) -> list[dict]:
    rows = []
    with Background(url, load_clients, background_body) as load:
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            if load_clients:
                await asyncio.sleep(3)  # let the queue fill
            for n in sizes:
                runs = [await probe(c, text_of(n, k), 1000 + k) for k in range(repeats)]
                first, full, audio = ([r[i] for r in runs] for i in range(3))
                rows.append(
                    {
                        "sentences": n,
                        "load_clients": load_clients,
                        "first_audio_p50_s": median(first),
                        "first_audio_p95_s": pct(first, 95),
                        "full_p50_s": median(full),
                        "full_p95_s": pct(full, 95),
                        "audio_s": median(audio),
                        "first_over_full": median(first) / median(full),
                    }
                )
            if load_clients:  # how good is the wait estimate a queued client is shown?
                pairs = [await estimate_probe(c, text_of(1, k), 2000 + k) for k in range(repeats)]
                for row in rows:
                    row["estimated_start_p50_s"] = median([p[0] for p in pairs])
                    row["sse_first_audio_p50_s"] = median([p[1] for p in pairs])
    if load_clients:
        for row in rows:
            row["background_requests"] = len(load.answers)
            row["background_errors"] = len(load.failures())
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1,5,20")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load-clients", type=int, default=8)
    parser.add_argument("--start-windows", default="2,8")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]

    rows = []
    with running_chorus(build_app(deploy_args())) as url:
        for window in map(int, args.start_windows.split(",")):
            app_args = {**deploy_args(), "lookahead_start_items": window}
            serve.run(build_app(app_args), name="chorus", route_prefix="/")
            asyncio.run(measure(url, [1, 5], 1, 0))  # warm-up
            for clients in (0, args.load_clients):
                for row in asyncio.run(measure(url, sizes, args.repeats, clients)):
                    row["start_window"] = window
                    rows.append(row)
                    if "estimated_start_p50_s" in row and row["sentences"] == sizes[-1]:
                        print(
                            f"start window {window}  load {clients:2d}  shown estimated start "
                            f"p50 {row['estimated_start_p50_s']:.2f}s vs first audio p50 "
                            f"{row['sse_first_audio_p50_s']:.2f}s",
                            flush=True,
                        )
                    print(
                        f"start window {window}  load {clients:2d}  {row['sentences']:2d} "
                        f"sentences ({row['audio_s']:5.1f} s audio): first audio p50 "
                        f"{row['first_audio_p50_s']:.2f}s p95 {row['first_audio_p95_s']:.2f}s | "
                        f"full p50 {row['full_p50_s']:.2f}s | first/full "
                        f"{row['first_over_full']:.0%}",
                        flush=True,
                    )
    path = save("streaming_cpu", {"machine": machine(), "repeats": args.repeats, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
