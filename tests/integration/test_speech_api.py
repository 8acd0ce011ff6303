"""The speech API through the official openai client and raw HTTP, with the real voice."""

from __future__ import annotations

import numpy as np
import pytest
from openai import OpenAI
from ray import serve

from tests.helpers import decode, pcm16
from tests.integration.conftest import speech

pytestmark = pytest.mark.timeout(180)

TEXT = (
    "Chorus turns text into speech for many people at once. Each person hears only their own words."
)
WORDS = len(TEXT.split())


def plausible(seconds: float) -> bool:
    """People speak roughly 1.5 to 4 words a second."""
    return WORDS / 4.0 < seconds < WORDS / 1.5


@pytest.fixture(scope="module")
def openai_client(server: str) -> OpenAI:
    return OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac", "wav", "pcm"])
def test_openai_client_gets_speech_in_every_format(openai_client: OpenAI, fmt: str) -> None:
    response = openai_client.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=fmt
    )
    body = response.content
    if fmt == "pcm":
        samples, rate = pcm16(body), 24000
    else:
        samples, rate = decode(body)
        assert rate == (24000 if fmt == "opus" else 22050)
    assert plausible(len(samples) / rate), len(samples) / rate
    assert float(np.sqrt(np.mean(samples**2))) > 0.01  # not silence


def test_openai_streaming_response_works(openai_client: OpenAI) -> None:
    with openai_client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", voice="en_US-joe-medium", input=TEXT, response_format="wav"
    ) as response:
        body = b"".join(response.iter_bytes(4096))
    samples, rate = decode(body)
    assert plausible(len(samples) / rate)


def test_raw_http_headers_and_default_format(client) -> None:
    streamed = speech(client, input="Hello there.", seed=1)  # OpenAI's default: streamed mp3
    assert streamed.status_code == 200
    assert streamed.headers["content-type"] == "audio/mpeg"
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert streamed.headers["x-chorus-voice"] == "en_US-joe-medium"
    response = speech(client, input="Hello there.", seed=1, stream_format="file")
    assert int(response.headers["content-length"]) == len(response.content)
    samples, rate = decode(response.content)
    assert float(response.headers["x-chorus-audio-seconds"]) == pytest.approx(
        len(samples) / rate, abs=0.1
    )
    # the same audio; a streamed mp3 has no gapless header, so the encoder's delay stays
    assert 0 <= len(decode(streamed.content)[0]) - len(samples) < 3 * 1152


def test_same_seed_same_audio_other_seed_other_audio(client) -> None:
    a = speech(client, input=TEXT, response_format="pcm", seed=11).content
    b = speech(client, input=TEXT, response_format="pcm", seed=11).content
    c = speech(client, input=TEXT, response_format="pcm", seed=12).content
    assert a == b
    assert a != c


def test_speed_and_sample_rate_extensions(client) -> None:
    normal = pcm16(speech(client, input=TEXT, response_format="pcm", seed=1).content)
    fast = pcm16(speech(client, input=TEXT, response_format="pcm", seed=1, speed=2.0).content)
    assert len(fast) < 0.75 * len(normal)
    wav = speech(client, input="Hi.", response_format="wav", sample_rate=16000)
    assert decode(wav.content)[1] == 16000


def test_a_longest_sentence_at_a_quarter_speed_comes_back_whole(client) -> None:
    # NOTE: one sentence item (under max_item_chars, 400) whose audio, ~64 s, is over 4 MiB as
    # the model replica's float32 answer: Serve's default cap on a gRPC message between
    # replicas (config.NODE_SETTINGS) answered 500 for it.
    text = (
        "The committee reviewed the long report on the regional water supply, the aging pumps, "
        "the new reservoir plans, the budget for the coming years, the staffing of the "
        "treatment works, and the public meetings that were held in every town along the "
        "river, where farmers, teachers, shop owners and retired engineers asked careful "
        "questions about the cost"
    )
    r = speech(client, input=text, response_format="pcm", stream_format="file", seed=3, speed=0.25)
    assert r.status_code == 200, r.text
    assert r.headers["x-chorus-sentences"] == "1"
    seconds = len(pcm16(r.content)) / 24000
    assert seconds > 4 * 2**20 / 4 / 22050, seconds  # more float32 samples than 4 MiB holds


def test_discovery_endpoints(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model_replicas"] >= 1
    # the ingress reads the controller's answer itself: the states serve.status() gives
    status = serve.status().applications["chorus"].deployments["Synthesizer"]
    assert ready["replica_states"] == {str(k): v for k, v in status.replica_states.items()}
    models = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "tts-1" in models and "gpt-4o-mini-tts" in models
    (voice,) = client.get("/v1/audio/voices").json()["data"]
    assert voice["id"] == "en_US-joe-medium" and voice["sample_rate"] == 22050
    assert voice["language"] == "en_US" and "alloy" in voice["aliases"]
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]
    ref = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    props = schema["components"]["schemas"][ref]["properties"]
    assert {"seed", "sample_rate", "speed", "response_format"} <= set(props)
