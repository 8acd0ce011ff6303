"""The clients people already point at OpenAI-compatible speech servers, on the real app: the
openai SDK's streaming pattern, strict SSE readers, aac, Open WebUI's voice and model lists,
multi-speaker voices, and a config typo that must not deploy."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from openai import OpenAI
from ray import serve
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

from load_tests.local import SERVE_CONFIG
from serve_app.app import build_app
from serve_app.model.engines.piper import PiperEngine
from tests.helpers import TEXTS, decode, replica_stats, speech_body
from tests.integration.conftest import fake_app, speech
from tests.voices import export_multispeaker_voice

pytestmark = pytest.mark.timeout(240)

TEN = " ".join(f"Sentence number {i} is here." for i in range(10))
OPENAI_EVENTS = {"speech.audio.delta", "speech.audio.done"}


def strict_sse(lines) -> list[dict]:
    """An SSE reader as strict as typed clients (async-openai): comments and blank lines are
    skipped, any event type other than OpenAI's speech events is an error."""
    events = []
    for line in lines:
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(": ")
        assert field == "data", f"unexpected SSE field {field!r}"
        event = json.loads(value)
        assert event["type"] in OPENAI_EVENTS, f"unknown event type {event['type']!r}"
        events.append(event)
    return events


def test_the_openai_sdk_streaming_pattern_gets_audio_before_the_last_sentence_is_made(
    server: str,
) -> None:
    # The fake model takes 0.4 s a batch: ten sentences take several batches, one at a time.
    with fake_app(server, "sdkstream", delay_s=0.4, user_config={"max_batch_size": 1}) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        # OpenAI's documented pattern; no stream_format, as its examples send none.
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEN, response_format="pcm"
        ) as response:
            chunks = response.iter_bytes()
            first = next(chunks)
            made_by_then = replica_stats("sdkstream")["items"]
            rest = b"".join(chunks)
    assert first and rest
    assert made_by_then < 10, "the first bytes waited for every sentence"


def test_a_strict_sse_client_reads_a_default_stream_end_to_end(client) -> None:
    body = speech_body(TEXTS[0] + " " + TEXTS[1])
    with client.stream("POST", "/v1/audio/speech", json={**body, "stream_format": "sse"}) as r:
        assert r.status_code == 200, r.read()
        events = strict_sse(r.iter_lines())
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    assert set(events[-1]) == {"type", "usage"}  # OpenAI's fields, nothing else
    assert events[-1]["usage"]["total_tokens"] > 0
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    samples, _ = decode(audio)  # mp3, OpenAI's default format
    assert len(samples) > 22050


def test_opted_in_streams_carry_queue_and_sentence_events(client) -> None:
    body = speech_body(TEXTS[0] + " " + TEXTS[1])
    request = {**body, "stream_format": "sse", "chorus_events": True}
    with client.stream("POST", "/v1/audio/speech", json=request) as r:
        events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
    types = [e["type"] for e in events]
    assert types[0] == "speech.queue" and "estimated_start_s" in events[0]
    assert types.count("speech.sentence") == 2
    assert types[-1] == "speech.audio.done" and events[-1]["sentences"] == 2


def test_aac_decodes_whole_and_streamed_with_the_right_duration(client) -> None:
    body = {"input": TEXTS[2], "response_format": "aac", "seed": 5}
    whole = speech(client, **body, stream_format="file")
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/aac"
    seconds = float(whole.headers["x-chorus-audio-seconds"])
    streamed = speech(client, **body)  # OpenAI's default: streamed
    assert "content-length" not in streamed.headers
    for answer in (whole, streamed):
        samples, rate = decode(answer.content)
        assert rate == 22050
        # ADTS cannot mark the encoder's priming and padding: up to 3 frames of 1024 stay in
        assert 0 <= len(samples) / rate - seconds < 3 * 1024 / rate + 0.001


def test_voices_and_models_satisfy_open_webui(client) -> None:
    # What Open WebUI's OpenAI TTS engine reads from a custom base URL.
    voices = client.get("/v1/audio/voices").json()
    available = {voice["id"]: voice["name"] for voice in voices.get("voices", [])}
    assert "en_US-joe-medium" in available
    assert voices["data"] == voices["voices"]  # OpenAI-style clients read `data`
    assert "alloy" in voices["voices"][0]["aliases"]
    models = client.get("/v1/audio/models").json().get("models", [])
    assert "tts-1" in [m["id"] for m in models]
    assert speech(client, voice=next(iter(available)), input="Hi.").status_code == 200


@pytest.fixture(scope="module")
def trio(server: str, tmp_path_factory: pytest.TempPathFactory):
    """A multi-speaker voice (three speakers), served with OpenAI names on two of them; the
    model replica waits for its batch of two to fill. (The engine's padded GPU batches keep
    each item's speaker too: tests/unit/test_engine.py, against onnxruntime.)"""
    source = export_multispeaker_voice(tmp_path_factory.mktemp("voices"))
    args = {
        "voices": [source.model_dump(mode="json", exclude_none=True)],
        "voice_aliases": {"alloy": "trio:amy", "onyx": "trio:bob"},
    }
    engine = (PiperEngine, {"warm_buckets": False})
    batching = {"max_batch_size": 2, "batch_wait_timeout_s": 1.0}
    with fake_app(server, "trio", args, engine=engine, user_config=batching) as url:
        yield url


def test_a_multi_speaker_voice_serves_two_speakers_in_one_batch_each_as_alone(trio: str) -> None:
    listed = httpx.get(f"{trio}/v1/audio/voices", timeout=60).json()["data"]
    assert [v["id"] for v in listed] == ["trio:amy", "trio:bob", "trio:cal"]
    assert listed[1]["aliases"] == ["onyx"] and listed[1]["speaker"] == "bob"

    def ask(c: httpx.Client, voice: str) -> np.ndarray:
        body = speech_body("Two voices, one batch.", voice=voice, seed=3)
        r = c.post(f"{trio}/v1/audio/speech", json={**body, "response_format": "pcm"})
        assert r.status_code == 200, r.text
        return np.frombuffer(r.content, "<i2")

    with httpx.Client(timeout=120) as c:
        alone = {v: ask(c, v) for v in ("alloy", "onyx")}  # one batch each (the wait runs out)
        before = replica_stats("trio")
        together: dict[str, np.ndarray] = {}
        threads = [
            threading.Thread(target=lambda v=v: together.__setitem__(v, ask(c, v)))
            for v in ("alloy", "onyx")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = replica_stats("trio")
        by_number = ask(c, "trio:1")
    assert (after["items"] - before["items"], after["batches"] - before["batches"]) == (2, 1)
    for voice in ("alloy", "onyx"):
        assert np.array_equal(together[voice], alone[voice]), f"{voice} changed in a batch"
    assert not np.array_equal(alone["alloy"][:1000], alone["onyx"][:1000])
    assert np.array_equal(by_number, alone["onyx"])


def test_a_config_with_a_typo_refuses_to_deploy(server: str) -> None:
    raw = yaml.safe_load(Path(SERVE_CONFIG).read_text())
    (app,) = raw["applications"]
    # App args: what `serve deploy` runs in the controller fails, naming the key meant.
    args = {**app["args"], "max_input_char": 100}
    with pytest.raises(Exception, match="did you mean 'max_input_chars'"):
        call_user_app_builder_with_args_if_necessary(build_app, args)
    # The model replicas' user_config: the deployment fails, it does not run on defaults.
    try:
        with (
            pytest.raises(RuntimeError, match="Deploying application typo failed"),
            fake_app(server, "typo", user_config={"max_batch_sise": 4}),
        ):
            pass
        why = serve.status().applications["typo"].deployments["Synthesizer"].message
        assert "did you mean 'max_batch_size'" in why, why
    finally:
        serve.delete("typo")
