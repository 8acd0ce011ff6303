"""What the engine may change about the arithmetic, and the checks that keep it honest.

- On CUDA, float32 stays float32 (no TF32): durations are decided by a `ceil`, and TF32's
  rounding moved items across it depending on their batch (measured on an H200: 3 of 32).
- The decoder may run in half precision or compiled, only after a check against the float32
  eager decoder on a few sentences; a setting that fails it is refused.
- On a GPU the padded-frame budget of a group follows from the memory one frame needs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from serve_app.model.engines.decoder import frame_mask

if TYPE_CHECKING:
    from serve_app.model.engines.base import SynthesisItem
    from serve_app.model.engines.piper import VitsVoice

logger = logging.getLogger("ray.serve.chorus.engine")

MIN_SNR_DB = 35.0  # half precision: below this the decoder sounds different
MAX_FLOAT32_DIFF = 1e-4  # a compiled float32 decoder must stay this close to eager
CPU_FRAME_BUDGET = 40_000
GPU_MEMORY_SHARE = 0.6  # of the free device memory, for one group's activations
MAX_FRAME_BUDGET = 2_000_000


def exact_float32() -> None:
    """Full float32 in cuDNN convolutions and CUDA matmuls (PyTorch lets cuDNN use TF32)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # PyTorch >= 2.9; mixing with the old flags errs
        matmul.fp32_precision = "ieee"
        cudnn.conv.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False
        cudnn.allow_tf32 = False


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    error = float(np.sum((reference.astype(np.float64) - other) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    return float("inf") if error == 0 else 10 * np.log10(signal / error)


def compare(reference: list[np.ndarray], trial: list[np.ndarray]) -> dict[str, float | bool]:
    """Lengths equal, worst SNR (dB) and worst sample difference of `trial` against float32."""
    same = all(a.shape == b.shape for a, b in zip(reference, trial, strict=True))
    pairs = [(a, b) for a, b in zip(reference, trial, strict=True) if a.shape == b.shape]
    return {
        "same_lengths": same,
        "snr_db": min((snr_db(a, b) for a, b in pairs), default=float("-inf")),
        "max_diff": max((float(np.abs(a - b).max()) for a, b in pairs), default=float("inf")),
    }


def verdict(
    dtype: torch.dtype, result: dict[str, float | bool], min_snr_db: float = MIN_SNR_DB
) -> str | None:
    """Why this decoder may not serve, or None when it may."""
    if not result["same_lengths"]:
        return "it changes audio lengths"
    if dtype == torch.float32 and result["max_diff"] > MAX_FLOAT32_DIFF:
        return f"it moves samples by {result['max_diff']:.2g} (> {MAX_FLOAT32_DIFF:g})"
    if result["snr_db"] < min_snr_db:
        return f"SNR {result['snr_db']:.1f} dB against float32 (< {min_snr_db:g} dB)"
    return None


@torch.inference_mode()
def try_decoder(
    voice: VitsVoice,
    dtype: torch.dtype,
    compile_: bool,
    items: list[SynthesisItem],
    min_snr_db: float = MIN_SNR_DB,
) -> str | None:
    """Switch `voice` to this decoder if it passes the check against the float32 eager one
    on `items`; else fall back (float32, then eager) and return why it was refused."""
    runner = voice.decoder
    latents = [voice.latents([a]) for a in voice.align(items)]
    reference = [runner.reference(z, None).cpu().numpy() for z in latents]
    runner.use(dtype, compile_)
    start = time.perf_counter()
    trial = _warm_and_run(voice, latents)
    result = compare(reference, trial)
    name = str(dtype).removeprefix("torch.") + (" compiled" if runner.compiled else "")
    logger.info(
        "Decoder %s: %.1f dB, max diff %.2g against float32 eager; warm in %.1f s",
        name, result["snr_db"], result["max_diff"], time.perf_counter() - start,
    )  # fmt: skip
    reason = verdict(dtype, result, min_snr_db)
    if reason is None:
        return None
    # NOTE: eager float32 is the reference itself, so this ends there.
    fallback = try_decoder(
        voice, torch.float32, compile_ and dtype != torch.float32, items, min_snr_db
    )
    refused = f"decoder {name} refused: {reason}"
    return refused if fallback is None else f"{refused}; {fallback}"


def _warm_and_run(voice: VitsVoice, latents: list[torch.Tensor]) -> list[np.ndarray]:
    """The check sentences alone, after one padded pair (so a compiled decoder builds its
    graphs now, not on a request); falls back to eager if compiling fails."""
    runner = voice.decoder
    pair = torch.stack([latents[-1][0], latents[-1][0]])
    pair_mask = frame_mask([pair.size(2), pair.size(2) // 2], pair.size(2), pair.device)
    try:
        runner(pair, pair_mask)
        return [runner(z, None).cpu().numpy() for z in latents]
    except Exception:
        if not runner.compiled:
            raise
        logger.exception("Compiling the decoder failed; it runs eager")
        runner.use_eager()
        return [runner(z, None).cpu().numpy() for z in latents]


@torch.inference_mode()
def frame_budget(voice: VitsVoice, items: list[SynthesisItem]) -> int:
    """Padded frames one group may have on this GPU: measured bytes per frame of a probe
    group through the frame stage, against a share of the free memory."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    aligned = voice.align(items)
    frames = [a.frames for a in aligned]
    voice.decode(voice.latents(aligned), frames)
    per_frame = (torch.cuda.max_memory_allocated() - base) / (len(frames) * max(frames))
    free, _ = torch.cuda.mem_get_info()
    budget = int(min(MAX_FRAME_BUDGET, GPU_MEMORY_SHARE * free / per_frame))
    logger.info(
        "Frame budget %d (%.0f KiB per padded frame, %.1f GiB free)",
        budget, per_frame / 1024, free / 2**30,
    )  # fmt: skip
    return budget
