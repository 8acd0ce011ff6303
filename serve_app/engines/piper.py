"""Piper VITS voices run in PyTorch, with weights taken from the voice's ONNX file.

Only `piper.train.vits.models` is imported from piper's training package: the rest pulls in
training-only dependencies.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from piper.train.vits import commons
from piper.train.vits.models import SynthesizerTrn
from torch.nn import functional as F

from ..config import VoiceSource
from ..voices import VoiceInfo, VoiceLoadError
from .base import Engine, SynthesisItem
from .decoder import Decoder2d

logger = logging.getLogger("ray.serve.chorus.engine")

# Parts of SynthesizerTrn that inference never runs (posterior encoder, SDP training flows).
_TRAINING_ONLY = ("enc_q.", "dp.post_", "dp.flows.1.")
# Frames that decoder inputs are padded up to on CPU (see `decode_bucket`).
_WARM_BUCKETS_UP_TO = 1024


def decode_bucket(frames: int) -> int:
    """Padded length for a per-item decode.

    NOTE: oneDNN builds new convolution primitives for every input length it has not seen
    (~70-100 ms here), so real text, where almost every sentence has a new length, ran at
    half speed. A few buckets, warmed at start, keep it on cached primitives; the padding
    costs <= 12% extra work and never changes the audio (the decoder zeroes it per layer).
    """
    for step, limit in ((32, 256), (64, 1024), (256, 4096)):
        if frames <= limit:
            return -(-frames // step) * step
    return -(-frames // 1024) * 1024


@dataclass(frozen=True)
class VitsHyperParams:
    n_vocab: int
    inter_channels: int
    hidden_channels: int
    filter_channels: int
    n_heads: int
    n_layers: int
    kernel_size: int
    resblock: str
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    upsample_rates: tuple[int, ...]
    upsample_initial_channel: int
    upsample_kernel_sizes: tuple[int, ...]
    use_sdp: bool

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)


def read_onnx_voice(model: onnx.ModelProto) -> tuple[VitsHyperParams, dict[str, np.ndarray]]:
    """Hyper-parameters and a SynthesizerTrn state dict recovered from an exported Piper voice."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    consumer: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for name in node.input:
            consumer.setdefault(name, node)

    def attr(node_name: str, key: str) -> tuple[int, ...]:
        node = nodes[node_name]
        return tuple(next(a.ints for a in node.attribute if a.name == key))

    state: dict[str, np.ndarray] = {}
    for name, array in inits.items():
        if name == "sid":  # the phoneme embedding is stored under this name
            state["enc_p.emb.weight"] = array
        elif name.startswith("onnx::Conv_"):
            # Folded weight-norm weights of the flow's WaveNets. NOTE: their numbering follows
            # execution order, so map each by the Conv node that consumes it, never by sorting.
            node = consumer[name].name  # e.g. /flow/flows.6/enc/in_layers.0/Conv
            state[node.strip("/").rsplit("/", 1)[0].replace("/", ".") + ".weight"] = array
        elif name == "/dp/flows.0/Exp_output_0":  # folded exp(-logs) of the SDP's affine flow
            state["dp.flows.0.logs"] = -np.log(array)
        elif not name.startswith(("/", "onnx::")) and not name.isdigit():
            state[name] = array
    if any(k.startswith("emb_g.") for k in state):
        raise VoiceLoadError("multi-speaker voices are not supported yet")

    n_vocab, hidden = state["enc_p.emb.weight"].shape
    ffn = state["enc_p.encoder.ffn_layers.0.conv_1.weight"]
    n_ups = sum(1 for k in state if k.startswith("dec.ups.") and k.endswith(".weight"))
    resblock = "1" if "dec.resblocks.0.convs1.0.weight" in state else "2"
    n_res = len({k.split(".")[2] for k in state if k.startswith("dec.resblocks.")})
    n_kernels = n_res // n_ups
    conv_names = ("convs1",) if resblock == "1" else ("convs",)
    kernel_sizes, dilations = [], []
    for j in range(n_kernels):
        prefix = f"dec.resblocks.{j}.{conv_names[0]}"
        n_convs = sum(1 for k in state if k.startswith(prefix) and k.endswith(".weight"))
        kernel_sizes.append(int(state[f"{prefix}.0.weight"].shape[2]))
        dilations.append(
            tuple(
                attr(f"/dec/resblocks.{j}/{conv_names[0]}.{c}/Conv", "dilations")[0]
                for c in range(n_convs)
            )
        )
    params = VitsHyperParams(
        n_vocab=int(n_vocab),
        inter_channels=int(state["enc_p.proj.weight"].shape[0] // 2),
        hidden_channels=int(hidden),
        filter_channels=int(ffn.shape[0]),
        n_heads=int(hidden // state["enc_p.encoder.attn_layers.0.emb_rel_k"].shape[2]),
        n_layers=sum(1 for k in state if k.endswith(".conv_q.weight")),
        kernel_size=int(ffn.shape[2]),
        resblock=resblock,
        resblock_kernel_sizes=tuple(kernel_sizes),
        resblock_dilation_sizes=tuple(dilations),
        upsample_rates=tuple(
            attr(f"/dec/ups.{i}/ConvTranspose", "strides")[0] for i in range(n_ups)
        ),
        upsample_initial_channel=int(state["dec.conv_pre.weight"].shape[0]),
        upsample_kernel_sizes=tuple(
            int(state[f"dec.ups.{i}.weight"].shape[2]) for i in range(n_ups)
        ),
        use_sdp="dp.flows.0.m" in state,
    )
    return params, state


def build_vits(params: VitsHyperParams, state: dict[str, np.ndarray]) -> SynthesizerTrn:
    """An inference-ready SynthesizerTrn (weight norm removed, training-only parts unloaded)."""
    model = SynthesizerTrn(
        params.n_vocab,
        513,
        32,
        params.inter_channels,
        params.hidden_channels,
        params.filter_channels,
        params.n_heads,
        params.n_layers,
        params.kernel_size,
        0.0,
        params.resblock,
        params.resblock_kernel_sizes,
        params.resblock_dilation_sizes,
        params.upsample_rates,
        params.upsample_initial_channel,
        params.upsample_kernel_sizes,
        n_speakers=1,
        gin_channels=0,
        use_sdp=params.use_sdp,
    )
    # NOTE: the ONNX export folded weight norm into plain weights, so remove it before loading.
    model.dec.remove_weight_norm()
    for flow in model.flow.flows:
        if hasattr(flow, "enc"):
            flow.enc.remove_weight_norm()
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_TRAINING_ONLY)]
    if missing or result.unexpected_keys:
        raise VoiceLoadError(
            f"voice weights do not fit the model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()


class VitsVoice:
    """One loaded voice: front end (text encoder, durations, flow) and a padding-exact decoder."""

    def __init__(self, info: VoiceInfo, device: torch.device) -> None:
        params, state = read_onnx_voice(onnx.load(str(info.model_path)))
        self.info = info
        self.params = params
        self.device = device
        self.model = build_vits(params, state).to(device)
        self.decoder = Decoder2d(self.model.dec, params.upsample_rates).eval().to(device)
        self.decoder.to(memory_format=torch.channels_last)
        del self.model.dec  # replaced by the 2-D decoder above

    @torch.inference_mode()
    def front(self, items: list[SynthesisItem]) -> tuple[torch.Tensor, list[int]]:
        """Latents z (B, C, T) masked beyond each item's length, and the lengths in frames."""
        model, dev = self.model, self.device
        lengths = [len(it.phoneme_ids) for it in items]
        ids = torch.zeros(len(items), max(lengths), dtype=torch.long)
        for i, it in enumerate(items):
            ids[i, : lengths[i]] = torch.tensor(it.phoneme_ids)
        # NOTE: noise comes from each item's own CPU generator, sized by its own length, so an
        # item's audio does not depend on its neighbours (or on the device).
        gens = [torch.Generator().manual_seed(it.seed) for it in items]
        noise_w = _column([it.noise_w for it in items], dev)
        noise_scale = _column([it.noise_scale for it in items], dev)
        length_scale = _column([it.length_scale for it in items], dev)

        x, m_p, logs_p, x_mask = model.enc_p(ids.to(dev), torch.tensor(lengths, device=dev))
        eps_w = _padded_noise(gens, 2, lengths).to(dev)
        if self.params.use_sdp:
            logw = _sdp_reverse(model.dp, x, x_mask, eps_w * noise_w)
        else:
            logw = model.dp(x, x_mask)
        w_ceil = torch.ceil(torch.exp(logw) * x_mask * length_scale)
        y_lengths = torch.clamp_min(torch.sum(w_ceil, [1, 2]), 1).long()
        frames = y_lengths.tolist()
        y_mask = commons.sequence_mask(y_lengths, max(frames)).unsqueeze(1).to(x_mask.dtype)
        attn = commons.generate_path(w_ceil, x_mask.unsqueeze(2) * y_mask.unsqueeze(-1))
        m_p = torch.matmul(attn.squeeze(1), m_p.transpose(1, 2)).transpose(1, 2)
        logs_p = torch.matmul(attn.squeeze(1), logs_p.transpose(1, 2)).transpose(1, 2)
        eps_z = _padded_noise(gens, m_p.size(1), frames).to(dev)
        z_p = m_p + eps_z * torch.exp(logs_p) * noise_scale
        z = model.flow(z_p, y_mask, reverse=True)
        return z * y_mask, frames

    @torch.inference_mode()
    def decode(self, z: torch.Tensor, frames: list[int]) -> list[np.ndarray]:
        """Audio of each item of a padded batch of latents (padding zeroed at every layer)."""
        padded = len(frames) > 1 or frames[0] != z.size(2)
        out = self.decoder(z, frames if padded else None).float().cpu().numpy()
        hop = self.params.hop_length
        return [out[i, : n * hop].copy() for i, n in enumerate(frames)]

    def decode_one(self, z: torch.Tensor, frames: int) -> np.ndarray:
        """One item's audio, its latents padded to the length bucket (see `decode_bucket`)."""
        width = decode_bucket(frames)
        z = z[:, :, :width] if z.size(2) >= width else F.pad(z, (0, width - z.size(2)))
        return self.decode(z, [frames])[0]

    def warm_decoder(self, up_to: int) -> None:
        buckets = sorted({decode_bucket(n) for n in range(1, up_to + 1)})
        z = torch.zeros(1, self.params.inter_channels, up_to, device=self.device)
        for width in buckets:
            self.decode(z[:, :, :width], [width])


class PiperEngine(Engine):
    """All configured Piper voices, one replica's worth.

    Batch policy by device (measured, see README): on CPU each item runs through the model
    alone (padded batches are slower there, and solo runs are bit-exact); on a GPU everything runs
    batched, sorted by length and cut so a decoder batch stays under `max_batch_frames`.
    """

    def __init__(
        self,
        voices: list[VoiceSource],
        max_batch_frames: int = 40_000,
        decode_policy: str = "auto",
        warm_buckets: bool = True,
    ) -> None:
        if decode_policy not in ("auto", "per_item", "batched"):
            raise ValueError(f"unknown decode_policy {decode_policy!r}")
        self._sources = voices
        self._voices: dict[str, VitsVoice] = {}
        self.max_batch_frames = max_batch_frames
        self.decode_policy = decode_policy
        self.warm_buckets = warm_buckets
        self.device = torch.device("cpu")

    @property
    def batched_decode(self) -> bool:
        if self.decode_policy == "auto":
            return self.device.type != "cpu"
        return self.decode_policy == "batched"

    def load(self, device: str) -> None:
        # Room for every bucket's primitives (~40 convolutions each); read when oneDNN starts.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")
        self.device = torch.device(device)
        for source in self._sources:
            info = VoiceInfo.load(source)
            try:
                self._voices[info.id] = VitsVoice(info, self.device)
            except (VoiceLoadError, KeyError, StopIteration, ValueError) as exc:
                raise VoiceLoadError(
                    f"voice {info.id!r}: {info.model_path} is not a usable Piper VITS voice: {exc}"
                ) from exc
        logger.info("Loaded voices %s on %s", list(self._voices), self.device)
        self.synthesize([_warmup_item(v.info) for v in self._voices.values()])
        if self.warm_buckets and not self.batched_decode:
            start = time.perf_counter()
            for voice in self._voices.values():
                voice.warm_decoder(_WARM_BUCKETS_UP_TO)
            logger.info("Decoder buckets warm in %.1f s", time.perf_counter() - start)

    @property
    def voices(self) -> list[str]:
        return list(self._voices)

    def sample_rate(self, voice: str) -> int:
        return self._voices[voice].info.sample_rate

    def synthesize(self, items: list[SynthesisItem]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(items)
        real = computed = 0  # decoder frames
        by_voice: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_voice.setdefault(item.voice, []).append(i)
        for voice_id, idx in by_voice.items():
            voice = self._voices[voice_id]
            for group in self._groups(voice, [items[i] for i in idx], idx):
                group_items = [items[i] for i in group]
                z, frames = voice.front(group_items)
                if self.batched_decode:
                    audio = voice.decode(z, frames)
                    computed += max(frames) * len(frames)
                else:
                    audio = [voice.decode_one(z, frames[0])]
                    computed += decode_bucket(frames[0])
                real += sum(frames)
                for i, a in zip(group, audio, strict=True):
                    out[i] = a
        self.padding_efficiency = real / computed if computed else None
        return out  # type: ignore[return-value]

    def _groups(
        self, voice: VitsVoice, items: list[SynthesisItem], idx: list[int]
    ) -> list[list[int]]:
        """Per item: one group each. Batched: length-sorted groups with a capped padded size.

        NOTE: per item, nothing about an item's computation (shapes included) depends on what
        shares its batch, so its samples are bit-identical to a solo run. A batched front end
        gained nothing measurable on CPU (README), while its batch-dependent shapes let float
        rounding move samples by up to ~1e-4.
        """
        if not self.batched_decode:
            return [[i] for i in idx]
        # ~6 frames per phoneme id is a generous upper estimate for a medium voice at speed 1.
        est = {i: it.size * 6 * it.length_scale for i, it in zip(idx, items, strict=True)}
        groups: list[list[int]] = []
        current: list[int] = []
        for i in sorted(idx, key=est.__getitem__):
            if current and est[i] * (len(current) + 1) > self.max_batch_frames:
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
        return groups

    def close(self) -> None:
        self._voices.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)


def _padded_noise(gens: list[torch.Generator], channels: int, lengths: list[int]) -> torch.Tensor:
    noise = torch.zeros(len(gens), channels, max(lengths))
    for i, (gen, n) in enumerate(zip(gens, lengths, strict=True)):
        noise[i, :, :n] = torch.randn(channels, n, generator=gen)
    return noise


def _sdp_reverse(dp, x: torch.Tensor, x_mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """StochasticDurationPredictor in reverse with caller-supplied noise `z` (B, 2, T)."""
    x = dp.pre(torch.detach(x))
    x = dp.convs(x, x_mask)
    x = dp.proj(x) * x_mask
    flows = list(reversed(dp.flows))
    flows = flows[:-2] + [flows[-1]]  # as in SynthesizerTrn: drop the unused flow
    for flow in flows:
        z = flow(z, x_mask, g=x, reverse=True)
    return z[:, :1]


def _warmup_item(info: VoiceInfo) -> SynthesisItem:
    ids = info.phoneme_id_map
    seq = [ids["^"][0]] + [p for ch in "həlˈoʊ wˈɜːld." for p in (*ids.get(ch, ()), 0)]
    return SynthesisItem(info.id, tuple(seq + [ids["$"][0]]), 1.0, 0.667, 0.8, 0)
