"""Gaussian noise that depends only on (seed, stream, channel, position): counter-based.

VITS draws noise twice per sentence (durations, latents). Drawn from a generator, an item's
noise depends on what shares its batch unless every item has its own generator, and
per-item CPU generators cost ~150 ms per GPU batch of 64, while CPU and CUDA generators
draw different numbers for the same seed. Here each value is a hash of its coordinates:
integer arithmetic that every device does alike, then Box-Muller in float64, so one call
draws a whole padded batch on the engine's device, an item's values do not depend on its
neighbours or its length, and the same seed gives the same noise on a CPU or a GPU.
"""

from __future__ import annotations

import math

import torch

_M32 = 0xFFFFFFFF
_STREAM_SALT = 0x9E3779B9
_SECOND = 0x85EBCA6B  # salt of each value's second uniform
_POSITION_BITS = 22  # up to 4M frames per item; channel index above that
# The streams of one item, in every engine: a seed gives the same noise wherever it runs.
DURATION_NOISE, LATENT_NOISE = 0, 1


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32): split so that nothing overflows int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with good avalanche (C. Wellons' "lowbias32")."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _keys(seeds: list[int], stream: int, device: torch.device) -> torch.Tensor:
    """One 32-bit key per item from its 63-bit seed and the stream number, shape (N, 1, 1)."""
    lo = torch.tensor([s & _M32 for s in seeds], dtype=torch.int64, device=device)
    hi = torch.tensor([(s >> 32) & _M32 for s in seeds], dtype=torch.int64, device=device)
    salt = (stream * _STREAM_SALT) & _M32
    return mix32(mix32(lo ^ mix32(hi)) ^ salt).view(-1, 1, 1)


def _uniform(bits: torch.Tensor) -> torch.Tensor:
    """(0, 1) in float64 from the top 24 bits (never 0, so its log is finite)."""
    return ((bits >> 8).double() + 0.5) / 2.0**24


def gaussian(
    seeds: list[int], stream: int, channels: int, lengths: list[int], device: torch.device
) -> torch.Tensor:
    """Standard normal noise (N, channels, max(lengths)) in float32, zero past each length.

    Item i's values depend only on (seeds[i], stream) and the coordinates.
    """
    width = max(lengths)
    position = torch.arange(width, dtype=torch.int64, device=device)
    channel = torch.arange(channels, dtype=torch.int64, device=device)
    counter = mix32((channel[:, None] << _POSITION_BITS) | position[None, :])  # (C, T)
    first = mix32(_keys(seeds, stream, device) ^ counter)
    second = mix32(first ^ _SECOND)
    radius = torch.sqrt(-2.0 * torch.log(_uniform(first)))
    noise = (radius * torch.cos(2.0 * math.pi * _uniform(second))).float()
    inside = position[None, :] < torch.tensor(lengths, device=device)[:, None]
    return noise * inside[:, None, :]
