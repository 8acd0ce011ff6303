"""Capacity with 1, 2 and 4 model replicas, on a fake multi-node cluster on this machine.

    python -m load_tests.bench_scale_out [--replicas 1,2,4] [--clients 16] [--seconds 30]

A `ray.cluster_utils.Cluster` (a head and two worker nodes, all sharing this machine's cores)
runs the real app with the real voice; for each replica count the Synthesizer is redeployed
with that many replicas, each given its share of the cores as torch threads (so every step
uses the same number of threads in all). `--clients` closed-loop clients then send the usual
text mix (texts.py) for `--seconds`, streamed wav, and capacity is audio seconds delivered per
second. Reports `results/scale_out_cpu.json` and a Markdown table of the ratios to 1 replica.

On a machine with fewer cores than replicas the ratio measures what more replicas cost (they
share the same cores), not what they gain on a real cluster, where each has a node or a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import aiohttp
import httpx

from load_tests import load
from load_tests import servers as srv
from load_tests.common import machine, save
from load_tests.local import deploy_args, free_port, settled
from load_tests.texts import request_texts
from serve_app.app import bind_app
from serve_app.config import parse_app_args


def wait_ready(url: str, replicas: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not (settled(replicas) and httpx.get(f"{url}/readyz", timeout=10).status_code == 200):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{replicas} replicas not ready in {timeout_s} s")
        time.sleep(1)


async def measure(url: str, port: int, args: argparse.Namespace) -> dict:
    server = srv.Server("chorus", "Chorus", "/readyz", "/v1/audio/speech", port)
    texts = request_texts(400, seed=7)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await load.closed_loop(load.asker(session, server, texts[:8], 120), args.clients, 5)
        return await load.closed_loop(
            load.asker(session, server, texts, 120), args.clients, args.seconds
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()

    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    cores = os.cpu_count() or 1
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    for _ in range(2):
        cluster.add_node(num_cpus=4)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in [int(n) for n in args.replicas.split(",")]:
            threads = max(1, cores // replicas)
            config = parse_app_args({**deploy_args(), "cpu_threads": threads})
            app = bind_app(config, synthesizer_options={"num_replicas": replicas})
            serve.run(app, name="chorus", route_prefix="/", blocking=False)
            wait_ready(url, replicas)
            result = asyncio.run(measure(url, port, args))
            rows.append({"replicas": replicas, "torch_threads_each": threads, **result})
            print(
                f"{replicas} replicas x {threads} threads: {result['audio_s_per_s']} audio-s/s, "
                f"p50 {result['latency_s']['p50']} s, failed {result['failed']}",
                flush=True,
            )
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    base = rows[0]["audio_s_per_s"] or 1.0
    for row in rows:
        row["ratio_to_first"] = round(row["audio_s_per_s"] / base, 2)
    report = {"machine": machine(), "cores": cores, "args": vars(args), "rows": rows}
    print(f"saved {save('scale_out_cpu', report)}")
    print("| replicas | torch threads each | audio-s/s | ratio | p50 s | p99 s | failed |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lat = r["latency_s"]
        print(
            f"| {r['replicas']} | {r['torch_threads_each']} | {r['audio_s_per_s']} | "
            f"{r['ratio_to_first']} | {lat['p50']} | {lat['p99']} | {r['failed']} |"
        )


if __name__ == "__main__":
    main()
