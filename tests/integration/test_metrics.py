"""Known traffic moves the exported metrics by the right amounts, scraped from Ray's metrics
agent the way Prometheus does; the Grafana dashboard only asks for metrics that exist."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serve_app.errors import ChorusError
from tests.conftest import ROOT
from tests.helpers import speech_body
from tests.integration.conftest import fake_app, speech, sse_events

pytestmark = pytest.mark.timeout(180)

Samples = dict[str, list[tuple[dict[str, str], float]]]
SPEECH = "/v1/audio/speech"


def scrape(url: str) -> Samples:
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        for s in family.samples:
            samples[s.name].append((s.labels, s.value))
    return samples


def settled(url: str, every_s: float = 3.0, tries: int = 20) -> Samples:
    """A scrape once the requests counter stands still between two scrapes: what earlier
    tests sent has been counted and pushed (a replica pushes every second here)."""
    last = scrape(url)
    for _ in range(tries):
        time.sleep(every_s)
        now = scrape(url)
        if total(now, "chorus_requests_total") == total(last, "chorus_requests_total"):
            return now
        last = now
    raise AssertionError("the requests counter never stood still")


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a metric's samples over every series carrying `labels`."""
    return sum(
        value
        for series, value in samples.get(f"ray_{name}", [])
        if all(series.get(k) == v for k, v in labels.items())
    )


async def overload_and_fail(url: str) -> tuple[int, list[dict]]:
    """A burst into tiny queues (some 503s), and an SSE stream whose 4th sentence fails."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        burst = [c.post(SPEECH, json=speech_body(f"Number {i}.")) for i in range(8)]
        rejected = sum(r.status_code == 503 for r in await asyncio.gather(*burst))
        bad = "One is fine. Two is fine. Three is fine. Buried treasure. Five. Six. Seven."
        request = speech_body(bad, stream_format="sse")
        async with c.stream("POST", SPEECH, json=request) as r:
            events = list(sse_events(iter([line async for line in r.aiter_lines()])))
    return rejected, events


def reason_of(code: str) -> str:
    """The metrics reason of an error code, as Chorus's error classes declare it."""
    classes, found = [ChorusError], []
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        found += [cls.reason] if cls.code == code else []
    assert len(set(found)) == 1, (code, found)
    return found[0]


@pytest.fixture(scope="module")
def traffic(server: str, metrics_url: str) -> dict:
    with httpx.Client(base_url=server, timeout=120) as client:
        return send_known_traffic(client, server, metrics_url)


def send_known_traffic(client: httpx.Client, server: str, metrics_url: str) -> dict:
    before = settled(metrics_url)
    ok = [
        speech(client, input=text, response_format="pcm", stream_format="file")
        for text in ("Hi there.", "Good morning. Good night.")
    ]
    assert [r.status_code for r in ok] == [200, 200]
    with client.stream(
        "POST",
        SPEECH,
        json=speech_body(
            "Yes. No.", response_format="pcm", stream_format="sse", chorus_events=True
        ),
    ) as r:
        done = list(sse_events(r.iter_lines()))[-1]
    assert done["type"] == "speech.audio.done"
    assert speech(client, input="Hello", voice="nobody").status_code == 400
    # A client that leaves before its answer: 60 sentences take seconds even on a GPU-speed
    # engine (10 once finished before the server heard of the leaving: counted 200, not 499).
    with pytest.raises(httpx.TimeoutException):
        long = speech_body("A sentence that takes time. " * 60)
        long["stream_format"] = "file"
        client.post(SPEECH, json=long, timeout=0.5)
    assert client.get("/no/such/route").status_code == 404
    with fake_app(
        server,
        "metered",
        {"items_per_call": 1},  # Serve's queue limits count calls
        delay_s=0.2,
        max_ongoing_requests=1,
        max_queued_requests=1,
    ) as url:
        rejected, failed_stream = asyncio.run(overload_and_fail(url))
        assert rejected >= 1 and failed_stream[-1]["type"] == "error"
        # NOTE: scraped while the fake app still runs: a deleted replica pushes nothing more.
        expected = total(before, "chorus_requests_total", application="chorus") + 6
        deadline = time.monotonic() + 60
        while total(scrape(metrics_url), "chorus_requests_total", application="chorus") < expected:
            assert time.monotonic() < deadline, "metrics never arrived"
            time.sleep(0.5)
        time.sleep(3)  # let every replica push once more
        after = scrape(metrics_url)
    return {
        "before": before,
        "after": after,
        "audio_s": sum(float(r.headers["x-chorus-audio-seconds"]) for r in ok)
        + done["audio_seconds"],
        "sentences": sum(int(r.headers["x-chorus-sentences"]) for r in ok) + done["sentences"],
        "rejected": rejected,
        "stream_error": failed_stream[-1],
    }


def delta(traffic: dict, name: str, **labels: str) -> float:
    return total(traffic["after"], name, **labels) - total(traffic["before"], name, **labels)


def test_counters_and_histograms_moved_by_the_traffic(traffic: dict) -> None:
    chorus = {"application": "chorus"}
    speech_ok = {**chorus, "route": SPEECH, "status": "200", "reason": "ok"}
    assert delta(traffic, "chorus_requests_total", **speech_ok) == 3
    bad = {**chorus, "route": SPEECH, "status": "400", "reason": "bad_input"}
    assert delta(traffic, "chorus_requests_total", **bad) == 1
    lost = {**chorus, "route": "unmatched", "status": "404", "reason": "not_found"}
    assert delta(traffic, "chorus_requests_total", **lost) == 1
    gone = {**chorus, "route": SPEECH, "status": "499", "reason": "client_gone"}
    assert delta(traffic, "chorus_requests_total", **gone) == 1
    overload = {"application": "metered", "status": "503", "reason": "overload", "route": SPEECH}
    assert delta(traffic, "chorus_requests_total", **overload) == traffic["rejected"]
    error = traffic["stream_error"]  # the bad sentence, or its own items met the tiny queue
    reason = reason_of(error["error"]["code"])
    failed = {"application": "metered", "reason": reason}
    assert delta(traffic, "chorus_stream_failures_total", **failed) == 1

    assert delta(traffic, "chorus_request_latency_seconds_count", **chorus) == 3
    # The client that left may have had its first sentence by then.
    assert delta(traffic, "chorus_time_to_first_audio_seconds_count", **chorus) in (3, 4)
    # Stalls are counted for streams that got their audio: the SSE one (files have none).
    assert delta(traffic, "chorus_stream_stall_seconds_count", **chorus) == 1
    assert delta(traffic, "chorus_audio_seconds_total", **chorus) == pytest.approx(
        traffic["audio_s"], abs=0.01
    )

    items = delta(traffic, "chorus_items_synthesized_total", **chorus)
    # The 5 sentences of the answered requests, plus what ran for the client that left.
    assert items >= traffic["sentences"] == 5
    # Every item waited once; every batch was timed, sized and measured for padding once.
    assert delta(traffic, "chorus_queue_wait_seconds_count", **chorus) == items
    batches = delta(traffic, "chorus_batch_seconds_count", **chorus)
    assert 1 <= batches <= items
    assert delta(traffic, "chorus_batch_size_count", **chorus) == batches
    assert delta(traffic, "chorus_batch_padding_efficiency_count", **chorus) == batches
    # and counted exactly, for the dashboard's means (a histogram's _sum is rebuilt by Ray)
    assert delta(traffic, "chorus_batches_total", **chorus) == batches
    assert delta(traffic, "chorus_padded_batches_total", **chorus) == batches
    efficiency = delta(traffic, "chorus_batch_padding_efficiency_sum_total", **chorus)
    assert 0 < efficiency <= batches
    assert delta(traffic, "chorus_model_audio_seconds_total", **chorus) >= traffic["audio_s"] - 0.5
    # The failed stream's later sentences were dropped; nothing is left in flight.
    assert delta(traffic, "chorus_items_cancelled_total", application="metered") >= 1
    assert total(traffic["after"], "chorus_items_in_flight", **chorus) == 0


# Exported only by replicas on a CUDA device.
GPU_ONLY = {"ray_chorus_gpu_memory_bytes"}


def test_every_dashboard_and_alert_query_names_an_exported_metric(traffic: dict) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "chorus-dashboard.json").read_text())
    exported = set(traffic["after"])
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 12
    alerts = yaml.safe_load((ROOT / "deploy" / "chorus-alerts.yml").read_text())
    queries += [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]
    named = {m for q in queries for m in re.findall(r"\bray_[a-z_]+\b", q)}
    assert any(m.startswith("ray_serve_") for m in named)  # Ray Serve's own metrics too
    missing = sorted(m for m in named - GPU_ONLY if m not in exported)
    assert not missing, f"dashboard asks for metrics nobody exports: {missing}"
    prometheus = (ROOT / "deploy" / "prometheus.yml").read_text()
    assert "prom_metrics_service_discovery.json" in prometheus
