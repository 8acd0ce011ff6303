"""A burst of requests at a server whose model replica is still loading, and again once it is
ready: what is admitted, what is refused, how fast, and with what Retry-After.

    python -m load_tests.bench_burst [--burst 300] [--sentences 3] [--args JSON]
                                     [--cold-after-s S] [--cold-only] [--save-as burst_cpu]

The main job (`serve_app.local` with deploy/serve_config.yaml, the real voice) is started as
a subprocess. As soon as its ingress answers (`GET /v1/models`: the model replica is still
loading its voice) `--burst` whole-file requests of `--sentences` sentences each (wav) are
sent at once, all from one client address. When every one is answered, the run waits for
/readyz and an empty queue, and sends the same burst again. For each burst: requests
admitted and refused (by status and error code), refusal latency, the Retry-After values the
refused were given (how spread they are), and when the admitted requests finished, against
the server's `max_backlog_s`. `--args` overrides the app's args (e.g. '{"cpu_engine_nice": 0}'
for the engine at normal priority).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import httpx

from load_tests import servers as srv
from load_tests.common import machine, median, pct, save
from load_tests.local import deploy_args
from load_tests.texts import SENTENCES


def text(i: int, sentences: int) -> str:
    return " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(sentences))


async def one(session: aiohttp.ClientSession, url: str, body: dict, start: float) -> dict:
    """One request: when it was answered (from the burst's start), its status, error code and
    Retry-After."""
    async with session.post(url, json=body) as r:
        data = await r.read()
        answer = {"status": r.status, "done_s": time.perf_counter() - start}
        if r.status != 200:
            answer["retry_after_s"] = int(r.headers.get("retry-after", 0))
            try:
                answer["code"] = (await r.json(content_type=None))["error"]["code"]
            except (ValueError, KeyError, TypeError):
                answer["code"] = data[:80].decode(errors="replace")
        return answer


async def burst(url: str, count: int, sentences: int) -> list[dict]:
    bodies = [
        {
            "model": "tts-1",
            "voice": "alloy",
            "input": text(i, sentences),
            "response_format": "wav",
            "stream_format": "file",
            "seed": i,
        }
        for i in range(count)
    ]
    timeout = aiohttp.ClientTimeout(total=900)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        speech = f"{url}/v1/audio/speech"
        return await asyncio.gather(*(one(session, speech, b, start) for b in bodies))


def summary(answers: list[dict], max_backlog_s: float) -> dict:
    admitted = sorted(a["done_s"] for a in answers if a["status"] == 200)
    refused = [a for a in answers if a["status"] != 200]
    waits = [a["retry_after_s"] for a in refused]
    latency = [a["done_s"] for a in refused]

    def spread(values: list[float]) -> dict | None:
        if not values:
            return None
        return {
            "min": round(min(values), 2),
            "p10": round(pct(values, 10), 2),
            "p50": round(median(values), 2),
            "p90": round(pct(values, 90), 2),
            "max": round(max(values), 2),
        }

    return {
        "sent": len(answers),
        "admitted": len(admitted),
        "refused": len(refused),
        "by_code": dict(Counter(f"{a['status']} {a.get('code', '')}".strip() for a in answers)),
        "refusal_s": spread(latency),
        "retry_after_s": spread(waits),
        "retry_after_distinct": len(set(waits)),
        "admitted_finished_s": spread(admitted),
        "admitted_past_max_backlog": sum(done > max_backlog_s for done in admitted),
        "max_backlog_s": max_backlog_s,
    }


def wait_for(url: str, path: str, timeout_s: float = 300, ok=lambda r: r.status_code == 200):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ok(httpx.get(url + path, timeout=5)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}{path} did not answer as expected within {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--sentences", type=int, default=3)
    parser.add_argument("--args", type=json.loads, default={}, help="app args to override")
    parser.add_argument(
        "--cold-after-s",
        type=float,
        default=0.0,
        help="wait this long after /v1/models first answers before the cold burst",
    )
    parser.add_argument("--cold-only", action="store_true", help="skip the burst once ready")
    parser.add_argument("--save-as", default="burst_cpu")
    args = parser.parse_args()
    max_backlog_s = float({**deploy_args(), **args.args}["max_backlog_s"])
    report: dict = {"machine": machine(), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = srv.chorus(workdir, srv.free_port(), args.args)
        server.ready_path = "/v1/models"  # the ingress answers; the model replica may not
        with srv.running(server, workdir) as chorus:
            time.sleep(args.cold_after_s)
            ready = httpx.get(chorus.url + "/readyz", timeout=5)
            report["readyz_at_cold_burst"] = ready.status_code
            cold = asyncio.run(burst(chorus.url, args.burst, args.sentences))
            report["cold"] = summary(cold, max_backlog_s)
            print("cold:", report["cold"], flush=True)
            if not args.cold_only:
                wait_for(chorus.url, "/readyz")
                wait_for(chorus.url, "/v1/queue", ok=lambda r: r.json()["requests"] == 0)
                warm = asyncio.run(burst(chorus.url, args.burst, args.sentences))
                report["ready"] = summary(warm, max_backlog_s)
                print("ready:", report["ready"], flush=True)
    print(f"saved {save(args.save_as, report)}")


if __name__ == "__main__":
    main()
