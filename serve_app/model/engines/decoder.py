"""HiFi-GAN decoder rebuilt from piper's Generator with 2-D convolutions on (N, C, 1, T).

On CPU, oneDNN runs channels-last 2-D convolutions much faster than the 1-D ones it replaces
(see docs/performance.md). With a `mask`, padding never leaks into an item: every layer's input
is zero past the item's end, exactly as for the item decoded alone. A lone item's mask can be
its length in frames instead (its tail zeroed in place: the same values, fewer passes over
memory).

The forward pass takes tensors only (no Python-side padding object), so `torch.compile`
traces it whole; `DecoderRunner` picks eager or compiled, and the precision.
"""

from __future__ import annotations

import copy
from concurrent.futures import Executor

import torch
from torch import nn
from torch.nn import functional as F

_LRELU_SLOPE = 0.1
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _to_2d(conv: nn.Conv1d | nn.ConvTranspose1d) -> nn.Conv2d | nn.ConvTranspose2d:
    """The same (transposed) convolution over (N, C, 1, T): kernel (1, k), same weights."""
    cls = nn.ConvTranspose2d if isinstance(conv, nn.ConvTranspose1d) else nn.Conv2d
    out = cls(
        conv.in_channels, conv.out_channels, (1, conv.kernel_size[0]),
        stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
        dilation=(1, conv.dilation[0]), bias=conv.bias is not None,
    )  # fmt: skip
    out.weight.data.copy_(conv.weight.data.unsqueeze(2))
    if conv.bias is not None:
        out.bias.data.copy_(conv.bias.data)
    return out


def frame_mask(frames: list[int], width: int, device: torch.device) -> torch.Tensor:
    """(N, width): 1 inside each item's `frames`, 0 in its padding."""
    lengths = torch.tensor(frames, device=device)
    return (torch.arange(width, device=device) < lengths[:, None]).float()


class _ResBlock(nn.Module):
    """ResBlock1 (two convs per step) or ResBlock2 (one), on 2-D tensors."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if hasattr(block, "convs1"):
            self.first = nn.ModuleList(_to_2d(c) for c in block.convs1)
            self.second = nn.ModuleList(_to_2d(c) for c in block.convs2)
        else:
            self.first = nn.ModuleList(_to_2d(c) for c in block.convs)
            self.second = None

    def forward(self, x: torch.Tensor, mask: Mask) -> torch.Tensor:
        for i, conv in enumerate(self.first):
            xt = _masked(F.leaky_relu(x, _LRELU_SLOPE), mask)
            xt = conv(xt)
            if self.second is not None:
                xt = self.second[i](_masked(F.leaky_relu_(xt, _LRELU_SLOPE), mask))
            x = xt.add_(x)  # NOTE: in place: xt is this step's own output
        return _masked(x, mask)


# Padding to zero at every layer: none, (N, 1, 1, T) 0/1 per item, or one item's length.
Mask = torch.Tensor | int | None


def _masked(x: torch.Tensor, mask: Mask) -> torch.Tensor:
    # NOTE: in place: every tensor masked here is a fresh intermediate. Zeroing one item's
    # tail touches only the padding (multiplying by a mask reads and writes all of x: one
    # decode on CPU ran 6-18% faster this way, with the same output).
    if mask is None:
        return x
    if isinstance(mask, int):
        if mask < x.size(3):
            x[:, :, :, mask:].zero_()
        return x
    return x.mul_(mask)


class Decoder2d(nn.Module):
    def __init__(self, generator: nn.Module, upsample_rates: tuple[int, ...]) -> None:
        super().__init__()
        self.rates = upsample_rates
        self.num_kernels = generator.num_kernels
        self.conv_pre = _to_2d(generator.conv_pre)
        self.ups = nn.ModuleList(_to_2d(up) for up in generator.ups)
        self.resblocks = nn.ModuleList(_ResBlock(b) for b in generator.resblocks)
        self.conv_post = _to_2d(generator.conv_post)
        # Multi-speaker voices: the speaker embedding, added after conv_pre.
        cond = getattr(generator, "cond", None)
        self.cond = None if cond is None else _to_2d(cond)

    def forward(
        self,
        z: torch.Tensor,
        mask: Mask = None,
        g: torch.Tensor | None = None,
        helper: Executor | None = None,
    ) -> torch.Tensor:
        """z (N, C, T) -> audio (N, T * hop); `mask` (N, T), or one item's frames, zeroes
        padding at every layer; `g` (N, gin, 1): each item's speaker embedding (multi-speaker
        voices)."""
        x = z.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        if isinstance(mask, torch.Tensor):
            mask = mask.to(x.dtype).view(mask.size(0), 1, 1, mask.size(1))
        x = self.conv_pre(x)
        if g is not None and self.cond is not None:
            x = x + self.cond(g.unsqueeze(2))
        x = _masked(x, mask)
        for i, (up, rate) in enumerate(zip(self.ups, self.rates, strict=True)):
            x = up(F.leaky_relu_(x, _LRELU_SLOPE))
            if isinstance(mask, int):
                mask *= rate
            elif mask is not None:
                mask = mask.repeat_interleave(rate, dim=3)
            x = _masked(x, mask)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            # NOTE: with a `helper` thread the last (widest) block runs there meanwhile: the
            # same operations at the same thread count, summed in the same order, so the
            # same samples as without (measured on 2 cores: ~1.7x for a lone item's decode).
            # A stage of one block has nothing to run beside it.
            far = None
            if helper is not None and len(blocks) > 1:
                far = helper.submit(_inference, blocks[-1], x, mask)
            acc = blocks[0](x, mask)
            for block in blocks[1:-1] if far else blocks[1:]:
                acc = acc.add_(block(x, mask))
            if far is not None:
                acc = acc.add_(far.result())
            x = acc.div_(self.num_kernels)
        x = torch.tanh(self.conv_post(F.leaky_relu_(x)))
        return x.reshape(x.size(0), -1)


def _inference(block: nn.Module, x: torch.Tensor, mask: Mask) -> torch.Tensor:
    with torch.inference_mode():  # NOTE: per thread; the caller's does not reach here
        return block(x, mask)


class DecoderRunner:
    """The decoder as served: its precision, eager or compiled, with an eager fallback.

    The float32 decoder is always kept: it is the reference of the precision self-check and
    what a refused or failed setting falls back to.
    """

    def __init__(self, decoder: Decoder2d) -> None:
        self.reference = decoder
        self.dtype = torch.float32
        self.compiled = False
        self._module: nn.Module = decoder
        self._call = decoder

    @torch.inference_mode()
    def __call__(
        self,
        z: torch.Tensor,
        mask: Mask,
        g: torch.Tensor | None = None,
        helper: Executor | None = None,
    ) -> torch.Tensor:
        """Audio of `z`; `helper`: a thread that may take part of an eager decode."""
        g = None if g is None else g.to(self.dtype)
        if self.compiled:  # one graph: masks as tensors only, no helper
            if isinstance(mask, int):
                mask = frame_mask([mask], z.size(2), z.device)
            return self._call(z.to(self.dtype), mask, g).float()
        return self._call(z.to(self.dtype), mask, g, helper).float()

    def use(self, dtype: torch.dtype, compile_: bool) -> None:
        """Run in `dtype`, compiled or not (the caller warms and checks it)."""
        module = self.reference
        if dtype != torch.float32:
            module = copy.deepcopy(self.reference).to(dtype)
        self.dtype, self._module, self.compiled = dtype, module, compile_
        # NOTE: dynamic shapes: batch size and length vary per call, and one graph serves them
        # all (measured on CPU: 24 s to compile, then 0.3 s for a new shape); a static graph
        # compiles again for every new shape (20 s for one on the H200).
        self._call = torch.compile(module, dynamic=True) if compile_ else module

    def use_eager(self) -> None:
        self._call, self.compiled = self._module, False
