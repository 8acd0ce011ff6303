"""HiFi-GAN decoder rebuilt from piper's Generator with 2-D convolutions on (N, C, 1, T).

On CPU, oneDNN runs channels-last 2-D convolutions much faster than the 1-D ones it replaces
(see README, Performance). With `lengths`, padding never leaks into an item: every layer's
input is zero past the item's end, exactly as for the item decoded alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

_LRELU_SLOPE = 0.1


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


@dataclass(frozen=True)
class _Padding:
    """Zeroes everything past each item's end. One item: fill its tail in place (cheap);
    several: multiply by a mask (one kernel however many items)."""

    lengths: list[int]
    mask: torch.Tensor | None

    @classmethod
    def of(cls, lengths: list[int], width: int, device: torch.device) -> _Padding:
        if len(lengths) == 1:
            return cls(lengths, None)
        mask = torch.arange(width, device=device) < torch.tensor(lengths, device=device)[:, None]
        return cls(lengths, mask.view(len(lengths), 1, 1, width).float())

    def upsample(self, rate: int) -> _Padding:
        mask = None if self.mask is None else self.mask.repeat_interleave(rate, dim=3)
        return _Padding([n * rate for n in self.lengths], mask)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            return x * self.mask.to(x.dtype)
        (n,) = self.lengths
        if n < x.size(3):
            x[..., n:] = 0
        return x


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

    def forward(self, x: torch.Tensor, pad: _Padding | None) -> torch.Tensor:
        for i, conv in enumerate(self.first):
            xt = F.leaky_relu(x, _LRELU_SLOPE)
            if pad is not None:
                xt = pad(xt)
            xt = conv(xt)
            if self.second is not None:
                xt = F.leaky_relu_(xt, _LRELU_SLOPE)
                if pad is not None:
                    xt = pad(xt)
                xt = self.second[i](xt)
            x = xt + x
        return x if pad is None else pad(x)


class Decoder2d(nn.Module):
    def __init__(self, generator: nn.Module, upsample_rates: tuple[int, ...]) -> None:
        super().__init__()
        self.rates = upsample_rates
        self.num_kernels = generator.num_kernels
        self.conv_pre = _to_2d(generator.conv_pre)
        self.ups = nn.ModuleList(_to_2d(up) for up in generator.ups)
        self.resblocks = nn.ModuleList(_ResBlock(b) for b in generator.resblocks)
        self.conv_post = _to_2d(generator.conv_post)

    def forward(self, z: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """z (N, C, T) -> audio (N, T * hop); `lengths` (frames) zero padding at every layer."""
        x = z.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        pad = None if lengths is None else _Padding.of(lengths, z.size(2), z.device)
        x = self.conv_pre(x)
        if pad is not None:
            x = pad(x)
        for i, (up, rate) in enumerate(zip(self.ups, self.rates, strict=True)):
            x = up(F.leaky_relu_(x, _LRELU_SLOPE))
            if pad is not None:
                pad = pad.upsample(rate)
                x = pad(x)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            acc = blocks[0](x, pad)
            for block in blocks[1:]:
                acc = acc + block(x, pad)
            x = acc / self.num_kernels
        x = torch.tanh(self.conv_post(F.leaky_relu_(x)))
        return x.reshape(x.size(0), -1)
