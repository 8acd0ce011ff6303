"""Chorus served from a GPU, end to end, against its engine alone at the same settings.

    python -m load_tests.bench_server_gpu [--config deploy/serve_config.gpu.yaml]
        [--clients 64,128] [--seconds 30] [--ingress 4] [--engine-seconds 20]

1. **Engine alone**, in this process, with the Synthesizer's `user_config` from the config
   (batch size, decoder precision and compilation): batches of `max_batch_size` sentence items
   of the standard request mix (load_tests.texts), fresh seeds each batch: audio-s/s.
2. **The app as the config deploys it** (its args, each deployment's options and user_config;
   API keys off and HTTP on 127.0.0.1), one Synthesizer replica on the GPU and `--ingress`
   ingress replicas, on a local Ray instance started here. Closed-loop clients send texts of
   the request mix (one sentence to ten) as wav: streamed, whole files, and both alternating.
   Per phase: served audio-s/s and its share of the engine alone, first audio and latency
   p50/p99, statuses, GPU utilization and memory (nvidia-smi every 0.5 s), the batches the
   replica formed (mean size, sizes seen, padding efficiency) and CPU per item by process.

Results go to `results/server_gpu_<device>.json`. Without CUDA it checks itself on the CPU
(the Synthesizer asks for no GPU); the figures then mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import torch
import yaml

from load_tests import load, phonemes
from load_tests.common import machine, save
from load_tests.local import free_port, running_chorus, settled
from load_tests.servers import cpu_seconds, cpu_spent
from load_tests.texts import SENTENCES, request_texts
from serve_app.app import bind_app
from serve_app.config import SynthesizerUserConfig, parse_app_args
from serve_app.model.engines.piper import PiperEngine
from serve_app.model.synthesizer import DEFAULT_BATCH

GPU_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "serve_config.gpu.yaml"
DELIVERIES = ("audio", "file", "mixed")  # streamed, whole files, alternating


def engine_alone(user_config: dict, seconds: float, device: str) -> dict[str, Any]:
    """Audio-seconds per second of the engine in this process at the replica's settings."""
    settings = SynthesizerUserConfig.model_validate(user_config)
    batch = settings.max_batch_size or DEFAULT_BATCH[device]
    start = time.perf_counter()
    engine = PiperEngine([phonemes.VOICE])
    engine.load(device)
    engine.reconfigure(settings)
    ready_s = time.perf_counter() - start
    pool = phonemes.mix_items(4096, seed=5)
    rate = engine.sample_rate(phonemes.VOICE.id)
    engine.synthesize(pool[:batch])  # this batch size's first run
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start, samples, k, efficiency = time.perf_counter(), 0, 0, []
    while time.perf_counter() - start < seconds:
        items = [replace(pool[(k + j) % len(pool)], seed=10**6 + k + j) for j in range(batch)]
        samples += sum(a.size for a in engine.synthesize(items))
        efficiency.append(engine.padding_efficiency)
        k += batch
    sync()
    elapsed = time.perf_counter() - start
    status = engine.status()
    engine.close()
    return {
        "batch": batch,
        "audio_s_per_s": round(samples / rate / elapsed, 1),
        "padding_efficiency": round(statistics.mean(efficiency), 3),
        "load_and_tune_s": round(ready_s, 1),
        "engine": status,
    }


class GpuSampler:
    """nvidia-smi's utilization and memory every 0.5 s while a phase runs (none on a CPU)."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float]] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used"]
        try:
            self._proc = subprocess.Popen(
                [*query, "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        except OSError:
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                util, mem = (float(v) for v in line.split(",")[:2])
            except ValueError:
                continue
            self.rows.append((util, mem))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    def summary(self) -> dict[str, Any] | None:
        if not self.rows:
            return None
        util = [u for u, _ in self.rows]
        return {
            "samples": len(util),
            "util_mean_pct": round(statistics.mean(util), 1),
            "util_p50_pct": statistics.median(util),
            "memory_max_mib": max(m for _, m in self.rows),
        }


def replica_stats(replicas: int = 1) -> dict[str, dict[str, Any]]:
    """Each model replica's `stats()`, by replica id (calls go to any replica: ask until
    every one has answered)."""
    from ray import serve

    handle = serve.get_deployment_handle("Synthesizer", app_name="chorus")
    found: dict[str, dict[str, Any]] = {}
    for _ in range(50 * replicas):
        stats = handle.stats.remote().result(timeout_s=60)
        found[stats["replica"]] = stats
        if len(found) == replicas:
            return found
    raise RuntimeError(f"only {len(found)} of {replicas} model replicas answered")


def batches_between(before: dict, after: dict) -> dict[str, Any]:
    """The batches the model replicas formed between two `replica_stats()`."""
    sizes: Counter[int] = Counter()
    items = batches = padded = oom = 0
    padding = busy = 0.0
    for replica, now in after.items():
        then = before[replica]
        items += now["items"] - then["items"]
        batches += now["batches"] - then["batches"]
        sizes.update({int(k): v for k, v in now["batch_sizes"].items()})
        sizes.subtract({int(k): v for k, v in then["batch_sizes"].items()})
        padded += now["padding_batches"] - then["padding_batches"]
        padding += now["padding_efficiency_sum"] - then["padding_efficiency_sum"]
        oom += now["out_of_memory"] - then["out_of_memory"]
        busy += now["busy_s"] - then["busy_s"]
    return {
        "items": items,
        "batches": batches,
        "items_per_batch": round(items / max(1, batches), 1),
        "batch_sizes": {k: v for k, v in sorted(sizes.items()) if v},
        "padding_efficiency": round(padding / padded, 3) if padded else None,
        "out_of_memory": oom,
        "batch_ms": round(busy * 1e3 / max(1, batches), 1),
        "busy_s": round(busy, 2),
    }


async def drive(
    url: str, clients: int, seconds: float, delivery: str, texts: list[str] | None = None
) -> dict:
    """Closed-loop clients speaking `texts` (default: the request mix) as wav."""
    texts = texts or request_texts(4096, seed=clients)

    async def ask(i: int) -> load.Answer:
        mode = delivery if delivery != "mixed" else ("audio", "file")[i % 2]
        body = {"model": "tts-1", "voice": "alloy", "input": texts[i % len(texts)]}
        body |= {"response_format": "wav", "stream_format": mode, "seed": i}
        return await load.post(session, url + "/v1/audio/speech", body, 300)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await load.closed_loop(ask, clients, seconds)


def phase(
    url: str,
    clients: int,
    seconds: float,
    delivery: str,
    alone: float,
    replicas: int = 1,
    texts: list[str] | None = None,
) -> dict:
    before, before_cpu = replica_stats(replicas), cpu_seconds(os.getpid())
    with GpuSampler() as gpu:
        result = asyncio.run(drive(url, clients, seconds, delivery, texts))
    after, after_cpu = replica_stats(replicas), cpu_seconds(os.getpid())
    batches = batches_between(before, after)
    # NOTE: near 1 per replica, the replica's engine thread is the limit (its host-side work,
    # if the GPU is idle); far below, items do not reach it fast enough (ingress, event loop).
    batches["busy_share"] = round(batches.pop("busy_s") / result["elapsed_s"], 3)
    return {
        "clients": clients,
        "delivery": delivery,
        "statuses": result["statuses"],
        "audio_s_per_s": result["audio_s_per_s"],
        "served_vs_engine_alone": round(result["audio_s_per_s"] / alone, 3),
        "ttfa_s": result["ttfa_s"],
        "latency_s": result["latency_s"],
        "gpu": gpu.summary(),
        "batches": batches,
        **cpu_spent(before_cpu, after_cpu, batches["items"], result["elapsed_s"]),
    }


async def speak(url: str, text: str, seed: int) -> np.ndarray:
    """One whole wav file's samples."""
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"}
    body |= {"stream_format": "file", "seed": seed}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/v1/audio/speech", json=body) as r,
    ):
        r.raise_for_status()
        data = await r.read()
    return np.frombuffer(data[data.index(b"data") + 8 :], dtype="<i2").astype(np.int32)


def under_memory_pressure(url: str, clients: int, seconds: float, free_gib: float, models: int):
    """Memory taken by this process until `free_gib` is left on the GPU, then long whole-file
    requests: batches that no longer fit run out of memory and are split (`Synthesizer`).
    Every request must still get its audio, the same as without the pressure."""
    text = " ".join(SENTENCES[k] for k in (2, 6, 7, 9, 11))
    reference = asyncio.run(speak(url, text, 7))
    free, _ = torch.cuda.mem_get_info()
    held = torch.empty(max(0, free - int(free_gib * 2**30)), dtype=torch.uint8, device="cuda")
    try:
        long_texts = [" ".join(random.Random(k).choices(SENTENCES, k=10)) for k in range(64)]
        row = phase(url, clients, seconds, "file", float("nan"), models, long_texts)
        again = asyncio.run(speak(url, text, 7))
    finally:
        del held
        torch.cuda.empty_cache()
    same_length = again.size == reference.size
    row["held_gib"] = round((free / 2**30) - free_gib, 1)
    row["same_audio_as_without_pressure"] = {
        "same_length": same_length,
        "max_diff_lsb": int(np.abs(again - reference).max()) if same_length else None,
    }
    return row


def app_from_config(
    path: Path, ingress: int, cuda: bool, models: int = 1, gpus_per_model: float = 1
) -> tuple[Any, dict]:
    """The app `path` deploys, with fixed replica counts (`models` model replicas asking for
    `gpus_per_model` each) and no API keys; and its options."""
    config = yaml.safe_load(path.read_text())["applications"][0]
    args = {k: v for k, v in config["args"].items() if k != "api_keys_file"}
    options = {d.pop("name"): d for d in config["deployments"]}
    for name, count in (("Ingress", ingress), ("Synthesizer", models)):
        options[name].pop("autoscaling_config", None)
        options[name]["num_replicas"] = count
    options["Synthesizer"]["ray_actor_options"]["num_gpus"] = gpus_per_model if cuda else 0
    if not cuda:  # the self-check: every replica fits on a small CPU machine, CPU batches
        for name in options:
            options[name]["ray_actor_options"]["num_cpus"] = 0.25
        options["Synthesizer"].get("user_config", {}).pop("max_batch_size", None)
    app = bind_app(
        parse_app_args(args),
        synthesizer_options=options["Synthesizer"],
        ingress_options=options["Ingress"],
    )
    return app, {"args": args, "deployments": options}


def shared_gpu(args: argparse.Namespace, cuda: bool, alone: float) -> dict:
    """`args.shared` model replicas with 1/shared GPU each, on a Ray instance of their own:
    throughput, then memory pressure.

    NOTE: a fresh start, not `serve.run` over the running app: that restarts every replica
    as a rollout, and a rolled ingress waits up to its graceful_shutdown_timeout_s (330 s in
    the GPU config) for streams to finish; on the H200 it outlasted the device's time."""
    share = round(1 / args.shared, 3)
    app, _ = app_from_config(args.config, args.ingress, cuda, args.shared, share)
    start = time.perf_counter()
    out: dict[str, Any] = {"models": args.shared, "num_gpus": share}
    with running_chorus(app, port=free_port(), ready_timeout_s=600) as url:
        while not settled(args.shared):  # ready with one model replica; wait for all
            if time.perf_counter() - start > 600:
                raise TimeoutError(f"{args.shared} model replicas did not start in 600 s")
            time.sleep(0.5)
        out["ready_s"] = round(time.perf_counter() - start, 1)
        clients = int(args.clients.split(",")[-1])
        out["phase"] = phase(url, clients, args.seconds, "audio", alone, args.shared)
        print(f"{args.shared} model replicas at num_gpus {share}:", out, flush=True)
        if cuda:
            seconds = args.seconds / 2
            pressure = under_memory_pressure(url, clients, seconds, args.free_gib, args.shared)
            out["memory_pressure"] = pressure
            print("under memory pressure:", pressure, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=GPU_CONFIG)
    parser.add_argument("--clients", default="64,128", help="one streamed phase each")
    parser.add_argument("--seconds", type=float, default=30, help="per phase")
    parser.add_argument("--ingress", type=int, default=4, help="ingress replicas")
    parser.add_argument("--engine-seconds", type=float, default=20)
    parser.add_argument("--shared", type=int, default=2, help="model replicas sharing the GPU")
    parser.add_argument("--free-gib", type=float, default=1.0, help="left under pressure")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    app, deployed = app_from_config(args.config, args.ingress, cuda)
    user_config = deployed["deployments"]["Synthesizer"].get("user_config", {})
    report: dict[str, Any] = {"machine": machine(), "bench_args": vars(args) | {
        "config": str(args.config)}, "deployed": deployed}  # fmt: skip
    report["gpu"] = torch.cuda.get_device_name() if cuda else None
    name = "server_gpu_" + (report["gpu"] or device).replace(" ", "_").lower()
    report["engine_alone"] = alone = engine_alone(user_config, args.engine_seconds, device)
    print("engine alone:", alone, flush=True)
    start = time.perf_counter()
    with running_chorus(app, port=free_port(), ready_timeout_s=600) as url:
        report["ready_s"] = round(time.perf_counter() - start, 1)
        report["replica"] = replica_stats()
        print(f"ready in {report['ready_s']} s: {report['replica']}", flush=True)
        asyncio.run(drive(url, 8, 5, "mixed"))  # every path once
        report["phases"] = []
        clients = [int(c) for c in args.clients.split(",")]
        plan = [(n, "audio") for n in clients] + [(clients[0], "file"), (clients[-1], "mixed")]
        for n, delivery in plan:
            row = phase(url, n, args.seconds, delivery, alone["audio_s_per_s"])
            report["phases"].append(row)
            save(name, report)  # each phase kept as it ends
            print(
                f"{n:4d} clients {delivery:6s}: {row['audio_s_per_s']:8.1f} audio-s/s "
                f"({row['served_vs_engine_alone']:.0%} of alone), first audio p50 "
                f"{row['ttfa_s']['p50']} p99 {row['ttfa_s']['p99']} s, statuses "
                f"{row['statuses']}, GPU {row['gpu']}, batches {row['batches']}",
                flush=True,
            )
    if args.shared > 1:
        report["shared_gpu"] = shared_gpu(args, cuda, alone["audio_s_per_s"])
    print(f"wrote {save(name, report)}")


if __name__ == "__main__":
    main()
