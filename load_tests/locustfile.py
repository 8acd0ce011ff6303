"""Locust users for Chorus (or anything that speaks OpenAI's /v1/audio/speech).

    locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --users 24 --spawn-rate 4 --run-time 2m --csv load_tests/results/locust

Three kinds of user, with texts from the mix in texts.py:
- `Listener` (half): streams pcm and reads it at real-time playback speed, like a player
  with a small buffer; one in ten gives up part-way through and closes the connection.
- `Downloader`: asks for a whole mp3 file, as a batch job or the OpenAI SDK does.
- `SseClient`: server-sent events, as the playground does, and checks the `done` event.

Reported names: `stream` (time to the response headers, which Chorus sends with the first
sentence), `stream first audio` (to the first audio bytes), `stream complete` (the whole
stream, read at playback speed), `stream abandoned` (a client that left on purpose: not an
error), `mp3`, `sse`. A 429 or 503 with a Retry-After is an honest refusal and is counted
as a failure named after its status, so a run shows how much was turned away. Set
CHORUS_API_KEY to send a key, CHORUS_ABANDON_SHARE to change how many listeners leave.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from locust import HttpUser, between, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # locust runs this by path
from load_tests.texts import request_text  # noqa: E402

PCM_BYTES_PER_S = 24000 * 2  # OpenAI's pcm: 16-bit mono at 24 kHz
BUFFER_S = 1.0  # a player reads this far ahead of what it has played
ABANDON_SHARE = float(os.environ.get("CHORUS_ABANDON_SHARE", "0.1"))


class ChorusUser(HttpUser):
    abstract = True
    wait_time = between(1, 5)

    def on_start(self) -> None:
        self.rng = random.Random()
        key = os.environ.get("CHORUS_API_KEY")
        if key:
            self.client.headers["Authorization"] = f"Bearer {key}"

    def body(self, fmt: str, **extra) -> dict:
        text = request_text(self.rng)
        return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt} | extra

    def refused(self, response, name: str) -> bool:
        if response.status_code in (429, 503):
            wait = response.headers.get("retry-after", "?")
            response.failure(f"{response.status_code} refused, Retry-After {wait}")
            return True
        if response.status_code != 200:
            response.failure(f"{name}: HTTP {response.status_code}: {response.text[:200]}")
            return True
        return False


class Listener(ChorusUser):
    weight = 2

    @task
    def listen(self) -> None:
        body = self.body("pcm", stream_format="audio")
        leave_after_s = self.rng.uniform(0.5, 3.0) if self.rng.random() < ABANDON_SHARE else None
        start = time.perf_counter()
        with self.client.post(
            "/v1/audio/speech", json=body, stream=True, catch_response=True, name="stream"
        ) as response:
            if self.refused(response, "stream"):
                return
            received, first = 0, None
            for chunk in response.iter_content(chunk_size=4800):
                if first is None:
                    first = time.perf_counter()
                    self.report("stream first audio", first - start, len(chunk))
                received += len(chunk)
                played_s = time.perf_counter() - first
                if leave_after_s is not None and played_s > leave_after_s:
                    response.close()  # the listener closed the tab
                    response.success()
                    self.report("stream abandoned", time.perf_counter() - start, received)
                    return
                ahead_s = received / PCM_BYTES_PER_S - played_s - BUFFER_S
                if ahead_s > 0:  # read no faster than it plays
                    time.sleep(ahead_s)
            if not received:
                response.failure("stream ended with no audio")
            else:
                self.report("stream complete", time.perf_counter() - start, received)

    def report(self, name: str, seconds: float, length: int) -> None:
        self.environment.events.request.fire(
            request_type="POST",
            name=name,
            response_time=seconds * 1000,
            response_length=length,
            exception=None,
            context={},
        )


class Downloader(ChorusUser):
    weight = 1

    @task
    def download(self) -> None:
        with self.client.post(
            "/v1/audio/speech", json=self.body("mp3"), catch_response=True, name="mp3"
        ) as response:
            if not self.refused(response, "mp3") and len(response.content) < 500:
                response.failure("mp3 too short to hold audio")


class SseClient(ChorusUser):
    weight = 1

    @task
    def sse(self) -> None:
        body = self.body("pcm", stream_format="sse")
        with self.client.post(
            "/v1/audio/speech", json=body, stream=True, catch_response=True, name="sse"
        ) as response:
            if self.refused(response, "sse"):
                return
            kinds = []
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    kinds.append(json.loads(line[6:])["type"])
            if "error" in kinds or kinds[-1:] != ["speech.audio.done"]:
                response.failure(f"SSE stream did not end with done: {kinds[-3:]}")
