"""What a speech request asks for, checked and resolved once: the voices on offer, and the one
`RequestContext` that every stage of the pipeline reads (`speech.pipeline`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serve_app.config import AppConfig
from serve_app.deadline import Deadline
from serve_app.errors import BadRequest
from serve_app.model.voices import Speaker, VoiceInfo, VoiceLoadError, load_voices
from serve_app.protocol import SpeechRequest
from serve_app.speech import audio
from serve_app.speech.ordering import Voicing
from serve_app.speech.text import TextError, TextFrontend

if TYPE_CHECKING:  # the admitted request's work, set by the door
    from serve_app.queue.backlog import RequestWork


@dataclass(frozen=True)
class SpeechCall:
    """A speech request as read off the wire: the validated body, the lane it asks for
    (None: its key's default) and its deadline."""

    request: SpeechRequest
    asked_lane: str | None
    deadline: Deadline


class Catalogue:
    """The voices this server speaks (each speaker of a multi-speaker voice is a voice of its
    own: 'voice_id:speaker'), their aliases, and a text front end for each voice."""

    def __init__(self, config: AppConfig) -> None:
        self.voices: dict[str, VoiceInfo] = load_voices(config.voices)
        self.aliases: dict[str, Speaker] = {}  # NOTE: `_find`'s message lists them
        try:
            self.aliases = {alias: self._find(target) for alias, target in config.aliases.items()}
        except KeyError as exc:
            raise VoiceLoadError(f"voice_aliases: {exc.args[0]}") from None
        self.frontends = {
            vid: TextFrontend(info, config.max_item_chars) for vid, info in self.voices.items()
        }

    def voice(self, name: str) -> Speaker:
        """What a request's `voice` names: an alias, a voice id, or 'voice_id:speaker'."""
        if name in self.aliases:
            return self.aliases[name]
        try:
            return self._find(name)
        except KeyError as exc:
            raise BadRequest(
                f"unknown voice {name[:64]!r}: {exc.args[0]}",
                param="voice",
                code="unknown_voice",
            ) from None

    def _find(self, name: str) -> Speaker:
        voice_id, colon, speaker = name.partition(":")
        if voice_id not in self.voices:
            known = sorted([*self.voices, *self.aliases])
            raise KeyError(f"no such voice; available: {', '.join(known)}")
        return self.voices[voice_id].speaker(speaker if colon else None)

    def names(self) -> list[str]:
        """Every name a request's `voice` may say: voice ids, speaker ids, aliases."""
        return sorted({*self.voices, *(s.id for s in self.speakers()), *self.aliases})

    def speakers(self) -> list[Speaker]:
        """Every voice a request can name (each speaker of each voice), in config order."""
        return [s for info in self.voices.values() for s in info.all_speakers()]

    def phonemes_per_char(self) -> float:
        """The largest density of the voices' front ends (an estimate that errs long)."""
        return max(f.phonemes_per_char() for f in self.frontends.values())


@dataclass
class RequestContext:
    """One speech request from the door to its answer. Built by `plan`; `work` is set when
    the door admits it."""

    call: SpeechCall
    client: str
    lane: str
    speaker: Speaker
    frontend: TextFrontend
    fmt: audio.AudioFormat
    rate: int  # output sample rate
    sentences: list[str]
    voicing: Voicing
    work: RequestWork | None = field(default=None, repr=False)

    @property
    def voice(self) -> VoiceInfo:
        return self.speaker.voice

    @property
    def request(self) -> SpeechRequest:
        return self.call.request

    @property
    def deadline(self) -> Deadline:
        return self.call.deadline

    @property
    def stream(self) -> str:
        return self.request.delivery

    def tags(self) -> dict[str, str]:
        return {"voice": self.voice.id, "stream": self.stream, "lane": self.lane}

    def headers(self) -> dict[str, str]:
        return {
            "X-Chorus-Voice": self.speaker.id,
            "X-Chorus-Sample-Rate": str(self.rate),
            "X-Chorus-Lane": self.lane,
        }


def plan(
    call: SpeechCall, client: str, lane: str, catalogue: Catalogue, config: AppConfig
) -> RequestContext:
    """Everything about a request that can be refused before any work starts (400s)."""
    req = call.request
    if req.model not in config.models:
        raise BadRequest(
            f"unknown model {req.model[:64]!r}; available: {', '.join(config.models)}",
            param="model",
            code="model_not_found",
        )
    if len(req.input) > config.max_input_chars:
        raise BadRequest(
            f"input is {len(req.input)} characters; the limit is {config.max_input_chars}",
            param="input",
            code="string_above_max_length",
        )
    speaker = catalogue.voice(req.voice)
    voice = speaker.voice
    fmt = audio.FORMATS[req.response_format]
    try:
        rate = audio.output_rate(fmt, voice.sample_rate, req.sample_rate)
    except ValueError as exc:
        raise BadRequest(str(exc), param="sample_rate") from None
    frontend = catalogue.frontends[voice.id]
    try:
        sentences = frontend.prepare(req.input)
    except TextError as exc:
        raise BadRequest(str(exc), param="input", code="unspeakable_input") from None
    voicing = Voicing.create(speaker, req.speed, req.seed)
    return RequestContext(call, client, lane, speaker, frontend, fmt, rate, sentences, voicing)


def unspeakable() -> BadRequest:
    return BadRequest("input has no speakable text", param="input", code="unspeakable_input")
