"""Limits across ingress replicas, measured: what a key limited to `--rate` requests/s gets
when it sends 4x that through two ingress replicas, with its limits shared (each replica
enforces its share, from the board) and with each replica enforcing them alone; then what
the board costs, against the design it replaced on the hot path (one call to a shared actor
per request).

    python -m load_tests.bench_limits [--seconds 12] [--rate 4]

The model replica runs `gpu_speed.GpuSpeedEngine` (an H200's measured speed, sleeping), so
the load is the serving layer's; one local Ray instance, the real HTTP proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import ray
from ray import serve

from load_tests.common import machine, save
from load_tests.gpu_speed import GpuSpeedEngine
from load_tests.load import offered
from load_tests.local import running_chorus
from serve_app.app import bind_app
from serve_app.clients import KeyStore
from serve_app.config import AppConfig
from serve_app.queue.shared import Board, Usage

KEY = "bench-limits-key-0123456789abcdef"


def app(rate: float, shared: bool):
    config = AppConfig.model_validate(
        {
            "shared_limits": shared,
            "api_keys": [
                {
                    "name": "capped",
                    "key": KEY,
                    "limits": {"requests_per_s": rate, "requests_burst": 4, "chars_per_s": None},
                }
            ],
        }
    )
    return bind_app(
        config,
        engine_cls=GpuSpeedEngine,
        ingress_options={"num_replicas": 2, "ray_actor_options": {"num_cpus": 0}},
        synthesizer_options={"ray_actor_options": {"num_cpus": 0}},
    )


async def board_calls(seconds: float, callers: int) -> dict:
    """One board actor asked by `callers` concurrent callers for `seconds`: its latency when
    asked one at a time, and the calls per second it answers at most."""
    board = ray.remote(num_cpus=0)(Board).remote(0.5)
    usage = {"capped": Usage(4.0, 1)}
    await board.report.remote("warm", usage)
    alone = []
    for _ in range(300):
        t0 = time.perf_counter()
        await board.report.remote("r0", usage)
        alone.append(time.perf_counter() - t0)
    done = 0
    end = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        nonlocal done
        while time.perf_counter() < end:
            await board.report.remote(f"r{n}", usage)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(callers)))
    ray.kill(board)
    return {
        "alone_ms_p50": round(statistics.median(alone) * 1000, 3),
        "calls_per_s": round(done / (time.perf_counter() - start), 1),
        "callers": callers,
    }


def local_check_us(n: int = 100_000) -> float:
    """Microseconds one local admission check of a limited key costs (key lookup, buckets)."""
    keys = KeyStore(AppConfig.model_validate({"api_keys": [{"name": "k", "key": KEY}]}))
    headers = {"authorization": f"Bearer {KEY}"}
    t0 = time.perf_counter()
    for _ in range(n):
        client = keys.authenticate(headers)
        client.rate_wait_s(100)
    return round((time.perf_counter() - t0) / n * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--rate", type=float, default=4)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {KEY}"}
    report: dict = {"rate_limit_per_s": args.rate, "offered_per_s": 4 * args.rate}
    with running_chorus(app(args.rate, shared=True)) as url:
        for shared in (True, False):
            serve.run(app(args.rate, shared), name="chorus", route_prefix="/")
            asyncio.run(offered(url, args.rate, 3, headers))  # both replicas see the key
            time.sleep(1)
            result = asyncio.run(offered(url, 4 * args.rate, args.seconds, headers))
            name = "shared" if shared else "per_replica"
            report[name] = result
            print(f"{name}: {result['ok_per_s']} ok/s of {4 * args.rate} offered", flush=True)
        report["board"] = asyncio.run(board_calls(5, 16))
        print(f"board: {report['board']}", flush=True)
    report["local_check_us"] = local_check_us()
    print(f"local check: {report['local_check_us']} us", flush=True)
    report |= {"machine": machine(), "args": vars(args)}
    print(f"saved {save('limits_cpu', report)}")


if __name__ == "__main__":
    main()
