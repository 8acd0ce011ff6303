"""Admission under overload: rejection latency and accepted throughput at 1x, 2x and 4x
capacity, on the real voice.

    python -m load_tests.bench_admission [--seconds 30] [--loads 1,2,4] [--max-backlog-s 5]

First the capacity is measured: closed-loop clients send one-sentence requests (wav,
streamed, as in `compare`) until the server is saturated; capacity is their completed
requests per second. Then, for each load, requests arrive open-loop (Poisson) at that
multiple of capacity for `--seconds`, and every answer is recorded (`load.open_loop`):
accepted requests' latency and audio seconds per second, refusals' latency and status.
Beside each load, GET /healthz every 100 ms measures what any request costs through Serve's
proxy at that moment, the floor under the refusal latency. `--max-backlog-s` lowers the
server's `max_backlog_s` so that overload is reached within a short run (the default
config's 120 s would need minutes of 2x load to fill).
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp

from load_tests import load
from load_tests import servers as srv
from load_tests.common import machine, save
from load_tests.local import deploy_args, free_port, running_chorus
from load_tests.texts import SENTENCES
from serve_app.app import build_app


async def run(args: argparse.Namespace, port: int) -> dict:
    server = srv.Server("chorus", "Chorus", "/readyz", "/v1/audio/speech", port)
    server.floor_path = "/healthz"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        ask = load.asker(session, server, SENTENCES, args.timeout)
        await load.closed_loop(ask, args.clients, 5)  # warm-up: buckets, drain rate
        closed = await load.closed_loop(ask, args.clients, args.capacity_seconds)
        cap = closed["ok_per_s"]
        print(f"capacity: {cap:.2f} one-sentence requests/s", flush=True)
        floor = load.getter(session, server.url + server.floor_path)
        loads = {}
        for k in args.loads:
            await asyncio.sleep(args.max_backlog_s + 2)  # let the previous load drain
            result = await load.open_loop(ask, k * cap, args.seconds, int(k), floor)
            loads[f"{k:g}x"] = result
            print(f"{k:g}x: {result}", flush=True)
    return {"capacity_per_s": round(cap, 2), "closed": closed, "loads": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--capacity-seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--loads", default="1,2,4")
    parser.add_argument("--max-backlog-s", type=float, default=5)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--save-as", default="admission_cpu")
    args = parser.parse_args()
    args.loads = [float(x) for x in args.loads.split(",")]
    config = {**deploy_args(), "max_backlog_s": args.max_backlog_s}
    port = free_port()
    with running_chorus(build_app(config), port=port):
        report = asyncio.run(run(args, port))
    report |= {"machine": machine(), "args": vars(args)}
    print(f"saved {save(args.save_as, report)}")


if __name__ == "__main__":
    main()
