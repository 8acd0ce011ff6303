"""The OpenAPI document, as the server behaves: every reference resolves, the request's
`model` and `voice` are enums of what this server accepts, and every status a route can
answer is declared, each error with the one envelope (and Retry-After where it is sent).

Routes declare their responses with `responses(...)`; `document()` adds what depends on the
config and the loaded voices. The manual's API page (docs/api.md) is checked against this document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from serve_app.config import AppConfig
from serve_app.protocol import ErrorResponse, SpeechRequest, SpeechWithTimings
from serve_app.speech import audio

REF = "#/components/schemas/{model}"

ERRORS: dict[int, str] = {
    400: "Invalid request (bad field, unknown voice or format, unspeakable text)",
    401: "Missing or invalid API key (when the server has keys)",
    403: "The API key may not use the requested priority lane",
    404: "No such model",
    413: "Request body too large",
    415: "Body is not application/json",
    429: "The client's rate or concurrency limit; retry after Retry-After seconds",
    503: "Overloaded, deadline cannot be met, model replicas not ready, or shared limits "
    "unavailable; retry after Retry-After seconds",
    504: "Took longer than the request's deadline",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying, from the measured drain rate.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
# Every route can answer these (a key, its limits; an overloaded or starting server).
ALWAYS = (401, 429, 503)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses `codes` (and those every route can give), for a route's
    `responses=`."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, *ALWAYS}):
        out[code] = {"model": ErrorResponse, "description": ERRORS[code]}
        if code in (429, 503):
            out[code]["headers"] = RETRY_AFTER
    return out


# One server-sent event; its data is one JSON object (OpenAI's speech events, Chorus's when
# asked for, and an error event with the envelope if a stream fails after it began).
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {
                        "enum": [
                            "speech.audio.delta",
                            "speech.audio.done",
                            "speech.queue",
                            "speech.sentence",
                            "error",
                        ]
                    },
                    "audio": {"type": "string", "description": "base64 (speech.audio.delta)"},
                    "error": {"$ref": REF.format(model="ErrorDetail")},
                },
            },
        },
    },
}

SPEECH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            **{
                f.media_type: {"schema": {"type": "string", "format": "binary"}}
                for f in audio.FORMATS.values()
            },
            "text/event-stream": {"schema": SSE_EVENT},
            "application/json": {"schema": {"$ref": REF.format(model="SpeechWithTimings")}},
        },
        "description": "The audio file; with stream_format, the audio streamed or as "
        "server-sent events; with timings, JSON.",
    },
    **responses(400, 403, 413, 415, 504),
}
SPEECH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="SpeechRequest")}}},
    }
}


def portable_rates() -> list[int]:
    """Sample rates every response format can take."""
    rates = set(range(audio.MIN_RATE, audio.MAX_RATE + 1))
    for fmt in audio.FORMATS.values():
        if fmt.allowed_rates is not None:
            rates &= set(fmt.allowed_rates)
    return sorted(rates)


def document(app: FastAPI, config: AppConfig, voices: list[str]) -> dict[str, Any]:
    """The OpenAPI document of `app` serving `config`, whose requests may name `voices`."""
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    _, defs = models_json_schema(
        [(SpeechRequest, "validation"), (SpeechWithTimings, "serialization")], ref_template=REF
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs["$defs"])
    props = schemas["SpeechRequest"]["properties"]
    props["model"]["enum"] = list(config.models)
    props["voice"]["enum"] = sorted(voices)
    props["input"]["maxLength"] = config.max_input_chars
    deadline, _ = props["deadline_s"]["anyOf"]
    deadline["maximum"] = config.max_deadline_s
    rate, _ = props["sample_rate"]["anyOf"]
    rate["enum"] = portable_rates()
    for param in doc["paths"]["/v1/models/{model_id}"]["get"]["parameters"]:
        param["schema"]["enum"] = list(config.models)  # any other id: 404
    # NOTE: a parameter FastAPI cannot parse gets the envelope with 400 (http.responses),
    # never FastAPI's own 422 body.
    for path in doc["paths"].values():
        for operation in path.values():
            operation["responses"].pop("422", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return doc
