"""Request and response models of the HTTP API, with reusable constrained types."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .audio import SUPPORTED

Speed = Annotated[float, Field(ge=0.25, le=4.0)]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
SampleRate = Annotated[int, Field(ge=8000, le=48000)]


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body, plus Chorus extensions (`seed`, `sample_rate`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=128, description="One of GET /v1/models.")
    input: str = Field(
        min_length=1, description="Text to speak, up to the server's max_input_chars (4096)."
    )
    voice: str = Field(
        min_length=1,
        max_length=128,
        description="A voice id or alias from GET /v1/audio/voices (OpenAI names work).",
    )
    response_format: str = Field(
        "mp3", description=f"One of {', '.join(SUPPORTED)}. pcm is 16-bit LE mono."
    )
    speed: Speed = Field(1.0, description="0.25 to 4.0; 1.0 is the voice's natural pace.")
    instructions: str | None = Field(
        None, max_length=4096, description="Accepted for compatibility; Piper voices ignore it."
    )
    stream_format: Literal["audio"] | None = Field(
        None, description="'audio' (the default): the response body is the audio file."
    )
    seed: Seed | None = Field(
        None,
        description="Chorus extension: the same seed, text, voice and speed give the same "
        "audio, whatever else the server is doing.",
    )
    sample_rate: SampleRate | None = Field(
        None,
        description="Chorus extension: output sample rate. Default: 24000 for pcm and opus, "
        "the voice's own rate otherwise.",
    )

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in SUPPORTED:
            hint = " (aac is not supported by this server)" if value == "aac" else ""
            raise ValueError(
                f"unsupported response_format {value!r}{hint}; use one of {', '.join(SUPPORTED)}"
            )
        return value


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "chorus"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class VoiceCard(BaseModel):
    id: str
    name: str
    language: str
    sample_rate: int
    aliases: list[str]


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceCard]
