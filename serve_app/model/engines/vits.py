"""Piper VITS voices as PyTorch modules, with weights and shape read from the voice's ONNX file.

Only `piper.train.vits.models` is imported from piper's training package: the rest pulls in
training-only dependencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from piper.train.vits.models import SynthesizerTrn
from torch.nn import functional as F

from serve_app.model.voices import VoiceLoadError

# Parts of SynthesizerTrn that inference never runs (posterior encoder, SDP training flows).
_TRAINING_ONLY = ("enc_q.", "dp.post_", "dp.flows.1.")


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
    n_speakers: int = 1
    gin_channels: int = 0  # size of a speaker embedding (multi-speaker voices)

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
        elif name in consumer and consumer[name].name == "/dp/flows.0/Exp":
            state["dp.flows.0.logs"] = -array  # the same flow, exported unfolded: -logs
        elif not name.startswith(("/", "onnx::")) and not name.isdigit():
            state[name] = array
    n_speakers, gin_channels = state["emb_g.weight"].shape if "emb_g.weight" in state else (1, 0)
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
        n_speakers=int(n_speakers),
        gin_channels=int(gin_channels),
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
        n_speakers=params.n_speakers,
        gin_channels=params.gin_channels,
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


def frame_to_phoneme(durations: torch.Tensor, width: int) -> torch.Tensor:
    """For each of `width` frames, the index of the phoneme it belongs to (clamped past the
    end; the caller masks those frames)."""
    ends = torch.cumsum(durations, 0)
    frame = torch.arange(width, device=durations.device, dtype=ends.dtype)
    return torch.searchsorted(ends, frame, right=True).clamp_max(durations.numel() - 1)


def expand(priors: list[torch.Tensor], phoneme: torch.Tensor) -> torch.Tensor:
    """Per item (C, L_i) priors gathered at `phoneme` (B, T) -> (B, C, T)."""
    width = max(p.size(1) for p in priors)
    stacked = torch.stack([F.pad(p, (0, width - p.size(1))) for p in priors])
    index = phoneme.unsqueeze(1).expand(-1, stacked.size(1), -1)
    return torch.gather(stacked, 2, index)


def sdp_reverse(
    dp, x: torch.Tensor, x_mask: torch.Tensor, z: torch.Tensor, g: torch.Tensor | None
) -> torch.Tensor:
    """StochasticDurationPredictor in reverse with caller-supplied noise `z` (B, 2, T) and
    speakers `g` (B, gin, 1) or None."""
    x = dp.pre(torch.detach(x))
    if g is not None:
        x = x + dp.cond(g)
    x = dp.convs(x, x_mask)
    x = dp.proj(x) * x_mask
    flows = list(reversed(dp.flows))
    flows = flows[:-2] + [flows[-1]]  # as in SynthesizerTrn: drop the unused flow
    for flow in flows:
        z = flow(z, x_mask, g=x, reverse=True)
    return z[:, :1]


def flow_reverse(
    block, z: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor | None
) -> torch.Tensor:
    """piper's ResidualCouplingBlock in reverse (mean-only coupling layers and flips) with
    fewer passes over memory: no all-zero conditioning added, no `* exp(0)`, and with `mask`
    None (one item, nothing padded) no masking at all. The same values as the block's own
    reverse pass."""
    for flow in reversed(block.flows):
        if not hasattr(flow, "enc"):  # Flip
            z = torch.flip(z, [1])
            continue
        half = flow.half_channels
        x0, x1 = z[:, :half], z[:, half:]
        h = _masked(flow.pre(x0), mask)
        h = _wn(flow.enc, h, mask, g)
        m = _masked(flow.post(h), mask)
        if not flow.mean_only:
            m, logs = torch.split(m, [half, half], 1)
            x1 = (x1 - m) * torch.exp(-logs)
        else:
            x1 = x1 - m
        z = torch.cat([x0, _masked(x1, mask)], 1)
    return z


def _wn(wn, x: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor | None) -> torch.Tensor:
    """piper's WN (gated dilated convolutions) forward, dropout off."""
    n = wn.hidden_channels
    if g is not None:
        g = wn.cond_layer(g)
    output = None
    for i in range(wn.n_layers):
        x_in = wn.in_layers[i](x)
        if g is not None:
            x_in = x_in + g[:, i * 2 * n : (i + 1) * 2 * n]
        acts = torch.tanh(x_in[:, :n]).mul_(torch.sigmoid(x_in[:, n:]))
        res_skip = wn.res_skip_layers[i](acts)
        skip = res_skip[:, n:] if i < wn.n_layers - 1 else res_skip
        output = skip if output is None else output.add_(skip)
        if i < wn.n_layers - 1:
            x = _masked(x + res_skip[:, :n], mask)
    return _masked(output, mask)


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask
