"""The benchmark's own arithmetic and peers: if these are wrong, every figure is."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import random
import threading
import time
import wave

import pytest
from fastapi.testclient import TestClient

from load_tests.load import closed_loop
from load_tests.report import Answer, check_targets, summarize, table, wav_seconds
from load_tests.texts import MIX, request_texts
from serve_app.speech.audio import streaming_wav_header

pytestmark = pytest.mark.timeout(60)


def wav_bytes(seconds: float, rate: int = 22050) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(2 * int(seconds * rate)))
    return out.getvalue()


def test_wav_seconds_of_whole_and_streamed_files() -> None:
    assert wav_seconds(wav_bytes(1.5)) == pytest.approx(1.5)
    streamed = streaming_wav_header(24000) + bytes(2 * 24000 * 2)
    assert wav_seconds(streamed) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        wav_seconds(b"RIFF....WAVEjunk")


def test_texts_are_the_same_for_every_server_and_follow_the_mix() -> None:
    assert request_texts(50, seed=3) == request_texts(50, seed=3)
    assert request_texts(50, seed=3) != request_texts(50, seed=4)
    rng = random.Random(0)
    counts = [len(t.split(". ")) for t in request_texts(2000, seed=rng.randrange(99))]
    one = sum(c == 1 for c in counts) / len(counts)
    # sentences end in . ? or ! so this undercounts; one-sentence requests are about half
    assert MIX[0][0] - 0.15 < one < MIX[0][0] + 0.15


def test_a_phase_separates_successes_refusals_and_failures() -> None:
    answers = [Answer(200, 1.0, 0.2, 3.0), Answer(200, 3.0, 0.4, 5.0)]
    answers += [Answer(503, 0.01, retry_after_s=2), Answer("timeout", 30.0), Answer(500, 0.1)]
    p = summarize(answers, elapsed_s=4.0)
    assert (p["sent"], p["ok"], p["refused"], p["failed"]) == (5, 2, 1, 2)
    assert p["audio_s_per_s"] == 2.0  # only delivered audio counts
    assert p["latency_s"]["p50"] == 2.0  # of successes only: a timeout is not a latency
    assert p["latency_mean_s"] == 2.0
    assert p["refusal_ms"]["p99"] == 10.0
    assert p["refused_share"] == 0.2 and p["failed_share"] == 0.4


def test_a_closed_loop_can_send_a_set_number_of_requests() -> None:
    """Whole passes over the sentences: every server compared gets the same requests."""
    asked = []

    async def ask(i: int) -> Answer:
        asked.append(i)
        await asyncio.sleep(0.001)
        return Answer(200, 0.001)

    out = asyncio.run(closed_loop(ask, clients=3, requests=24))
    assert out["sent"] == 24 and sorted(asked) == list(range(24))


def phase(audio: float, p99: float, refused_p99: float = 0.0) -> dict:
    return {
        "sent": 10, "ok": 10, "refused": 1, "failed": 0, "audio_s_per_s": audio,
        "latency_s": {"p50": p99 / 2, "p95": p99, "p99": p99},
        "ttfa_s": {"p50": 0.1, "p95": 0.2, "p99": 0.3},
        "refusal_ms": {"p50": 1.0, "p95": 2.0, "p99": refused_p99},
    }  # fmt: skip


def test_targets_are_judged_from_the_measurements() -> None:
    chorus = {
        "label": "Chorus",
        "unloaded": phase(10, 1.0),
        "closed": phase(10, 5.0) | {"clients": 16},
        "open": {"0.7": phase(7, 2.5), "4": phase(9.5, 6.0, refused_p99=25.0)},
    }
    peer = {"label": "Peer", "unloaded": phase(12, 1.0), "open": {}}
    peer["closed"] = phase(12, 4.0) | {"clients": 16}
    report = {"direct": {"audio_s_per_s": 10.5}, "servers": {"chorus": chorus, "peer": peer}}
    verdicts = {t["target"]: t["reached"] for t in check_targets(report)}
    assert verdicts == {
        "served / direct-engine throughput at saturation": True,  # 10 / 10.5
        "accepted throughput at 4x / capacity": True,  # 9.5 / 10
        "refusal p99 at 4x (ms)": False,  # 25 ms
        "p99 latency at 0.7x / unloaded p99": True,  # 2.5
        "p99 latency (s) vs Peer, 16 clients": False,  # 5 against 4
        "successful audio-s/s vs Peer, 16 clients": False,  # 10 against 12
    }
    assert "| Chorus | 16 clients | 10 | 10 | 1 | 0 | 10.0 |" in table(report)


def test_the_global_lock_peer_answers_with_the_voice() -> None:
    from load_tests.lock_server import build
    from load_tests.servers import VOICE_MODEL

    client = TestClient(build(VOICE_MODEL, sentence_silence=0.1))
    r = client.post("/v1/audio/speech", json={"input": "Hello there. How are you?"})
    assert r.status_code == 200
    # two sentences of speech and the pause between them
    assert 1.0 < wav_seconds(r.content) < 4.0


def test_a_listener_hears_a_stall_only_when_audio_comes_after_it_was_needed() -> None:
    from load_tests.bench_playback import BYTES_PER_S, Stream

    s = Stream(start=10.0)
    s.heard(10.5, 2 * BYTES_PER_S)  # first audio at 0.5 s: 2 s of it, playing until 12.5
    s.heard(12.0, 1 * BYTES_PER_S)  # in time: plays until 13.5
    assert (s.first_s, s.stall_s) == (0.5, 0.0)
    s.heard(14.0, 1 * BYTES_PER_S)  # 0.5 s late: playback waited, then plays until 15.0
    s.heard(15.25, BYTES_PER_S // 2)  # 0.25 s late again
    assert s.stall_s == pytest.approx(0.75)
    assert s.audio_s == pytest.approx(4.5)


def test_a_free_port_is_one_no_outgoing_connection_can_take_first() -> None:
    from load_tests.local import _ephemeral_start, free_port

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50  # never the same one twice, bound or not
    assert all(20000 <= port < _ephemeral_start() for port in ports)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))  # and free indeed


def test_every_benchmark_runs_from_the_one_entry_point_and_is_listed() -> None:
    from pathlib import Path

    from load_tests.__main__ import BENCHMARKS

    here = Path(__file__).resolve().parents[2] / "load_tests"
    runnable = {p.stem for p in here.glob("bench_*.py")} | {"compare"}
    assert set(BENCHMARKS) == runnable
    listed = (here / "README.md").read_text()
    assert all(f"| `{name}` |" in listed for name in BENCHMARKS)


class SpeechStub(http.server.BaseHTTPRequestHandler):
    """Answers a speech request by its seed: 0 hangs, and by the seed's last digit 1 loses a
    sentence, 2 is refused, the rest are whole (three sentences)."""

    def do_POST(self) -> None:
        seed = json.loads(self.rfile.read(int(self.headers["content-length"])))["seed"]
        if seed == 0:
            time.sleep(30)
        seed %= 10
        status = 503 if seed == 2 else 200
        body = b'{"error": {"code": "overloaded"}}' if status == 503 else wav_bytes(0.1)
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-chorus-sentences", "2" if seed == 1 else "3")
        self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_background_load_keeps_every_answer_and_can_leave_requests_in_flight() -> None:
    from load_tests.load import Background

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SpeechStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        start = time.monotonic()
        with Background(url, 3, lambda i: {"seed": i}, finish=False) as load:
            load.wait_for_answers(30, timeout_s=20)
        assert time.monotonic() - start < 15  # the hung request was left, not waited for
        failed = {a.detail[:9] if a.status == 503 else a.sentences for a in load.failures(3)}
        assert failed == {2, '{"error":'}  # the lost sentence and the refusal, nothing else
        assert sum(a.status == 200 and a.sentences == 3 for a in load.answers) >= 20
    finally:
        server.shutdown()


def test_the_cpu_a_server_spends_is_counted_by_process_and_for_the_machine() -> None:
    import subprocess
    import sys

    import psutil

    from load_tests.servers import cpu_seconds, cpu_spent, machine_busy, machine_times

    spin = "import time\nend = time.process_time() + 2\nwhile time.process_time() < end: pass"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"
    parent = subprocess.Popen([sys.executable, "-c", child])
    try:
        while not psutil.Process(parent.pid).children():  # the spinning grandchild is up
            time.sleep(0.01)
        before, machine, t0 = cpu_seconds(parent.pid), machine_times(), time.perf_counter()
        time.sleep(0.5)
        after = cpu_seconds(parent.pid)  # read while it runs: a finished child counts no more
        spent = cpu_spent(before, after, 10, time.perf_counter() - t0)
        busy = machine_busy(machine, machine_times())
    finally:
        for kid in psutil.Process(parent.pid).children(recursive=True):
            kid.kill()
        parent.kill()
        parent.wait(30)
    # the spinning process, found below its parent: up to 0.5 s of CPU over 10 sentences
    assert 15 <= spent["cpu_ms_per_item"]["server process"] <= 55, spent
    assert busy > 0


def test_a_ray_process_keeps_its_role_whatever_method_its_title_names() -> None:
    from load_tests.servers import role

    assert role(["ray::ServeController"]) == role(["ray::ServeController.listen_for_change"])
    assert role(["ray::ServeReplica:chorus:Synthesizer"]) == "Synthesizer"
    assert role(["ray::ServeReplica:chorus:Ingress.handle_request"]) == "Ingress"
    assert role(["/usr/bin/python", "-m", "serve_app.local"]) == "server process"
