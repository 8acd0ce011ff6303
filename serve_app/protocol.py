"""Request and response models of the HTTP API, with reusable constrained types (plain
pydantic: read by the HTTP layer and the speech pipeline alike)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from serve_app.config import Lane

Speed = Annotated[float, Field(ge=0.25, le=4.0)]
# The response formats, by name (`speech.audio.FORMATS` writes each; a unit test keeps the two
# the same): only names here, so the API's models load no audio library.
SUPPORTED = ("mp3", "opus", "aac", "flac", "wav", "pcm")
# A speakable text has a letter or a number in any script (what `speech.text` checks).
SPEAKABLE = r"[\p{L}\p{N}]"


def _integral(value: object) -> object:
    """1.0 is an integer in JSON Schema (and some JSON encoders write it so)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integral = BeforeValidator(_integral)
Seed = Annotated[int, Field(ge=0, le=2**63 - 1), Integral]
MIN_DEADLINE_S = 0.1
SampleRate = Annotated[int, Field(ge=8000, le=48000), Integral]


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body, plus Chorus extensions (`seed`, `sample_rate`)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # NOTE: the OpenAPI document states what `_timings_need_a_json_answer` enforces.
        json_schema_extra={
            "not": {
                "required": ["timings", "stream_format"],
                "properties": {"timings": {"const": True}, "stream_format": {"const": "audio"}},
            }
        },
    )

    model: str = Field(min_length=1, max_length=128, description="One of GET /v1/models.")
    input: str = Field(
        min_length=1,
        description="Text to speak, up to the server's max_input_chars (4096); it must have "
        "a letter or a number, in any script (text with only punctuation, symbols or emoji is "
        "a 400).",
        json_schema_extra={"pattern": SPEAKABLE},
    )
    voice: str = Field(
        min_length=1,
        max_length=128,
        description="A voice id or alias from GET /v1/audio/voices (OpenAI names work).",
    )
    response_format: str = Field(
        "mp3",
        description=f"One of {', '.join(SUPPORTED)}. pcm is 16-bit LE mono; aac is ADTS.",
        json_schema_extra={"enum": list(SUPPORTED)},
    )
    speed: Speed = Field(1.0, description="0.25 to 4.0; 1.0 is the voice's natural pace.")
    instructions: str | None = Field(
        None, max_length=4096, description="Accepted for compatibility; Piper voices ignore it."
    )
    stream_format: Literal["audio", "sse", "file"] | None = Field(
        None,
        description="'audio' (OpenAI's default, also when omitted): the audio file is streamed "
        "as it is made. 'sse': server-sent events, speech.audio.delta (base64 audio) then "
        "speech.audio.done (usage), as OpenAI sends them. Chorus extension 'file': the whole "
        "file in one response, with Content-Length and X-Chorus-* timing headers (also what "
        "`timings: true` answers when stream_format is omitted).",
    )
    chorus_events: bool = Field(
        False,
        description="Chorus extension, with stream_format 'sse': also send speech.queue "
        "(position and estimated start, before the first audio) and speech.sentence (each "
        "sentence's timing) events, and Chorus's fields in speech.audio.done. Off by default "
        "because strict OpenAI clients reject event types they do not know.",
    )
    seed: Seed | None = Field(
        None,
        description="Chorus extension: the same seed, text, voice and speed give the same "
        "audio, whatever else the server is doing.",
    )
    timings: bool = Field(
        False,
        description="Chorus extension: answer with JSON holding the base64 audio and each "
        "sentence's start and end in it (not with stream_format 'audio'; with 'sse' it turns "
        "on chorus_events, whose speech.sentence events carry them).",
    )
    sample_rate: SampleRate | None = Field(
        None,
        description="Chorus extension: output sample rate. Default: 24000 for pcm and opus, "
        "the voice's own rate otherwise. wav, flac and pcm take any rate from 8000 to 48000; "
        "mp3, opus and aac their standard rates (the schema lists those every format takes).",
    )
    priority: Lane | None = Field(
        None,
        description="Chorus extension: 'interactive' (goes first) or 'batch' (keeps a small "
        "guaranteed share). Default: the API key's default lane. Header: X-Chorus-Priority.",
    )
    deadline_s: float | None = Field(
        None,
        ge=MIN_DEADLINE_S,
        description="Chorus extension: seconds from arrival by which the audio must be "
        "done, at least 0.1. Refused at once with 503 if the queue says it cannot be met; 504 "
        "if it runs out. Default: the server's request_timeout_s. Header: X-Chorus-Deadline.",
    )

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in SUPPORTED:
            raise ValueError(
                f"unsupported response_format {value[:32]!r}; use one of {', '.join(SUPPORTED)}"
            )
        return value

    @model_validator(mode="after")
    def _timings_need_a_json_answer(self) -> SpeechRequest:
        if self.timings and self.stream_format == "audio":
            raise ValueError(
                "timings cannot be sent with stream_format 'audio'; omit stream_format for a "
                "JSON answer, or use 'sse' with chorus_events"
            )
        return self

    @property
    def delivery(self) -> Literal["audio", "sse", "file"]:
        """How the answer is sent: stream_format, or OpenAI's default (streamed audio); a
        JSON answer with `timings` is a whole file."""
        if self.stream_format is not None:
            return self.stream_format
        return "file" if self.timings else "audio"

    @property
    def chorus_sse(self) -> bool:
        """An SSE stream carries Chorus's own events too."""
        return self.chorus_events or self.timings


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error's body (`errors.ChorusError.envelope`)."""

    error: ErrorDetail


class SentenceTiming(BaseModel):
    index: int
    text: str
    start_s: float = Field(description="Where the sentence's speech starts in the audio.")
    end_s: float


class SpeechWithTimings(BaseModel):
    """The answer to a request with `timings: true`."""

    object: Literal["speech"] = "speech"
    audio: str = Field(description="The audio file, base64.")
    media_type: str
    sample_rate: int
    audio_seconds: float
    sentences: list[SentenceTiming]


class QueueInfo(BaseModel):
    """Work this ingress replica has sent to the model replicas and not yet got back."""

    object: Literal["queue"] = "queue"
    requests: int = Field(description="Requests in progress (streams included).")
    items: int = Field(description="Sentence items queued or being synthesized.")
    phonemes: int = Field(description="Their size in phoneme ids (the model's input tokens).")
    phonemes_per_s: float | None = Field(
        description="Measured drain rate while busy; null before any work finished."
    )
    estimated_wait_s: float | None = Field(
        description="How long a new request would wait for its first sentence."
    )
    items_in_flight: int = Field(description="Items at the model replicas now.")
    model_replicas: int = Field(
        description="Model replicas that answered this ingress replica in the last 30 s; "
        "items in flight are at most items_in_flight for each."
    )
    lanes: dict[str, LaneInfo] = Field(description="The same per priority lane.")


class LaneInfo(BaseModel):
    """One priority lane, as a new request in it would see the queue."""

    requests: int = Field(description="Requests of this lane in progress.")
    items_waiting: int = Field(description="Their sentence items waiting for the model.")
    estimated_wait_s: float | None = Field(
        description="Estimated wait for a new request's first sentence: items in flight, "
        "more urgent lanes' items and one fair round of this lane; null before any work "
        "finished."
    )
    backlog_s: float | None = Field(
        description="Admitted work that goes before or beside a new request here, in "
        "seconds at the measured rate; past max_backlog_s new requests get 503."
    )


class Healthz(BaseModel):
    status: Literal["ok"] = "ok"


class Readyz(BaseModel):
    status: Literal["ready"] = "ready"
    model_replicas: int = Field(description="Model replicas running (loaded and healthy).")
    replica_states: dict[str, int] = Field(description="Model replicas by Serve state.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "chorus"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AudioModelList(ModelList):
    """`GET /v1/audio/models`: the same list under `data` and, for Open WebUI, `models`."""

    models: list[ModelCard]


class VoiceCard(BaseModel):
    id: str = Field(description="What a request's `voice` may say (so may any alias).")
    name: str
    voice: str = Field(description="The voice (model file) it belongs to.")
    speaker: str | None = Field(description="Its speaker in a multi-speaker voice, else null.")
    language: str
    sample_rate: int
    aliases: list[str] = Field(description="Other names for it, OpenAI voice names included.")


class VoiceList(BaseModel):
    """`GET /v1/audio/voices`: the same list under `data` and, for Open WebUI and Kokoro-style
    clients, `voices`."""

    object: Literal["list"] = "list"
    data: list[VoiceCard]
    voices: list[VoiceCard]
