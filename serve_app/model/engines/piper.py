"""Piper VITS voices run in PyTorch: the default engine.

A sentence goes through two stages. The phoneme stage (text encoder, duration predictor)
decides how many frames each phoneme lasts; the frame stage (alignment, flow, decoder) makes
the audio. On a GPU each stage runs on length-sorted groups of the batch, planned again once
the frame counts are known, so padding stays low where most of the work is. On CPU each item
runs alone (padded batches are slower there; see docs/performance.md, Performance).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Executor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch.nn import functional as F

from serve_app.config import SynthesizerUserConfig, VoiceSource
from serve_app.model.cores import one_thread
from serve_app.model.engines import precision
from serve_app.model.engines.base import Engine, SynthesisItem
from serve_app.model.engines.decoder import DTYPES, Decoder2d, DecoderRunner, frame_mask
from serve_app.model.engines.grouping import plan_groups
from serve_app.model.engines.noise import DURATION_NOISE, LATENT_NOISE, gaussian
from serve_app.model.engines.samples import check_items, warmup_item
from serve_app.model.engines.vits import (
    build_vits,
    expand,
    flow_reverse,
    frame_to_phoneme,
    read_onnx_voice,
    sdp_reverse,
)
from serve_app.model.voices import VoiceInfo, VoiceLoadError

logger = logging.getLogger("ray.serve.chorus.engine")

# Frames that decoder inputs are padded up to on CPU (see `decode_bucket`).
_WARM_BUCKETS_UP_TO = 1024
# A generous upper estimate of frames per phoneme id (medium voices, speed 1), used to size
# phoneme-stage groups before the real frame counts are known.
_FRAMES_PER_PHONEME = 6


def decode_bucket(frames: int) -> int:
    """Padded length for a per-item decode on CPU.

    NOTE: oneDNN builds new convolution primitives for every length it has not seen (~20-100
    ms here): real text ran at half speed. Buckets warmed at start keep it on cached ones; the
    padding never changes the audio (the decoder zeroes it per layer) but is work: 4.7% more
    frames for the benchmark's sentences (10.2% with steps of 32 up to 256, then 64)."""
    for step, limit in ((16, 256), (32, 512), (64, 1024), (256, 4096)):
        if frames <= limit:
            return -(-frames // step) * step
    return -(-frames // 1024) * 1024


@dataclass
class Aligned:
    """One item after the phoneme stage: its priors per phoneme and frames per phoneme."""

    item: SynthesisItem
    m_p: torch.Tensor  # (C, L)
    logs_p: torch.Tensor  # (C, L)
    durations: torch.Tensor  # (L,) frames of each phoneme
    frames: int


class VitsVoice:
    """One loaded voice: the two front-end stages and a padding-exact decoder."""

    def __init__(self, info: VoiceInfo, device: torch.device) -> None:
        params, state = read_onnx_voice(onnx.load(str(info.model_path)))
        named = max(info.speakers.values(), default=0) + 1
        if named > params.n_speakers or (params.n_speakers > 1) != bool(info.speakers):
            raise VoiceLoadError(
                f"its config names {max(1, len(info.speakers))} speaker(s), its weights have "
                f"{params.n_speakers}"
            )
        self.info = info
        self.params = params
        self.device = device
        self.model = build_vits(params, state).to(device)
        decoder = Decoder2d(self.model.dec, params.upsample_rates).eval().to(device)
        self.decoder = DecoderRunner(decoder.to(memory_format=torch.channels_last))
        del self.model.dec  # replaced by the 2-D decoder above

    @torch.inference_mode()
    def align(self, items: list[SynthesisItem]) -> list[Aligned]:
        """The phoneme stage on one padded group: each item's priors and durations."""
        model, dev = self.model, self.device
        lengths = [len(it.phoneme_ids) for it in items]
        ids = torch.zeros(len(items), max(lengths), dtype=torch.long)
        for i, it in enumerate(items):
            ids[i, : lengths[i]] = torch.tensor(it.phoneme_ids)
        x, m_p, logs_p, x_mask = model.enc_p(ids.to(dev), torch.tensor(lengths, device=dev))
        seeds, g = [it.seed for it in items], self.speakers(items)
        if self.params.use_sdp:
            eps_w = gaussian(seeds, DURATION_NOISE, 2, lengths, dev)
            logw = sdp_reverse(model.dp, x, x_mask, eps_w * _column(items, "noise_w", dev), g)
        else:
            logw = model.dp(x, x_mask, g=g)
        w_ceil = torch.ceil(torch.exp(logw) * x_mask * _column(items, "length_scale", dev))
        frames = torch.clamp_min(torch.sum(w_ceil, [1, 2]), 1).long().tolist()
        return [
            Aligned(it, m_p[i, :, :n], logs_p[i, :, :n], w_ceil[i, 0, :n], frames[i])
            for i, (it, n) in enumerate(zip(items, lengths, strict=True))
        ]

    @torch.inference_mode()
    def latents(self, group: list[Aligned]) -> torch.Tensor:
        """The flow's input and output for one padded group: z (B, C, T), zero past each end."""
        dev, frames = self.device, [a.frames for a in group]
        width = max(frames)
        # NOTE: each frame takes its phoneme's prior by index (piper multiplies by a 0/1 path
        # matrix: the same values, but a matmul that TF32 would round).
        phoneme = torch.stack([frame_to_phoneme(a.durations, width) for a in group])  # (B, T)
        y_mask = frame_mask(frames, width, dev).unsqueeze(1)  # (B, 1, T)
        m_p = expand([a.m_p for a in group], phoneme) * y_mask
        logs_p = expand([a.logs_p for a in group], phoneme) * y_mask
        seeds = [a.item.seed for a in group]
        eps_z = gaussian(seeds, LATENT_NOISE, m_p.size(1), frames, dev)
        noise_scale = _column([a.item for a in group], "noise_scale", dev)
        z_p = m_p + eps_z * torch.exp(logs_p) * noise_scale
        g = self.speakers([a.item for a in group])
        if len(group) == 1:  # nothing padded: the flow need not mask (7% faster on CPU)
            return flow_reverse(self.model.flow, z_p, None, g)
        return flow_reverse(self.model.flow, z_p, y_mask, g) * y_mask

    @torch.inference_mode()
    def speakers(self, items: list[SynthesisItem]) -> torch.Tensor | None:
        """Each item's speaker embedding (B, gin, 1); None for a one-speaker voice."""
        if self.params.n_speakers <= 1:
            return None
        ids = torch.tensor([it.speaker for it in items], device=self.device)
        return self.model.emb_g(ids).unsqueeze(-1)

    def decode(
        self,
        z: torch.Tensor,
        frames: list[int],
        g: torch.Tensor | None = None,
        helper: Executor | None = None,
    ) -> list[np.ndarray]:
        """Audio of each item of a padded group of latents (padding zeroed at every layer);
        `g`: their speakers (see `speakers`)."""
        mask: torch.Tensor | int | None = None
        if len(frames) > 1:
            mask = frame_mask(frames, z.size(2), z.device)
        elif frames[0] != z.size(2):
            mask = frames[0]
        out = self.decoder(z, mask, g, helper).cpu().numpy()
        hop = self.params.hop_length
        return [out[i, : n * hop].copy() for i, n in enumerate(frames)]

    def decode_one(
        self, z: torch.Tensor, item: Aligned, helper: Executor | None = None
    ) -> np.ndarray:
        """One item's audio, its latents padded to the length bucket (see `decode_bucket`);
        `helper`: a thread that may take part of the decode (the same samples)."""
        width = decode_bucket(item.frames)
        z = z[:, :, :width] if z.size(2) >= width else F.pad(z, (0, width - z.size(2)))
        return self.decode(z, [item.frames], self.speakers([item.item]), helper)[0]

    def warm_decoder(self, up_to: int) -> float:
        """Run every CPU length bucket once; seconds taken."""
        start = time.perf_counter()
        buckets = sorted({decode_bucket(n) for n in range(1, up_to + 1)})
        z = torch.zeros(1, self.params.inter_channels, up_to, device=self.device)
        for width in buckets:
            self.decode(z[:, :, :width], [width])
        return time.perf_counter() - start


class PiperEngine(Engine):
    """All configured Piper voices, one replica's worth.

    Batch policy by device (measured, docs/performance.md): on CPU each item runs through the model
    alone (padded batches are slower there, and solo runs are bit-exact); on a GPU both stages
    run on length-sorted groups (`plan_groups`), each within a frame budget.
    """

    concurrent_calls = True  # modules are only read; what a call keeps is per thread

    def __init__(
        self,
        voices: list[VoiceSource],
        decode_policy: str = "auto",
        warm_buckets: bool = True,
        group_overhead_frames: int = 1000,
        min_decoder_snr_db: float = precision.MIN_SNR_DB,
    ) -> None:
        if decode_policy not in ("auto", "per_item", "batched"):
            raise ValueError(f"unknown decode_policy {decode_policy!r}")
        self._sources = voices
        self._voices: dict[str, VitsVoice] = {}
        self.decode_policy = decode_policy
        self.warm_buckets = warm_buckets
        # NOTE: what one more group costs (launches, host round trips), in frames of work; a
        # cut that saves fewer padded frames than this is not worth a group.
        self.group_overhead_frames = group_overhead_frames
        self.min_decoder_snr_db = min_decoder_snr_db
        self.max_batch_frames = precision.CPU_FRAME_BUDGET  # until reconfigure() measures it
        self._decoder = ("float32", False)  # asked for: dtype, compiled (as loaded: eager)
        self.decoder_refused: str | None = None  # why the decoder asked for was refused
        self.device = torch.device("cpu")
        self._calls = threading.local()  # what the last call on each thread measured

    @property
    def padding_efficiency(self) -> float | None:
        return getattr(self._calls, "padding_efficiency", None)

    @padding_efficiency.setter
    def padding_efficiency(self, value: float | None) -> None:
        self._calls.padding_efficiency = value

    @property
    def batched_decode(self) -> bool:
        if self.decode_policy == "auto":
            return self.device.type != "cpu"
        return self.decode_policy == "batched"

    def load(self, device: str) -> None:
        # Room for every bucket's primitives (~40 convolutions each); read when oneDNN starts.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")
        self.device = torch.device(device)
        if self.device.type == "cuda":
            precision.exact_float32()
        for source in self._sources:
            info = VoiceInfo.load(source)
            try:
                self._voices[info.id] = VitsVoice(info, self.device)
            except (VoiceLoadError, KeyError, StopIteration, ValueError) as exc:
                raise VoiceLoadError(
                    f"voice {info.id!r}: {info.model_path} is not a usable Piper VITS voice: {exc}"
                ) from exc
        logger.info("Loaded voices %s on %s", list(self._voices), self.device)
        self.synthesize([warmup_item(v.info) for v in self._voices.values()])
        self._warm()

    def reconfigure(self, settings: SynthesizerUserConfig) -> None:
        """Decoder precision and compilation (checked before use), and the frame budget."""
        decoder = (settings.decoder_dtype, settings.compiles_decoder(self.device.type))
        if decoder != self._decoder:
            self._tune_decoders(*decoder)
        self.max_batch_frames = settings.max_batch_frames or self._frame_budget()

    def _tune_decoders(self, dtype_name: str, compile_: bool) -> None:
        self._decoder = (dtype_name, compile_)
        dtype = DTYPES[dtype_name]
        self.decoder_refused = None
        for voice in self._voices.values():
            reason = precision.try_decoder(
                voice, dtype, compile_, check_items(voice.info), self.min_decoder_snr_db
            )
            if reason is not None:
                self.decoder_refused = reason
                logger.error("Voice %s keeps a float32 decoder: %s", voice.info.id, reason)
        self._warm()

    def _warm(self) -> None:
        if not self.warm_buckets or self.batched_decode:
            return
        # NOTE: oneDNN's cached primitives hold a thread count: warm at the one items use.
        before = torch.get_num_threads()
        threads = 1 if self.cores else before
        torch.set_num_threads(threads)
        for voice in self._voices.values():
            seconds = voice.warm_decoder(_WARM_BUCKETS_UP_TO)
            logger.info(
                "Decoder buckets of %s warm in %.1f s at %d thread(s)",
                voice.info.id, seconds, threads,
            )  # fmt: skip
        torch.set_num_threads(before)

    def _frame_budget(self) -> int:
        if self.device.type != "cuda" or not self._voices:
            return precision.CPU_FRAME_BUDGET
        voice = next(iter(self._voices.values()))
        return precision.frame_budget(voice, check_items(voice.info)[-1:] * 16)

    @property
    def voices(self) -> list[str]:
        return list(self._voices)

    def sample_rate(self, voice: str) -> int:
        return self._voices[voice].info.sample_rate

    def voice(self, voice_id: str) -> VitsVoice:
        """One loaded voice: its two stages, its decoder and its metadata."""
        return self._voices[voice_id]

    def synthesize(self, items: list[SynthesisItem]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(items)
        real = padded = 0  # decoder frames
        by_voice: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_voice.setdefault(item.voice, []).append(i)
        for voice_id, idx in by_voice.items():
            voice = self._voices[voice_id]
            run = self._run_groups if self.batched_decode else self._run_alone
            audio, computed = run(voice, [items[i] for i in idx])
            for i, a in zip(idx, audio, strict=True):
                out[i] = a
                real += a.size // voice.params.hop_length
            padded += computed
        self.padding_efficiency = real / padded if padded else None
        return out  # type: ignore[return-value]

    def _run_alone(
        self, voice: VitsVoice, items: list[SynthesisItem]
    ) -> tuple[list[np.ndarray], int]:
        """Each item through both stages alone: nothing about it depends on its batch. Items
        running side by side on other threads share the cores (`model.cores`): each stage at
        one torch thread, a lone item's decoder with a helper; the same samples either way."""
        audio, computed = [], 0
        for item in items:
            with self.cores.item() if self.cores else nullcontext():
                if self.cores:
                    one_thread()
                (aligned,) = voice.align([item])
                helper = self.cores.helpers() if self.cores else None
                audio.append(voice.decode_one(voice.latents([aligned]), aligned, helper))
            computed += decode_bucket(aligned.frames)
        return audio, computed

    def _run_groups(
        self, voice: VitsVoice, items: list[SynthesisItem]
    ) -> tuple[list[np.ndarray], int]:
        """Phoneme stage on groups planned by phoneme count, frame stage on groups planned
        again by the real frame counts; (audio in order, padded decoder frames)."""
        per = _FRAMES_PER_PHONEME
        overhead, budget = self.group_overhead_frames, self.max_batch_frames
        aligned: dict[int, Aligned] = {}
        for group in plan_groups([it.size for it in items], budget // per, overhead / per).groups:
            aligned.update(zip(group, voice.align([items[i] for i in group]), strict=True))
        plan = plan_groups([aligned[i].frames for i in range(len(items))], budget, overhead)
        audio: dict[int, np.ndarray] = {}
        for group in plan.groups:
            parts = [aligned[i] for i in group]
            g = voice.speakers([a.item for a in parts])
            decoded = voice.decode(voice.latents(parts), [a.frames for a in parts], g)
            audio.update(zip(group, decoded, strict=True))
        return [audio[i] for i in range(len(items))], plan.padded

    def status(self) -> dict[str, Any]:
        decoders = {v.decoder for v in self._voices.values()}
        return {
            "batch_policy": "length_groups" if self.batched_decode else "per_item",
            "max_batch_frames": self.max_batch_frames,
            "decoder_dtype": sorted(str(d.dtype).removeprefix("torch.") for d in decoders),
            "decoder_compiled": any(d.compiled for d in decoders),
            "decoder_refused": self.decoder_refused,
        }

    def close(self) -> None:
        self._voices.clear()
        if self.cores:
            self.cores.close()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _column(items: list[SynthesisItem], field: str, device: torch.device) -> torch.Tensor:
    values = [getattr(it, field) for it in items]
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)
