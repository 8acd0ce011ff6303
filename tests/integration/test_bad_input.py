"""Bad input of every kind gets a clear 4xx in the one envelope: never a 500, never a hang."""

from __future__ import annotations

import json

import pytest

from tests.helpers import speech_body
from tests.integration.conftest import assert_envelope

pytestmark = pytest.mark.timeout(60)

OK = speech_body("Hello.")


def with_(**changes) -> bytes:
    body = {**OK, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


CASES = {
    "empty input": (with_(input=""), 400, "input"),
    "whitespace-only input": (with_(input=" \n\t "), 400, "input"),
    "4097 characters": (with_(input="a" * 4097), 400, "input"),
    "emoji-only input": (with_(input="😀🎉👍🏽"), 400, "input"),
    "control characters only": (with_(input="\u0000\u0007\u001b"), 400, "input"),
    "unknown voice": (with_(voice="nobody"), 400, "voice"),
    "path-like voice": (with_(voice="../../etc/passwd"), 400, "voice"),
    "unknown format": (with_(response_format="ogg"), 400, "response_format"),
    "m4a": (with_(response_format="m4a"), 400, "response_format"),
    "speed 0": (with_(speed=0), 400, "speed"),
    "speed 10": (with_(speed=10), 400, "speed"),
    "speed as text": (with_(speed="fast"), 400, "speed"),
    "input as number": (with_(input=42), 400, "input"),
    "voice as list": (with_(voice=["alloy"]), 400, "voice"),
    "seed negative": (with_(seed=-1), 400, "seed"),
    "unknown field": (with_(volume=11), 400, "volume"),
    "unknown model": (with_(model="gpt-9"), 400, "model"),
    "missing input": (with_(input=...), 400, "input"),
    "bad sample rate for opus": (
        with_(response_format="opus", sample_rate=22050),
        400,
        "sample_rate",
    ),
    "unknown voice, as sse": (with_(voice="nobody", stream_format="sse"), 400, "voice"),
    "unknown stream_format": (with_(stream_format="websocket"), 400, "stream_format"),
    "timings with streamed audio": (with_(stream_format="audio", timings=True), 400, None),
    "timings not a boolean": (with_(timings="yes"), 400, "timings"),
    "unknown priority": (with_(priority="urgent"), 400, "priority"),
    "negative deadline": (with_(deadline_s=-1), 400, "deadline_s"),
    "deadline past the server's maximum": (with_(deadline_s=86400), 400, "deadline_s"),
    "deadline as text": (with_(deadline_s="soon"), 400, "deadline_s"),
    "malformed JSON": (b'{"model": "tts-1", "input": "Hi",', 400, None),
    "JSON array": (b'["tts-1"]', 400, None),
    "non-UTF-8 bytes": (
        b'{"model": "tts-1", "input": "\xff\xfe\xfa", "voice": "alloy"}',
        400,
        None,
    ),
    "empty body": (b"", 400, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_4xx_envelope(client, case: str) -> None:
    body, status, param = CASES[case]
    response = client.post(
        "/v1/audio/speech", content=body, headers={"content-type": "application/json"}
    )
    error = assert_envelope(response, status)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("header", "value", "param"),
    [
        ("X-Chorus-Priority", "urgent", "priority"),
        ("X-Chorus-Deadline", "soon", "deadline_s"),
        ("X-Chorus-Deadline", "-5", "deadline_s"),
        ("X-Chorus-Deadline", "nan", "deadline_s"),
        ("X-Chorus-Deadline", "99999", "deadline_s"),
    ],
)
def test_bad_priority_or_deadline_headers_are_400(client, header, value, param) -> None:
    response = client.post("/v1/audio/speech", json=OK, headers={header: value})
    assert assert_envelope(response, 400)["param"] == param


def test_wrong_content_type_is_415(client) -> None:
    response = client.post(
        "/v1/audio/speech", content=with_(), headers={"content-type": "text/plain"}
    )
    assert_envelope(response, 415)


def test_ten_megabyte_body_is_413(client) -> None:
    huge = json.dumps({**OK, "input": "a" * 10_000_000}).encode()
    response = client.post(
        "/v1/audio/speech", content=huge, headers={"content-type": "application/json"}
    )
    assert_envelope(response, 413)


def test_ten_megabyte_chunked_body_is_413(client) -> None:
    def chunks():
        yield b'{"model": "tts-1", "voice": "alloy", "input": "'
        for _ in range(100):
            yield b"a" * 100_000
        yield b'"}'

    response = client.post(
        "/v1/audio/speech", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_envelope(response, 413)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nothing", 404),
        ("GET", "/v1/audio/speech", 405),
        ("GET", "/v1/models/gpt-9", 404),
    ],
)
def test_unknown_routes_and_methods_use_the_envelope(client, method, path, status) -> None:
    assert_envelope(client.request(method, path), status)


def test_server_still_serves_after_all_that(client) -> None:
    response = client.post("/v1/audio/speech", json=OK)
    assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"
