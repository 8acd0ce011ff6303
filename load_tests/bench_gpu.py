"""The engine on a GPU: exactness, padding, throughput and where the time goes, per setting.

    python -m load_tests.bench_gpu [--settings exact,compiled,fp16-compiled] [--batches 1,16,64]
                                   [--rounds 3] [--pool 256] [--device cuda]

Runs in-process with no Ray and no espeak (ids from load_tests/phoneme_ids.json), so it also
runs on a bare GPU host. Items are the standard request mix (load_tests.texts) in arrival
order, with fresh seeds each round. For each setting of the decoder (precision, compiled):

- warm-up: seconds to apply the setting (compile and the precision check included);
- exactness: 64 items batched against each alone (frame-count mismatches, worst sample
  difference) and, noise off, the worst difference from onnxruntime on 16 items; and in
  every row, the items whose audio is not as long as alone;
- per batch size, items in arrival order as one padded batch against length groups
  (`plan_groups`): audio-seconds per second (median of rounds), padding efficiency (real /
  padded decoder frames), the split of time between the phoneme stage, the flow, the
  decoder and the rest (a round of its own, device synced around each stage), and peak GPU memory.

Results go to `results/gpu_<device name>.json`; `--device cpu` checks the script itself.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from load_tests import onnx_reference, phonemes
from load_tests.common import machine, median, save
from serve_app.config import SynthesizerUserConfig
from serve_app.model.engines.piper import PiperEngine

SETTINGS = {
    "exact": SynthesizerUserConfig(decoder_compile="off"),
    "compiled": SynthesizerUserConfig(decoder_compile="on"),
    "fp16": SynthesizerUserConfig(decoder_compile="off", decoder_dtype="float16"),
    "fp16-compiled": SynthesizerUserConfig(decoder_compile="on", decoder_dtype="float16"),
    "bf16-compiled": SynthesizerUserConfig(decoder_compile="on", decoder_dtype="bfloat16"),
}
ONE_GROUP = 10**12  # group overhead that makes any batch one padded group: arrival order


class Timed:
    """Wraps one stage of a voice (a method or its decoder runner) to add up the time spent
    in it, the device synced before and after."""

    def __init__(self, stage, sync) -> None:
        self.stage, self.sync, self.seconds = stage, sync, 0.0

    def __call__(self, *args):
        self.sync()
        start = time.perf_counter()
        out = self.stage(*args)
        self.sync()
        self.seconds += time.perf_counter() - start
        return out


# Where a batch's time goes: the phoneme stage (text encoder, durations), the frame stage
# before the decoder (alignment, noise, flow), the decoder; the rest is planning and copies.
STAGES = {"phoneme_stage": "align", "flow": "latents", "decoder": "decoder"}


def exactness(engine: PiperEngine, items, session) -> dict:
    together = engine.synthesize(items)
    alone = [engine.synthesize([it])[0] for it in items]
    same = [a.shape == b.shape for a, b in zip(alone, together, strict=True)]
    pairs = [(a, b) for a, b in zip(alone, together, strict=True) if a.shape == b.shape]
    diffs = [np.abs(a - b).max() for a, b in pairs]
    out = {"items": len(items), "frame_mismatches": same.count(False)}
    out["max_diff_batch_vs_alone"] = float(max(diffs))
    if session is not None:
        quiet = [replace(it, noise_scale=0.0, noise_w=0.0) for it in items[:16]]
        worst = 0.0
        for it, ours in zip(quiet, engine.synthesize(quiet), strict=True):
            reference = onnx_reference.synthesize(session, it.phoneme_ids)
            same = ours.shape == reference.shape
            worst = max(worst, float(np.abs(ours - reference).max()) if same else np.inf)
        out["max_diff_onnxruntime"] = worst
    return out


def fresh_seeds(items, r: int):
    """Round `r`'s items: the same sentences, new seeds (lengths unseen, as in real traffic)."""
    return [replace(it, seed=it.seed + 7919 * (r + 1)) for it in items]


def run_batches(
    engine: PiperEngine, items, batch: int, rounds: int, sync, alone_sizes: list[int]
) -> dict:
    """`alone_sizes`: each item's audio length alone with round 1's seeds."""
    voice = engine.voice(items[0].voice)
    rate, hop = voice.info.sample_rate, voice.params.hop_length
    speeds, efficiencies, split, sizes = [], [], {}, []
    for r in range(rounds + 2):  # round 0 warms this batch size, round 1 measures the split
        fresh = fresh_seeds(items, r)
        timed = {k: Timed(getattr(voice, a), sync) for k, a in STAGES.items()} if r == 1 else {}
        for key, stage in timed.items():
            setattr(voice, STAGES[key], stage)
        sync()
        start, samples = time.perf_counter(), 0
        for k in range(0, len(fresh), batch):
            audio = engine.synthesize(fresh[k : k + batch])
            samples += sum(a.size for a in audio)
            efficiencies.append(engine.padding_efficiency)
            if r == 1:
                sizes += [a.size for a in audio]
        sync()
        seconds = time.perf_counter() - start
        if timed:
            voice.decoder = timed["decoder"].stage
            del voice.align, voice.latents  # the methods again
            split = {key: round(t.seconds / seconds, 3) for key, t in timed.items()}
            split["other"] = round(1 - sum(split.values()), 3)
        elif r > 1:
            speeds.append(samples / rate / seconds)
    return {
        "audio_s_per_s": round(median(speeds), 1),
        # NOTE: items whose audio is not as long as alone: nonzero means wrong audio, and the
        # speed of this row means nothing (seen on the H200 in padded groups of 64).
        "length_mismatches": sum(a != b for a, b in zip(sizes, alone_sizes, strict=True)),
        "padding_efficiency": round(float(np.mean(efficiencies)), 3),
        "time_split": split,
        "frames_per_item": round(samples / hop / len(items), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--settings", default="exact,compiled,fp16,fp16-compiled")
    parser.add_argument("--batches", default="1,16,64,128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=256, help="sentence items per round")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine (or --device cpu)")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    items = phonemes.mix_items(args.pool)
    start = time.perf_counter()
    engine = PiperEngine([phonemes.VOICE], decode_policy="batched", warm_buckets=False)
    engine.load(args.device)
    report = {"machine": machine(), "args": vars(args), "load_s": time.perf_counter() - start}
    if cuda:
        report["gpu"] = torch.cuda.get_device_name()
    session = onnx_reference.session(engine.voice(phonemes.VOICE.id).info.model_path)
    overhead = engine.group_overhead_frames
    alone_sizes = [engine.synthesize([it])[0].size for it in fresh_seeds(items, 1)]
    report["settings"] = {}
    for name in args.settings.split(","):
        start = time.perf_counter()
        engine.reconfigure(SETTINGS[name])
        entry = {"warm_s": round(time.perf_counter() - start, 1), **engine.status()}
        entry["exactness"] = exactness(engine, items[:64], session)
        print(f"{name}: warm {entry['warm_s']} s, {entry['exactness']}", flush=True)
        entry["rows"] = []
        for batch in map(int, args.batches.split(",")):
            for order, group_overhead in (("arrival", ONE_GROUP), ("grouped", overhead)):
                engine.group_overhead_frames = group_overhead
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                row = {"batch": batch, "order": order}
                row |= run_batches(engine, items, batch, args.rounds, sync, alone_sizes)
                if cuda:
                    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                entry["rows"].append(row)
                print(f"  {row}", flush=True)
        engine.group_overhead_frames = overhead
        report["settings"][name] = entry
    device = report.get("gpu", args.device).replace(" ", "_").lower()
    print(f"wrote {save(f'gpu_{device}', report)}")


if __name__ == "__main__":
    main()
