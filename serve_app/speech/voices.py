"""Voice metadata read from a Piper voice's .onnx.json (no model weights, no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
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
            if int(cfg.get("num_speakers", 1)) != 1:
                raise VoiceLoadError(
                    f"voice {source.id!r}: multi-speaker voices are not supported yet"
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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise VoiceLoadError(f"voice {source.id!r}: bad config {config_path}: {exc}") from exc


def load_voices(sources: list[VoiceSource]) -> dict[str, VoiceInfo]:
    return {s.id: VoiceInfo.load(s) for s in sources}
