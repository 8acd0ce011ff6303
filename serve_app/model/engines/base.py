"""The engine contract: what a model replica needs from a speech model."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from serve_app.config import SynthesizerUserConfig

if TYPE_CHECKING:
    from serve_app.model.cores import CoreShare
    from serve_app.model.profile import SpeedProfile


def is_out_of_memory(exc: BaseException) -> bool:
    """An engine's device allocation failed (torch raises RuntimeError subclasses for it);
    the replica then splits the batch."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass(frozen=True)
class SynthesisItem:
    """One sentence of one request: plain data sent from the ingress to a model replica."""

    voice: str
    phoneme_ids: tuple[int, ...]
    length_scale: float
    noise_scale: float
    noise_w: float
    seed: int
    speaker: int = 0  # of a multi-speaker voice

    @property
    def size(self) -> int:
        """Cost proxy used for batching decisions (number of phoneme ids)."""
        return len(self.phoneme_ids)


@dataclass(frozen=True)
class Synthesized:
    """A model replica's answer for one item: its audio and what it cost (plain data)."""

    audio: np.ndarray
    queue_s: float  # waited in the replica before its batch ran
    model_s: float  # its share of its batch's model time
    replica: str = ""  # id of the model replica that made it
    profile: SpeedProfile | None = None  # that replica's speed, for the ingress's meter
    batch: int = 1  # items in the batch it ran in


class Engine(ABC):
    """A speech model behind one inference method.

    `synthesize` takes items for any of the engine's voices and returns float32 mono PCM in
    [-1, 1] at that voice's sample rate, one array per item, in order. An item's audio must not
    depend on the other items in the call (same seed -> same samples).
    """

    @abstractmethod
    def load(self, device: str) -> None:
        """Load weights onto `device` ("cpu" or "cuda[:N]") and warm up."""

    @property
    @abstractmethod
    def voices(self) -> list[str]:
        """Ids of the voices this engine can synthesize."""

    @abstractmethod
    def sample_rate(self, voice: str) -> int:
        """Native output sample rate of `voice`."""

    @abstractmethod
    def synthesize(self, items: list[SynthesisItem]) -> list[np.ndarray]:
        """Audio for each item, in order."""

    # Real / computed (padded) frames of the last `synthesize` call on the calling thread, for
    # the batch padding metric; None when an engine cannot tell.
    padding_efficiency: float | None = None

    # An engine whose `synthesize` may run on several threads at once says so here; a CPU
    # replica then runs items side by side and hands it `cores` to split among them.
    concurrent_calls: bool = False
    cores: CoreShare | None = None

    def reconfigure(self, settings: SynthesizerUserConfig) -> None:  # noqa: B027 - optional hook
        """Apply the replica's user_config (called at start and on every change)."""

    def status(self) -> dict[str, Any]:
        """What the engine runs with (precision, budgets), for the replica's stats."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; does nothing by default."""
