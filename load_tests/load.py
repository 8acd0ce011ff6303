"""The one load generator every benchmark uses: one request at a time, closed-loop clients,
open-loop Poisson arrivals, and a probe of what any request costs at that moment.

Each takes `ask(i) -> Answer` (request number `i`; `asker` makes one that speaks a list of
texts to a server, streamed or whole, as `servers.Server` says) and returns the answers,
summarised by `report.summarize`. `Background` keeps closed-loop clients busy beside a
measurement or a fault, for tests and benchmarks alike."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from load_tests import report as rep
from load_tests import servers as srv
from load_tests.report import REFUSALS, Answer

Ask = Callable[[int], Awaitable[Answer]]


async def ask(
    session: aiohttp.ClientSession, server: srv.Server, text: str, seed: int, timeout_s: float
) -> Answer:
    """`text` spoken by `server` (with `seed`), as its `body` says."""
    return await post(session, server.url + server.speech_path, server.body(text, seed), timeout_s)


async def post(session: aiohttp.ClientSession, url: str, body: dict, timeout_s: float) -> Answer:
    """One speech request, read to its last byte: its status, latency, first audio byte and
    audio seconds (Chorus's X-Chorus-Audio-Seconds, else the WAV's length)."""
    t0 = time.perf_counter()
    first = None
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body) as r:
                if r.status != 200:
                    detail = (await r.read())[:300].decode(errors="replace")
                    wait = float(r.headers.get("retry-after", 1))
                    latency = time.perf_counter() - t0
                    return Answer(r.status, latency, retry_after_s=wait, detail=detail)
                chunks = []
                async for chunk in r.content.iter_any():
                    first = first or time.perf_counter() - t0
                    chunks.append(chunk)
                told = r.headers.get("x-chorus-audio-seconds")
                sentences = r.headers.get("x-chorus-sentences")
    except TimeoutError:
        return Answer("timeout", time.perf_counter() - t0)
    except aiohttp.ClientError as exc:
        return Answer("error", time.perf_counter() - t0, detail=repr(exc))
    audio_s = float(told) if told else rep.wav_seconds(b"".join(chunks))
    count = int(sentences) if sentences else None
    return Answer(200, time.perf_counter() - t0, first, audio_s, sentences=count)


def asker(
    session: aiohttp.ClientSession, server: srv.Server, texts: list[str], timeout_s: float
) -> Ask:
    """`ask(i)`: request `i` speaks `texts[i % len(texts)]` with seed `i`."""

    def ask_one(i: int) -> Awaitable[Answer]:
        return ask(session, server, texts[i % len(texts)], i, timeout_s)

    return ask_one


def getter(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[None]]:
    """A GET of `url`, read to the end (a probe's request)."""

    async def get() -> None:
        async with session.get(url) as r:
            await r.read()

    return get


async def one_at_a_time(ask: Ask, count: int) -> dict:
    start = time.perf_counter()
    answers = [await ask(i) for i in range(count)]
    return rep.summarize(answers, time.perf_counter() - start)


async def closed_loop(
    ask: Ask, clients: int, seconds: float = math.inf, requests: int | None = None
) -> dict:
    """`clients` clients, each sending its next request when the last is answered (after
    waiting the Retry-After of a refusal), for `seconds` or until `requests` were sent."""
    answers: list[Answer] = []
    order = itertools.count()
    end = time.perf_counter() + seconds
    left = itertools.count() if requests is None else iter(range(requests))

    async def client() -> None:
        while time.perf_counter() < end and next(left, None) is not None:
            answer = await ask(next(order))
            answers.append(answer)
            if answer.status in REFUSALS:
                await asyncio.sleep(answer.retry_after_s)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return rep.summarize(answers, time.perf_counter() - start) | {"clients": clients}


async def open_loop(
    ask: Ask, rate: float, seconds: float, seed: int, floor: Callable[[], Awaitable[None]]
) -> dict:
    """Poisson arrivals at `rate`/s for `seconds`, their times fixed in advance (a slow answer
    delays no one); beside them `floor()` is timed every 100 ms."""
    rng = random.Random(seed)
    tasks = []
    floors: list[float] = []
    prober = asyncio.create_task(probe(floor, floors))
    start = time.perf_counter()
    due = 0.0
    for i in itertools.count():
        if due >= seconds:
            break
        await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
        tasks.append(asyncio.create_task(ask(i)))
        due += rng.expovariate(rate)
    answers = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    prober.cancel()
    return rep.summarize(answers, elapsed) | {
        "offered_per_s": round(rate, 3),
        "floor_ms": rep.spread(floors, 1000, 1),
    }


async def offered(
    url: str, rate: float, seconds: float, headers: dict[str, str] | None = None, seed: int = 1
) -> dict:
    """One-sentence whole-file requests to Chorus at `url` at `rate`/s (`open_loop`), with
    `headers` (an API key): what a limited client is let through."""
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello there.", "stream_format": "file"}
    async with aiohttp.ClientSession(headers=headers) as session:
        speech = f"{url}/v1/audio/speech"
        return await open_loop(
            lambda i: post(session, speech, body, 30), rate, seconds, seed, getter(session, url)
        )


async def probe(request: Callable[[], Awaitable[None]], out: list[float]) -> None:
    """Time `request()` every 100 ms: the floor under a refusal's latency at that moment."""
    while True:
        t0 = time.perf_counter()
        try:
            await request()
            out.append(time.perf_counter() - t0)
        except Exception:  # noqa: BLE001 - a failed probe is no floor
            pass
        await asyncio.sleep(0.1)


class Background:
    """`clients` closed-loop clients posting `body(i)` (request number `i`) to Chorus at `url`
    back to back, on an event loop in a thread of its own, from the start of the `with` block
    to its end; every answer kept in `answers`. At the end the requests in flight are waited
    for (`finish`: their answers count) or abandoned (the clients leave, as real ones do).

        with Background(url, 8, lambda i: {**body, "seed": i}) as load:
            load.wait_for_answers(8)
            ...  # the fault or measurement under load
        assert load.failures() == []
    """

    def __init__(
        self,
        url: str,
        clients: int,
        body: Callable[[int], dict[str, Any]],
        *,
        finish: bool = True,
        timeout_s: float = 120,
    ) -> None:
        self.url, self.clients, self.body = url, clients, body
        self.finish, self.timeout_s = finish, timeout_s
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if not self.finish and self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=self.timeout_s + 10)

    def wait_for_answers(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.answers) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.answers)} of {count} answers in {timeout_s} s")
            time.sleep(0.1)

    def failures(self, sentences: int | None = None) -> list[Answer]:
        """Answers that are not a 200 or, given `sentences`, whose audio holds another number
        of sentences (part of a request's audio lost)."""
        return [
            a
            for a in self.answers
            if a.status != 200 or (sentences is not None and a.sentences != sentences)
        ]

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        order = itertools.count()
        speech = f"{self.url}/v1/audio/speech"

        async def client(session: aiohttp.ClientSession) -> None:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    answer = await post(session, speech, self.body(next(order)), self.timeout_s)
                except Exception as exc:  # noqa: BLE001 - kept as an answer, the client goes on
                    answer = Answer("error", time.perf_counter() - t0, detail=repr(exc))
                self.answers.append(answer)

        async with aiohttp.ClientSession() as session:
            self._task = asyncio.ensure_future(
                asyncio.gather(*(client(session) for _ in range(self.clients)))
            )
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
