"""Voice metadata read from a Piper voice's .onnx.json (no model weights, no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.config import VoiceSource


class VoiceLoadError(RuntimeError):
    """A configured voice cannot be served; the message says why."""


@dataclass(frozen=True)
class VoiceInfo:
    id: str
    model_path: Path
    sample_rate: int
    language: str
    espeak_voice: str
    phoneme_id_map: dict[str, tuple[int, ...]]
    length_scale: float
    noise_scale: float
    noise_w: float
    speakers: dict[str, int] = field(default_factory=dict)  # name -> id; {} for one speaker

    def speaker(self, name: str | None) -> Speaker:
        """One of this voice's speakers, by name or number (None: the first)."""
        if not self.speakers:
            if name is not None:
                raise KeyError(f"voice {self.id!r} has one speaker; ask for {self.id!r}")
            return Speaker(self)
        if name is None:
            name = min(self.speakers, key=self.speakers.__getitem__)
        by_number = {str(n): s for s, n in self.speakers.items()}
        found = name if name in self.speakers else by_number.get(name)
        if found is None:
            raise KeyError(
                f"voice {self.id!r} has no speaker {name[:64]!r} "
                f"({len(self.speakers)} speakers: GET /v1/audio/voices lists them)"
            )
        return Speaker(self, self.speakers[found], found)

    def all_speakers(self) -> list[Speaker]:
        if not self.speakers:
            return [Speaker(self)]
        return [Speaker(self, n, s) for s, n in sorted(self.speakers.items(), key=lambda x: x[1])]

    @classmethod
    def load(cls, source: VoiceSource) -> VoiceInfo:
        model_path, config_path = source.resolve()
        for path in (model_path, config_path):
            if not path.is_file():
                raise VoiceLoadError(f"voice {source.id!r}: file not found: {path}")
        try:
            cfg = json.loads(config_path.read_text(encoding="utf-8"))
            phoneme_type = cfg.get("phoneme_type", "espeak")
            if phoneme_type != "espeak":
                raise VoiceLoadError(
                    f"voice {source.id!r}: phoneme_type {phoneme_type!r} is not supported "
                    "(only espeak voices)"
                )
            inference = cfg.get("inference", {})
            language = cfg.get("language", {}).get("code") or cfg["espeak"]["voice"]
            return cls(
                id=source.id,
                model_path=model_path,
                sample_rate=int(cfg["audio"]["sample_rate"]),
                language=str(language),
                espeak_voice=str(cfg["espeak"]["voice"]),
                phoneme_id_map={k: tuple(v) for k, v in cfg["phoneme_id_map"].items()},
                length_scale=float(inference.get("length_scale", 1.0)),
                noise_scale=float(inference.get("noise_scale", 0.667)),
                noise_w=float(inference.get("noise_w", 0.8)),
                speakers=_speakers(cfg),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VoiceLoadError(f"voice {source.id!r}: bad config {config_path}: {exc}") from exc


@dataclass(frozen=True)
class Speaker:
    """What a request's `voice` names: a voice, and one of its speakers."""

    voice: VoiceInfo
    number: int = 0  # the model's speaker id
    name: str | None = None  # None for a one-speaker voice

    @property
    def id(self) -> str:
        """How requests name it: the voice id, or 'voice_id:speaker'."""
        return self.voice.id if self.name is None else f"{self.voice.id}:{self.name}"


def _speakers(cfg: dict) -> dict[str, int]:
    """A multi-speaker voice's speakers (name -> id; numbers as names when unnamed)."""
    count = int(cfg.get("num_speakers", 1))
    if count <= 1:
        return {}
    named = {str(k): int(v) for k, v in (cfg.get("speaker_id_map") or {}).items()}
    if any(not 0 <= n < count for n in named.values()):
        raise ValueError(f"speaker_id_map has ids outside 0..{count - 1}")
    return named or {str(n): n for n in range(count)}


def load_voices(sources: list[VoiceSource]) -> dict[str, VoiceInfo]:
    return {s.id: VoiceInfo.load(s) for s in sources}
