"""PCM -> the response formats (wav, flac, mp3, opus, raw pcm), with resampling."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr


@dataclass(frozen=True)
class AudioFormat:
    name: str
    media_type: str
    default_rate: int | None  # None: the voice's own rate
    allowed_rates: tuple[int, ...] | None  # None: any rate in [MIN_RATE, MAX_RATE]
    sf_format: str | None  # soundfile container; None for raw pcm
    sf_subtype: str | None


MIN_RATE, MAX_RATE = 8000, 48000
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)

FORMATS: dict[str, AudioFormat] = {
    f.name: f
    for f in (
        AudioFormat("mp3", "audio/mpeg", None, _MP3_RATES, "MP3", "MPEG_LAYER_III"),
        AudioFormat("opus", "audio/ogg; codecs=opus", 24000, _OPUS_RATES, "OGG", "OPUS"),
        AudioFormat("flac", "audio/flac", None, None, "FLAC", "PCM_16"),
        AudioFormat("wav", "audio/wav", None, None, "WAV", "PCM_16"),
        # Like OpenAI's: 16-bit little-endian mono, 24 kHz unless asked otherwise.
        AudioFormat("pcm", "audio/pcm", 24000, None, None, None),
    )
}
SUPPORTED = tuple(FORMATS)


def output_rate(fmt: AudioFormat, native_rate: int, requested: int | None) -> int:
    """The sample rate a response in `fmt` will have; raises ValueError for an impossible one."""
    if requested is not None:
        if fmt.allowed_rates is not None and requested not in fmt.allowed_rates:
            raise ValueError(
                f"sample_rate {requested} is not possible for {fmt.name}; "
                f"use one of {', '.join(map(str, fmt.allowed_rates))}"
            )
        return requested
    if fmt.default_rate is not None:
        return fmt.default_rate
    if fmt.allowed_rates is not None and native_rate not in fmt.allowed_rates:
        return min(fmt.allowed_rates, key=lambda r: (r < native_rate, abs(r - native_rate)))
    return native_rate


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate or audio.size == 0:
        return audio
    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32)


def to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def encode(audio: np.ndarray, rate: int, fmt: AudioFormat) -> bytes:
    """A whole audio file (or raw PCM bytes) of mono float32 `audio` at `rate`."""
    if fmt.sf_format is None:
        return to_pcm16(audio)
    buf = io.BytesIO()
    with sf.SoundFile(
        buf, "w", samplerate=rate, channels=1, format=fmt.sf_format, subtype=fmt.sf_subtype
    ) as f:
        f.write(np.clip(audio, -1.0, 1.0))
    return buf.getvalue()
