"""PCM -> the response formats, whole or streamed; resampling.

One writer per response owns its format: raw pcm and streamed wav are written here, wav and
flac files by soundfile (libsndfile), and mp3, opus and aac by FFmpeg's encoders through PyAV,
muxed into a sink that only ever appends, so nothing is patched after it was sent. Measured
CPU cost per audio-second of each: docs/performance.md, "Encoding cost"
(`load_tests.bench_encoders`).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import soundfile as sf
import soxr

Writer = Literal["pcm", "soundfile", "ffmpeg"]


@dataclass(frozen=True)
class AudioFormat:
    name: str
    media_type: str
    default_rate: int | None  # None: the voice's own rate
    allowed_rates: tuple[int, ...] | None  # None: any rate in [MIN_RATE, MAX_RATE]
    writer: Writer
    container: str | None = None  # soundfile's format, or FFmpeg's muxer
    codec: str | None = None  # soundfile's subtype, or FFmpeg's encoder
    bit_rate: int | None = None  # ffmpeg writers: constant bit rate, bits/s
    mux_options: dict[str, str] = field(default_factory=dict, hash=False)  # ffmpeg muxer's
    codec_options: dict[str, str] = field(default_factory=dict, hash=False)  # and encoder's


MIN_RATE, MAX_RATE = 8000, 48000
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

FORMATS: dict[str, AudioFormat] = {
    f.name: f
    for f in (
        # NOTE: constant bitrate: a streamed mp3 has no length header (Xing frame), and
        # decoders then estimate the length from the first frame's bitrate, which cuts
        # variable-bitrate files short.
        # NOTE: LAME's fast mode (compression_level 7) costs ~60% of its default's CPU for
        # speech at 64 kbit/s, and the same for opus at complexity 5 against 10; measured in
        # load_tests.bench_encoders.
        AudioFormat(
            "mp3",
            "audio/mpeg",
            None,
            _MP3_RATES,
            "ffmpeg",
            "mp3",
            "libmp3lame",
            64000,
            codec_options={"compression_level": "7"},
        ),  # fmt: skip
        # NOTE: Ogg pages of at most 100 ms (FFmpeg's default: 1 s), so each sentence's audio
        # leaves with it rather than with the next one; ~5% more bytes.
        AudioFormat(
            "opus",
            "audio/ogg; codecs=opus",
            24000,
            _OPUS_RATES,
            "ffmpeg",
            "ogg",
            "libopus",
            32000,
            mux_options={"page_duration": "100000"},
            codec_options={"compression_level": "5"},
        ),  # fmt: skip
        # ADTS: AAC frames with their own headers, playable as they arrive.
        AudioFormat("aac", "audio/aac", None, _AAC_RATES, "ffmpeg", "adts", "aac", 64000),
        # NOTE: libsndfile (so soundfile) cannot read a FLAC stream whose header lacks the
        # total length, which is only known at the end.
        AudioFormat("flac", "audio/flac", None, None, "soundfile", "FLAC", "PCM_16"),
        AudioFormat("wav", "audio/wav", None, None, "soundfile", "WAV", "PCM_16"),
        # Like OpenAI's: 16-bit little-endian mono, 24 kHz unless asked otherwise.
        AudioFormat("pcm", "audio/pcm", 24000, None, "pcm"),
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
    """16-bit little-endian samples, scaled and rounded as libsndfile writes a wav file (so a
    streamed wav has the same samples as a whole one)."""
    # NOTE: float32 is exact here (x 2**15, then floor); float64 cost ~3x the CPU.
    scaled = np.floor(np.clip(audio, -1.0, 1.0, dtype=np.float32) * np.float32(32768.0))
    return np.minimum(scaled, 32767.0, out=scaled).astype("<i2").tobytes()


def encode(audio: np.ndarray, rate: int, fmt: AudioFormat) -> bytes:
    """A whole audio file (or raw PCM bytes) of mono float32 `audio` at `rate`."""
    if fmt.writer == "soundfile":
        buf = io.BytesIO()
        sf.write(buf, np.clip(audio, -1.0, 1.0), rate, format=fmt.container, subtype=fmt.codec)
        return buf.getvalue()
    if fmt.writer == "ffmpeg":
        writer = _FfmpegWriter(fmt, rate, whole=True)
        return writer.write(audio) + writer.close()
    return to_pcm16(audio)


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
        self._writer = _stream_writer(fmt, out_rate)
        # Samples copied out as 16-bit, nothing resampled: cheaper than a hop to a thread.
        self.light = self._resampler is None and isinstance(self._writer, _PcmWriter)

    def write(self, audio: np.ndarray) -> bytes:
        return self._encode(self._resample(audio, last=False))

    def close(self) -> bytes:
        """The last bytes of the response (flushes the resampler and the encoder)."""
        tail = self._encode(self._resample(np.zeros(0, dtype=np.float32), last=True))
        return tail + self._writer.close()

    def _resample(self, audio: np.ndarray, last: bool) -> np.ndarray:
        audio = audio.astype(np.float32, copy=False)
        if self._resampler is None:
            return audio
        return self._resampler.resample_chunk(audio, last=last)

    def _encode(self, audio: np.ndarray) -> bytes:
        self.samples += audio.size
        return self._writer.write(audio) if audio.size else b""


class _Writer(Protocol):
    def write(self, audio: np.ndarray) -> bytes: ...

    def close(self) -> bytes: ...


def _stream_writer(fmt: AudioFormat, rate: int) -> _Writer:
    """How a stream in `fmt` is written. A container that needs the whole length up front
    (flac) is held and sent at the end."""
    if fmt.writer == "ffmpeg":
        return _FfmpegWriter(fmt, rate)
    if fmt.writer == "pcm":
        return _PcmWriter()
    if fmt.name == "wav":
        return _PcmWriter(streaming_wav_header(rate))
    return _WholeFile(fmt, rate)


class _PcmWriter:
    """Raw 16-bit samples, after an optional header (a streamed wav's)."""

    def __init__(self, header: bytes = b"") -> None:
        self._header = header

    def write(self, audio: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + to_pcm16(audio)

    def close(self) -> bytes:
        header, self._header = self._header, b""
        return header


class _WholeFile:
    """A container that needs the whole length first: everything is encoded at close."""

    def __init__(self, fmt: AudioFormat, rate: int) -> None:
        self._fmt, self._rate = fmt, rate
        self._held: list[np.ndarray] = []

    def write(self, audio: np.ndarray) -> bytes:
        self._held.append(audio)
        return b""

    def close(self) -> bytes:
        held = np.concatenate(self._held) if self._held else np.zeros(0, dtype=np.float32)
        return encode(held, self._rate, self._fmt)


def load_ffmpeg() -> bool:
    """Import PyAV now, at an ingress's start, not on a request's path (a first import in
    the middle of a burst cost a light client its fair share in the cluster tests); False
    where it is missing (an offline GPU bundle: mp3, opus and aac then fail)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class _FfmpegWriter:
    """One FFmpeg encoder and muxer (PyAV), writing into an append-only sink.

    NOTE: a streamed response's sink has no `seek`, so FFmpeg knows the output is not seekable
    and never goes back to patch a header: every byte is final once written. A streamed mp3
    then carries no gapless (LAME) header, so decoders keep the encoder's delay and padding
    (~50-70 ms); a `whole` file is written to a seekable buffer and has that header.
    """

    def __init__(self, fmt: AudioFormat, rate: int, whole: bool = False) -> None:
        # NOTE: imported here: only mp3, opus and aac need FFmpeg, and a process that never
        # encodes them (a model replica) never loads it; an ingress has (`load_ffmpeg`).
        import av

        self._av = av
        self._rate = rate
        self._sink: _AppendOnly | io.BytesIO = io.BytesIO() if whole else _AppendOnly()
        self._container = av.open(
            self._sink, mode="w", format=fmt.container, options=fmt.mux_options
        )
        self._stream = self._container.add_stream(
            fmt.codec, rate=rate, layout="mono", options=fmt.codec_options
        )
        self._stream.bit_rate = fmt.bit_rate

    def write(self, audio: np.ndarray) -> bytes:
        if not audio.size:
            return b""
        frame = self._av.AudioFrame.from_ndarray(
            np.clip(audio, -1.0, 1.0).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = self._rate
        self._container.mux(self._stream.encode(frame))
        return self._sink.take() if isinstance(self._sink, _AppendOnly) else b""

    def close(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._sink.take() if isinstance(self._sink, _AppendOnly) else self._sink.getvalue()


class _AppendOnly:
    """A write-only file that hands out each byte once, as soon as it is written."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data
