"""PCM -> the response formats (wav, flac, mp3, opus, raw pcm), whole or streamed; resampling."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Any

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
    # False: the container needs the whole length up front, so a "stream" is sent at the end.
    progressive: bool = True
    sf_options: dict[str, Any] = field(default_factory=dict, hash=False)


MIN_RATE, MAX_RATE = 8000, 48000
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)

FORMATS: dict[str, AudioFormat] = {
    f.name: f
    for f in (
        # NOTE: constant bitrate: a streamed mp3 has no length header (Xing frame), and
        # decoders then estimate the length from the first frame's bitrate, which cuts
        # variable-bitrate files short.
        AudioFormat(
            "mp3",
            "audio/mpeg",
            None,
            _MP3_RATES,
            "MP3",
            "MPEG_LAYER_III",
            sf_options={"compression_level": 0.5, "bitrate_mode": "CONSTANT"},
        ),
        AudioFormat("opus", "audio/ogg; codecs=opus", 24000, _OPUS_RATES, "OGG", "OPUS"),
        # NOTE: libsndfile (so soundfile) cannot read a FLAC stream whose header lacks the
        # total length, which is only known at the end.
        AudioFormat("flac", "audio/flac", None, None, "FLAC", "PCM_16", progressive=False),
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
    with _sound_file(buf, fmt, rate) as f:
        f.write(np.clip(audio, -1.0, 1.0))
    return buf.getvalue()


def _sound_file(file: Any, fmt: AudioFormat, rate: int) -> sf.SoundFile:
    return sf.SoundFile(
        file,
        "w",
        samplerate=rate,
        channels=1,
        format=fmt.sf_format,
        subtype=fmt.sf_subtype,
        **fmt.sf_options,
    )


def streaming_wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length (sizes set to the maximum)."""
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVEfmt "
        + struct.pack("<I", len(fmt_chunk))
        + fmt_chunk
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


class StreamEncoder:
    """Encodes a response progressively: `write` returns the bytes ready so far, `close` the rest.

    Resampling is streamed too, and gives the same samples as resampling the whole audio.
    Not thread-safe: one request's encoder is used by one task at a time.
    """

    def __init__(self, fmt: AudioFormat, in_rate: int, out_rate: int) -> None:
        self.fmt = fmt
        self.rate = out_rate
        self.samples = 0  # written so far, at the output rate
        self._resampler = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )
        self._held: list[np.ndarray] = []  # whole-file formats: everything, encoded at close
        self._sink: _Sink | None = None
        self._file: sf.SoundFile | None = None
        if fmt.sf_format is not None and fmt.progressive:
            self._sink = _Sink()
            self._file = _sound_file(self._sink, fmt, out_rate)
        self._header = streaming_wav_header(out_rate) if fmt.name == "wav" else b""

    def write(self, audio: np.ndarray) -> bytes:
        return self._encode(self._resample(audio, last=False))

    def close(self) -> bytes:
        """The last bytes of the response (flushes the resampler and the container)."""
        tail = self._encode(self._resample(np.zeros(0, dtype=np.float32), last=True))
        if self._file is not None:
            self._file.close()
            assert self._sink is not None
            return tail + self._sink.take()
        if self._held:
            return encode(np.concatenate(self._held), self.rate, self.fmt)
        return tail

    def _resample(self, audio: np.ndarray, last: bool) -> np.ndarray:
        audio = audio.astype(np.float32, copy=False)
        if self._resampler is None:
            return audio
        return self._resampler.resample_chunk(audio, last=last)

    def _encode(self, audio: np.ndarray) -> bytes:
        self.samples += audio.size
        if not self.fmt.progressive:
            self._held.append(audio)
            return b""
        if self._file is not None:
            assert self._sink is not None
            if audio.size:
                self._file.write(np.clip(audio, -1.0, 1.0))
            return self._sink.take()
        header, self._header = self._header, b""
        return header + to_pcm16(audio)


class _Sink:
    """A seekable in-memory file that hands out each byte once, as soon as it is written.

    NOTE: encoders seek back at close to patch their first bytes (mp3's Xing frame); by then
    those bytes are sent, so the patch is dropped. Every format streamed this way decodes
    without it (tested).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._sent = 0

    def take(self) -> bytes:
        new = bytes(self._buf[self._sent :])
        self._sent = len(self._buf)
        return new

    def write(self, data: Any) -> int:
        data = bytes(data)
        end = self._pos + len(data)
        if end > len(self._buf):
            self._buf.extend(bytes(end - len(self._buf)))
        self._buf[self._pos : end] = data
        self._pos = end
        return len(data)

    def read(self, size: int = -1) -> bytes:
        end = len(self._buf) if size < 0 else self._pos + size
        data = bytes(self._buf[self._pos : end])
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._buf)}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos
