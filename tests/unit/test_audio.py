"""Every response format decodes to the audio that went in."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.speech import audio
from tests.helpers import decode, pcm16

pytestmark = pytest.mark.timeout(60)

RATE = 22050
TONE = (0.4 * np.sin(2 * np.pi * 220 * np.arange(RATE) / RATE)).astype(np.float32)


@pytest.mark.parametrize("name", ["mp3", "opus", "aac", "flac", "wav"])
def test_files_decode_with_right_rate_and_length(name: str) -> None:
    fmt = audio.FORMATS[name]
    rate = audio.output_rate(fmt, RATE, None)
    data, got_rate = decode(audio.encode(audio.resample(TONE, RATE, rate), rate, fmt))
    assert got_rate == rate == (24000 if name == "opus" else RATE)
    if name == "aac":  # ADTS cannot say how much priming to drop: up to 3 frames stay in
        assert 0 <= len(data) - len(TONE) <= 3 * 1024
    else:
        assert abs(len(data) / got_rate - 1.0) < 0.05
    assert 0.2 < float(np.sqrt(np.mean(data**2))) < 0.35  # the tone's RMS is 0.28


def test_lossless_formats_are_exact_to_16_bits() -> None:
    for name in ("flac", "wav"):
        data, _ = decode(audio.encode(TONE, RATE, audio.FORMATS[name]))
        assert np.abs(data - TONE).max() < 1 / 32767 + 1e-6


def test_pcm_is_16_bit_little_endian_at_24k() -> None:
    fmt = audio.FORMATS["pcm"]
    rate = audio.output_rate(fmt, RATE, None)
    body = audio.encode(audio.resample(TONE, RATE, rate), rate, fmt)
    assert rate == 24000 and len(body) == 2 * 24000
    assert np.abs(pcm16(body)).max() == pytest.approx(0.4, abs=0.01)


def test_sample_rate_rules() -> None:
    assert audio.output_rate(audio.FORMATS["pcm"], RATE, 16000) == 16000
    assert audio.output_rate(audio.FORMATS["wav"], RATE, 44100) == 44100
    # A rate the codec lacks goes up to the nearest one it has: no bandwidth is lost.
    assert audio.output_rate(audio.FORMATS["mp3"], 25000, None) == 32000
    with pytest.raises(ValueError, match="8000, 12000, 16000, 24000, 48000"):
        audio.output_rate(audio.FORMATS["opus"], RATE, 22050)


def test_clipping_never_wraps_around() -> None:
    loud = np.array([1.5, -1.5, 0.0], dtype=np.float32)
    assert list(np.frombuffer(audio.to_pcm16(loud), "<i2")) == [32767, -32768, 0]


# Sentence-sized pieces of different lengths, as a stream receives them.
PIECES = np.split(np.tile(TONE, 3), [5000, 5001, 30000, 41234])
PIECES_SAMPLES = np.concatenate(PIECES)


def stream(name: str, rate: int) -> tuple[bytes, list[bytes]]:
    encoder = audio.StreamEncoder(audio.FORMATS[name], RATE, rate)
    chunks = [encoder.write(piece) for piece in PIECES]
    chunks.append(encoder.close())
    assert encoder.samples == len(audio.resample(np.concatenate(PIECES), RATE, rate))
    return b"".join(chunks), chunks


def whole(name: str, rate: int) -> bytes:
    return audio.encode(
        audio.resample(np.concatenate(PIECES), RATE, rate), rate, audio.FORMATS[name]
    )


@pytest.mark.parametrize("rate", [RATE, 24000, 8000])
def test_streamed_pcm_is_the_whole_pcm_byte_for_byte(rate: int) -> None:
    body, chunks = stream("pcm", rate)
    assert body == whole("pcm", rate)
    assert len(chunks[0]) > 0  # the first piece is out before the rest exists


@pytest.mark.parametrize("name", ["wav", "opus", "mp3", "aac"])
def test_streamed_files_decode_progressively(name: str) -> None:
    rate = audio.output_rate(audio.FORMATS[name], RATE, None)
    body, chunks = stream(name, rate)
    data, got_rate = decode(body)
    expected, _ = decode(whole(name, rate))
    assert got_rate == rate
    assert sum(map(len, chunks[:-1])) > len(body) / 2  # most bytes leave before close
    if name == "wav":
        assert np.array_equal(data, expected)
    elif name == "opus":
        assert len(data) == len(expected)
    else:  # streamed mp3 and aac have no gapless header: the encoder's delay and padding stay
        assert 0 <= len(data) - len(PIECES_SAMPLES) < 3 * 1152
        assert len(data) == len(expected) or name == "mp3"  # a whole mp3 has that header


def test_flac_is_sent_whole_at_the_end() -> None:
    body, chunks = stream("flac", RATE)
    assert chunks[:-1] == [b""] * len(PIECES)
    assert np.array_equal(decode(body)[0], decode(whole("flac", RATE))[0])


def test_the_api_names_every_format_the_server_writes() -> None:
    from serve_app import protocol
    from serve_app.speech import audio

    assert tuple(audio.FORMATS) == protocol.SUPPORTED
