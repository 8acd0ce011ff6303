"""A model replica's own speed, measured while it warms up: seconds per batch of probe items
at one item and at its full batch size. The ingress's door reads its rate from this until
the drain rate it measures itself has enough evidence (`queue.meter`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from serve_app.model.engines.base import SynthesisItem

# A typical sentence, in phoneme ids (about 40 characters of English); the ids follow Piper's
# layout (1 = start, 0 = pad between phonemes, 2 = end), shared by every Piper voice; the
# phonemes cycle through ordinary vowels and consonants.
PROBE_PHONEMES = 100
_SOUNDS = (14, 18, 21, 25, 26, 27, 28, 31, 33, 35, 38, 39)


_BODY = [_SOUNDS[i % len(_SOUNDS)] for i in range((PROBE_PHONEMES - 3) // 2)]  # 48 sounds
PROBE_IDS = (1, 0, *(x for s in _BODY for x in (s, 0)), 2)


def probe_item(voice: str, seed: int) -> SynthesisItem:
    return SynthesisItem(voice, PROBE_IDS, 1.0, 0.667, 0.8, seed)


@dataclass(frozen=True)
class SpeedProfile:
    """Batch time as `fixed_s + items * per_item_s` for items of `phonemes` ids, up to
    `max_batch` items (plain data, sent to the ingress with every answer)."""

    replica: str
    stamp: float  # when it was measured: a new stamp means new settings
    phonemes: int
    max_batch: int
    fixed_s: float
    per_item_s: float
    load_s: float | None = None  # how long the replica took to start, up to this profile

    def phonemes_per_s(self, batch: float) -> float:
        """Throughput in batches of `batch` items (at most `max_batch`)."""
        size = max(1.0, min(batch, self.max_batch))
        return size * self.phonemes / (self.fixed_s + size * self.per_item_s)


def measure(
    replica: str,
    voice: str,
    max_batch: int,
    synthesize: Callable[[list[SynthesisItem]], object],
    clock: Callable[[], float] = time.perf_counter,
) -> SpeedProfile:
    """Time one probe batch of one item and one of `max_batch` items.

    NOTE: engines warm up in `load` and `reconfigure`; a first-call cost left in these
    timings only makes the estimate slower than the truth, until measured drain takes over."""
    full = [probe_item(voice, seed) for seed in range(max_batch)]
    timings = {}
    for batch in sorted({max_batch, 1}):
        start = clock()
        synthesize(full[:batch])
        timings[batch] = clock() - start
    one, many = timings[1], timings[max_batch]
    per_item = (many - one) / (max_batch - 1) if max_batch > 1 else one
    per_item = max(per_item, 1e-6)
    fixed = max(0.0, one - per_item)
    phonemes = full[0].size
    return SpeedProfile(replica, time.time(), phonemes, max_batch, fixed, per_item)
