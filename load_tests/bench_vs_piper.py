"""On CPU, Chorus against piper's own HTTP server, side by side in one run, one server at a time.

    python -m load_tests bench_vs_piper [--layouts "1x2;2x1"] [--clients 16] [--seconds 90]
                                        [--one-client-passes 10] [--rounds 1] [--repeats 5]
                                        [--save-as vs_piper_cpu]

piper: `python -m piper.http_server` with the same voice file (onnxruntime, a thread per
request). Chorus: the main job (`serve_app.local`, HAProxy in front) in each replica layout
of `--layouts`: `RxT` is R model replicas of T torch threads each (`cpu_threads`; with
R > 1 each replica asks Ray for 1/R of a CPU so all of them fit beside the ingress), and
app args after it: `2x1+items_per_call=1+cpu_engine_nice=0`.

Each server gets closed-loop clients sending one sentence each (the sentences of
`load_tests/texts.py` in turn, whole wav files): one client sending `--one-client-passes`
passes over the sentences (every server the same requests, below); one client sending each
sentence `--repeats` times in a row (its median latency: Chorus over piper sentence by
sentence); then `--clients` clients for `--seconds`. Chorus also gets streamed
requests one at a time: each of the sentences alone (whole file), then the same sentence
followed by two more, streamed (pcm): how much later than one sentence's synthesis its first
audio comes. `--rounds 2` runs the servers twice, in turn (piper, layouts..., piper,
layouts...), to show the spread. Each closed loop also records the CPU its server's
processes spent, in ms per sentence answered by process (Ray's actors by name), and how busy
the machine was (`cpu`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path
from statistics import median

import aiohttp
import yaml

from load_tests import load
from load_tests import report as rep
from load_tests import servers as srv
from load_tests.common import machine, save
from load_tests.texts import SENTENCES

# Issue 29's targets: against piper's own server, in the same run.
THROUGHPUT_GOAL = 1.0  # x piper's audio-s/s at --clients
ONE_CLIENT_P50_GOAL = 1.1  # x piper's p50 with one client
FIRST_AUDIO_MARGIN_S = 0.05  # a streamed request's first audio after one sentence's synthesis


def layout_server(layout: str, workdir: Path) -> srv.Server:
    """Chorus in `layout`: "RxT" (R model replicas of T torch threads), then any app args to
    set, each "+name=value" (a YAML value): "2x1+items_per_call=1"."""
    shape, *settings = layout.split("+")
    replicas, threads = (int(n) for n in shape.split("x"))
    args = {"cpu_threads": threads}
    for setting in settings:
        name, value = setting.split("=", 1)
        args[name] = yaml.safe_load(value)
    synthesizer = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": 1 / replicas}}
    return srv.chorus(
        workdir,
        srv.free_port(),
        args,
        deployments={"Synthesizer": synthesizer},
        name=f"chorus-{layout}",  # its config and log file are named after it
        label=f"Chorus {layout}",
    )


def body(server: srv.Server, text: str, seed: int, stream: bool = False) -> dict:
    if server.name == "piper":
        return {"text": text}
    fields = {"response_format": "pcm", "stream_format": "audio"} if stream else {}
    return {
        "model": "tts-1",
        "voice": "alloy",
        "input": text,
        "response_format": "wav",
        "stream_format": "file",
        "seed": seed,
    } | fields


async def closed(
    server: srv.Server, clients: int, seconds: float = math.inf, requests: int | None = None
) -> dict:
    """`clients` closed-loop clients, one sentence each, for `seconds` or `requests`; with the
    CPU the server's processes spent meanwhile (`cpu`) and the mean latency.

    NOTE: one client's p50 is compared over whole passes over the sentences (`requests` a
    multiple of their count), so every server answers the same requests. Over a fixed time the
    count's remainder decides which sentences get one request more, and with it whether the
    p50 lands on the slowest of the six shorter sentences or the quickest of the six longer
    ones (piper: 0.15 against 0.22 s): one run measured Chorus at 1.17x piper's p50 while it
    answered both of those sentences sooner (2026-12-07, docs/performance.md)."""
    async with aiohttp.ClientSession() as session:
        url = server.url + server.speech_path

        def ask(i: int):
            return load.post(session, url, body(server, SENTENCES[i % len(SENTENCES)], i), 120)

        for i in range(4):  # warm: each server's first requests pay for its start
            await ask(i)
        before, machine = srv.cpu_seconds(server.pid), srv.machine_times()
        out = await load.closed_loop(ask, clients, seconds, requests)
        out["cpu"] = srv.cpu_spent(before, srv.cpu_seconds(server.pid), out["ok"], out["elapsed_s"])
        out["cpu"]["machine_busy"] = srv.machine_busy(machine, srv.machine_times())
        return out


async def per_sentence(server: srv.Server, repeats: int) -> list[float]:
    """One client: each sentence `repeats` times in a row (a new seed each), its median
    latency in seconds, in the order of `SENTENCES`.

    NOTE: the closed loop's p50 falls between two sentences' latencies: with these sentences
    half take under ~0.15 s and half over ~0.2 s (piper), and where in that gap it lands moves
    the ratio by 0.1-0.4. Sentence by sentence, the ratio says how much longer each one takes."""
    url = server.url + server.speech_path
    out = []
    async with aiohttp.ClientSession() as session:
        for k, sentence in enumerate(SENTENCES):
            answers = [
                await load.post(session, url, body(server, sentence, 1000 * k + r), 60)
                for r in range(repeats)
            ]
            assert all(a.status == 200 for a in answers), answers
            out.append(round(median(a.latency_s for a in answers), 4))
    return out


async def first_audio(server: srv.Server) -> dict:
    """Each sentence alone (whole file), then streamed with two more after it: the first
    audio's delay over the sentence alone."""
    url = server.url + server.speech_path
    alone, first = [], []
    async with aiohttp.ClientSession() as session:
        for k, sentence in enumerate(SENTENCES):
            one = await load.post(session, url, body(server, sentence, k), 60)
            text = " ".join(SENTENCES[(k + j) % len(SENTENCES)] for j in range(3))
            assert one.status == 200, one
            alone.append(one.latency_s)
            first.append(await first_chunk(session, url, body(server, text, k, stream=True)))
    late = [f - a for f, a in zip(first, alone, strict=True)]
    return {
        "sentence_alone_p50_s": round(median(alone), 3),
        "streamed_first_audio_p50_s": round(median(first), 3),
        "first_audio_after_sentence_s": rep.spread(late),
    }


async def first_chunk(session: aiohttp.ClientSession, url: str, body: dict) -> float:
    """Seconds to a streamed answer's first audio bytes (read to its end)."""
    t0 = time.perf_counter()
    first = None
    async with session.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        async for chunk in r.content.iter_any():
            if chunk and first is None:
                first = time.perf_counter() - t0
    assert first is not None
    return first


def measure(server: srv.Server, workdir: Path, args: argparse.Namespace) -> dict:
    print(f"{server.label}: starting", flush=True)
    with srv.running(server, workdir):
        out: dict = {"label": server.label}
        passes = args.one_client_passes * len(SENTENCES)
        out["one_client"] = asyncio.run(closed(server, 1, requests=passes))
        out["per_sentence_s"] = asyncio.run(per_sentence(server, args.repeats))
        out["clients"] = asyncio.run(closed(server, args.clients, args.seconds))
        if server.name != "piper":  # piper's server answers whole files only
            out["streamed"] = asyncio.run(first_audio(server))
    print(f"  {brief(out, args.clients)}", flush=True)
    return out


def brief(out: dict, clients: int) -> str:
    one, many = out["one_client"], out["clients"]
    text = (
        f"1 client {one['audio_s_per_s']} audio-s/s p50 {one['latency_s']['p50']} s | "
        f"{clients} clients {many['audio_s_per_s']} audio-s/s p50 {many['latency_s']['p50']} s "
        f"(failed {many['failed']})"
    )
    cpu = many["cpu"]
    text += f" | CPU ms/sentence at {clients} clients (machine {cpu['machine_busy']:.0%} busy): "
    text += ", ".join(f"{role} {ms:.1f}" for role, ms in cpu["cpu_ms_per_item"].items())
    if "streamed" in out:
        s = out["streamed"]
        late = s["first_audio_after_sentence_s"]["p50"]
        text += (
            f" | streamed first audio p50 {s['streamed_first_audio_p50_s']} s, sentence alone "
            f"{s['sentence_alone_p50_s']} s, later by p50 {late} s"
        )
    return text


def verdicts(piper: dict, chorus: dict) -> dict:
    throughput = chorus["clients"]["audio_s_per_s"] / piper["clients"]["audio_s_per_s"]
    one, piper_one = chorus["one_client"], piper["one_client"]
    one_p50 = one["latency_s"]["p50"] / piper_one["latency_s"]["p50"]
    late = chorus["streamed"]["first_audio_after_sentence_s"]["p50"]
    ratios = [c / p for c, p in zip(chorus["per_sentence_s"], piper["per_sentence_s"], strict=True)]
    return {
        "throughput_x_piper": round(throughput, 3),
        "one_client_p50_x_piper": round(one_p50, 3),
        "one_client_mean_x_piper": round(one["latency_mean_s"] / piper_one["latency_mean_s"], 3),
        "per_sentence_x_piper": {
            "median": round(median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
            "each": [round(r, 2) for r in ratios],
        },
        "first_audio_after_sentence_p50_s": late,
        "reached": {
            "throughput": throughput >= THROUGHPUT_GOAL,
            "one_client_p50": one_p50 <= ONE_CLIENT_P50_GOAL,
            "first_audio": late <= FIRST_AUDIO_MARGIN_S,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--layouts", default="1x2;2x1", help="Chorus's, ';'-separated: RxT[+arg=value...]"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument(
        "--one-client-passes", type=int, default=10, help="one client, passes over the sentences"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--repeats", type=int, default=5, help="one client, each sentence this many times"
    )
    parser.add_argument("--save-as", default="vs_piper_cpu")
    args = parser.parse_args()
    began = time.perf_counter()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="chorus-vs-piper-") as tmp:
        workdir = Path(tmp)
        for _ in range(args.rounds):
            runs = {"piper": measure(srv.piper(srv.free_port()), workdir, args)}
            for layout in args.layouts.split(";"):
                runs[layout] = measure(layout_server(layout, workdir), workdir, args)
                runs[layout]["against_piper"] = verdicts(runs["piper"], runs[layout])
                print(f"  against piper: {runs[layout]['against_piper']}", flush=True)
            rounds.append(runs)
    result = {"machine": machine(), "args": vars(args), "rounds": rounds}
    result["wall_s"] = round(time.perf_counter() - began)
    print(f"saved {save(args.save_as, result)} in {result['wall_s']} s")


if __name__ == "__main__":
    main()
