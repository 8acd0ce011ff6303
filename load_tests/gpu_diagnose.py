"""The phoneme stage in padded groups on a GPU, under each of cuDNN's ways to choose kernels.

    python -m load_tests.gpu_diagnose [--sizes 16,32,64,96,128] [--rounds 2] [--device cuda]

Why: on the H200 (GPU run 1, results/gpu_nvidia_h200.json), one padded group of 64 sentences
spent ~95% of its time in the phoneme stage (text encoder, duration predictor) with ~75-79 GB
of peak memory, and some groups gave items other lengths than alone, while groups of 16 and
128 were fast and right. cuDNN picking, per shape, an algorithm with a huge workspace is the
first suspect (PyTorch takes the first algorithm whose workspace it can allocate, and an
H200 can allocate 75 GB). This runs the phoneme stage alone (`VitsVoice.align`) on groups of
the standard mix in arrival order (as bench_gpu's rows), per group size, under:

- default:        PyTorch's settings (cuDNN's heuristic choice);
- deterministic:  cuDNN limited to deterministic algorithms (implicit GEMM, small workspace);
- benchmark:      cuDNN times the candidates for each new shape and keeps the fastest;
- no-cudnn:       PyTorch's own convolution kernels.

Per size and setting: ms per group, peak memory, and items whose frame count (phoneme stage)
or audio length (the whole engine, the group as one padded group) is not the one they get
alone. Then the ten CUDA kernels that took longest in one group of the worst size
under the default (torch.profiler). Results: results/gpu_diagnose_<device>.json.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch

from load_tests import phonemes
from load_tests.bench_gpu import ONE_GROUP
from load_tests.common import machine, median, save
from serve_app.model.engines.piper import PiperEngine

SETTINGS = {
    "default": {},
    "deterministic": {"deterministic": True},
    "benchmark": {"benchmark": True},
    "no-cudnn": {"enabled": False},
}


@contextmanager
def cudnn(**flags):
    """cuDNN's `enabled`, `benchmark` and `deterministic` flags set for a block (TF32 stays
    as the engine set it)."""
    backend = torch.backends.cudnn
    saved = {name: getattr(backend, name) for name in flags}
    for name, value in flags.items():
        setattr(backend, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(backend, name, value)


def measure(engine, groups, alone: list[list[int]], rounds: int, sync, cuda: bool) -> dict:
    """The phoneme stage of each group, timed; and once, the whole engine on the group as one
    padded group: items whose frame count, or audio length, is not the one they get alone."""
    voice = engine.voice(phonemes.VOICE.id)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, frames_off, audio_off = [], 0, 0
    for r in range(rounds + 1):  # round 0: first use of each shape, and the checks
        for group, frames in zip(groups, alone, strict=True):
            sync()
            start = time.perf_counter()
            aligned = voice.align(group)
            sync()
            if r:
                times.append(time.perf_counter() - start)
                continue
            frames_off += sum(a.frames != f for a, f in zip(aligned, frames, strict=True))
            hop = voice.params.hop_length
            audio = engine.synthesize(group)  # one padded group: see main()
            audio_off += sum(a.size != f * hop for a, f in zip(audio, frames, strict=True))
    return {
        "ms_per_group": round(median(times) * 1e3, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "frame_mismatches": frames_off,
        "audio_length_mismatches": audio_off,
    }


def top_kernels(voice, group, sync) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    voice.align(group)
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        voice.align(group)
        sync()
    events = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:10]
    return [
        {"name": e.key[:120], "calls": e.count, "device_ms": round(e.device_time_total / 1e3, 2)}
        for e in events
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="16,32,64,96,128")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pool", type=int, default=256)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine (or --device cpu)")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    engine = PiperEngine([phonemes.VOICE], decode_policy="batched", warm_buckets=False)
    engine.load(args.device)
    engine.group_overhead_frames = ONE_GROUP  # each group runs as one padded group
    voice = engine.voice(phonemes.VOICE.id)
    items = phonemes.mix_items(args.pool)
    alone = [voice.align([it])[0].frames for it in items]
    report = {"machine": machine(), "args": vars(args), "rows": []}
    report["gpu"] = torch.cuda.get_device_name() if cuda else None
    if cuda:
        report["cudnn"] = torch.backends.cudnn.version()
    worst = (0.0, 0)
    for size in map(int, args.sizes.split(",")):
        starts = range(0, len(items) - size + 1, size)
        groups = [items[k : k + size] for k in starts]
        frames = [alone[k : k + size] for k in starts]
        for name, flags in SETTINGS.items():
            with cudnn(**flags):
                row = {"size": size, "setting": name}
                row |= measure(engine, groups, frames, args.rounds, sync, cuda)
            report["rows"].append(row)
            print(row, flush=True)
            if name == "default" and row["ms_per_group"] / size > worst[0]:
                worst = (row["ms_per_group"] / size, size)
    if cuda:
        size = worst[1]
        report["top_kernels"] = {"size": size, "kernels": top_kernels(voice, items[:size], sync)}
        for kernel in report["top_kernels"]["kernels"]:
            print(kernel, flush=True)
    device = (report["gpu"] or args.device).replace(" ", "_").lower()
    print(f"wrote {save(f'gpu_diagnose_{device}', report)}")


if __name__ == "__main__":
    main()
