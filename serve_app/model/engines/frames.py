"""A voice's frame part in onnxruntime (the flow, then the decoder: about 85% of a sentence's
work on CPU), run the cheap way for many items and the quick way for a lone one, with the
same samples either way, to the bit.

Many items: every item's flow and decoder run at one thread, one item per core, the decoder
on onnxruntime's channel-blocked convolutions with its tensors kept blocked between them
(`engines.blocked`). Measured here at one thread, 300 frames: 214 against 249 ms for the frame
part as the voice file has it; two items side by side on two cores 2580-2700 against
2270-2340 frames/s (docs/performance.md).

A lone item: its flow, then its decoder, split along time into as many pieces as cores are
free, each piece run at one thread with `halo` frames of its neighbours on either side. A
convolution's output reaches only so far into its input, so with a wide enough halo every
sample kept is computed from the same inputs with the same arithmetic as in the whole: the
same samples. The halos are found after load (`find_halo`: the narrowest that gives the
whole's outputs to the bit at several lengths); until then, or if none does, a lone item runs
whole at one thread too.

No piece computes fewer than `MIN_SPAN_FRAMES` frames: onnxruntime's matrix products (MLAS)
sum a product of 64 columns or fewer in longer blocks than a wider one, so a piece that
narrow would sum otherwise than the whole. A piece whose own frames and halos fall short is
widened into its neighbours' frames (more context never moves a kept sample). Every item of
2 x `MIN_PIECE_FRAMES` frames or more (~0.9 s of audio here) can be cut so; checked at every
length from 80 to 329 frames in two to four pieces here (docs/performance.md).

An item shorter than that runs its frame part on a pool of the replica's threads instead,
alone or beside others: in two pieces of 65 frames it would gain little, at one thread a lone
one took 1.5-1.9x piper's time, and its samples still depend on nothing but the item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import onnx

from serve_app.model.engines.blocked import blocked_model, decoder_in_2d, not_again, split

logger = logging.getLogger("ray.serve.chorus.engine")

HALOS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128)  # tried in turn, frames
MIN_PIECE_FRAMES = 40  # a piece's own frames, at least (module docstring)
MIN_SPAN_FRAMES = 65  # frames a piece computes, its halos included, at least (module docstring)
# Lengths at which a halo is checked, in pieces of MIN_PIECE_FRAMES: the shortest split, one
# whose pieces a 12-frame halo leaves a frame short of MIN_SPAN_FRAMES (widened), and two
# longer ones, uneven.
HALO_CHECKS = (2, 2.6, 4, 6.6)


@dataclass(frozen=True)
class Stage:
    """One part of the frame part as a one-thread session: `inputs` are fed in this order,
    the first one with frames along its last axis (so has any other whose last axis is as
    long; a speaker's embedding has none)."""

    session: Any
    inputs: tuple[str, ...]

    def run(self, feed: Sequence[np.ndarray]) -> np.ndarray:
        (out,) = self.session.run(None, dict(zip(self.inputs, feed, strict=True)))
        return out

    def pieces(
        self, feed: Sequence[np.ndarray], count: int, halo: int, helpers: Executor | None
    ) -> np.ndarray:
        """The output of `feed`, computed in `count` pieces along time (the first here, the
        others on `helpers`) and joined; the whole at once when `count` is 1."""
        frames = feed[0].shape[-1]
        if count < 2 or helpers is None:
            return self.run(feed)
        edges = [round(k * frames / count) for k in range(count + 1)]
        spans = [span(a, b, halo, frames) for a, b in pairwise(edges)]

        def piece(lo: int, hi: int) -> np.ndarray:
            return self.run([x[..., lo:hi] if x.shape[-1] == frames else x for x in feed])

        later = [helpers.submit(piece, lo, hi) for lo, hi in spans[1:]]
        outs = [piece(*spans[0]), *(f.result() for f in later)]
        per_frame = outs[0].shape[-1] // (spans[0][1] - spans[0][0])  # audio: samples a frame
        kept = [
            out[..., (a - lo) * per_frame : (b - lo) * per_frame]
            for out, (lo, _), (a, b) in zip(outs, spans, pairwise(edges), strict=True)
        ]
        return np.concatenate(kept, axis=-1)


def span(a: int, b: int, halo: int, frames: int) -> tuple[int, int]:
    """The frames a piece computes to keep frames [a, b) of `frames`: `halo` more on either
    side, widened into its neighbours to `MIN_SPAN_FRAMES` (the whole, if shorter)."""
    lo, hi = max(0, a - halo), min(frames, b + halo)
    short = MIN_SPAN_FRAMES - (hi - lo)
    if short > 0:
        lo = max(0, min(lo - short // 2, frames - MIN_SPAN_FRAMES))
        hi = min(frames, lo + MIN_SPAN_FRAMES)
    return lo, hi


Sample = Callable[[int], dict[str, np.ndarray]]  # the frame part's inputs, by name, that long


class FramePart:
    """A voice's frame part as `Stage`s: the flow, then the decoder (blocked where that works),
    or the whole as one where no decoder is found; each at one thread (`stages`) and on a pool
    of `threads` (`pooled`, what an item shorter than `pooled_below` frames always runs on);
    and the halos a lone item's pieces take (None until `find_halos` found them: it then runs
    whole). `options(threads)`: session options; `sample(frames)`: inputs of that length to
    check against (random latents, as an item's other inputs)."""

    def __init__(
        self, back: onnx.ModelProto, options: Callable[[int], Any], sample: Sample, threads: int
    ) -> None:
        self.inputs = tuple(i.name for i in back.graph.input)
        self.sample = sample
        self.blocked = False
        self.halos: tuple[int, ...] | None = None
        # NOTE: an item too short for two pieces runs on the pool, alone or not: its samples
        # depend on nothing but the item (the pool's differ from one thread's by ~2e-7). The
        # pool's decoder is blocked too: seven short items on it beside a one-thread item made
        # 1,600-1,615 frames/s against 1,160-1,350 with the voice file's graph on the pool,
        # which alone is quicker for them (333-354 against 434-457 ms for the seven); under
        # 16 clients its replica spent 0.87-0.91 of piper's CPU per sentence, against 0.86.
        self.pooled_below = 2 * MIN_PIECE_FRAMES if threads > 1 else 0
        try:
            parts = split(back)
        except Exception:  # noqa: BLE001 - as one part it gives the same audio, slower
            logger.exception("The frame part runs as one: it could not be cut at its decoder")
            parts = None
        models = [back] if parts is None else list(parts)
        names = [self.inputs] + [tuple(i.name for i in m.graph.input) for m in models[1:]]
        loaders = [loader(m, options) for m in models]
        self.stages = [Stage(load(1), n) for load, n in zip(loaders, names, strict=True)]
        if parts is not None:
            try:
                blocked = self._blocked(parts[1], options)
            except Exception:  # noqa: BLE001 - the plain decoder gives the same audio, slower
                logger.exception("The decoder stays 1-D")
            else:
                if blocked is not None:
                    (loaders[-1], self.stages[-1]), self.blocked = blocked, True
        # NOTE: the pool's sessions are made once each stage's graph is chosen (no plain
        # decoder's pool made only to be dropped).
        self.pooled = (
            [Stage(load(threads), n) for load, n in zip(loaders, names, strict=True)]
            if threads > 1
            else self.stages
        )

    def _blocked(
        self, decoder: onnx.ModelProto, options: Callable[[int], Any]
    ) -> tuple[Callable[[int], Any], Stage] | None:
        """The blocked decoder (its loader by thread count, and its one-thread stage) if it can
        be made and gives the plain one's audio (within 1e-5: its 2-D convolutions sum in
        another order); None to keep the plain one."""
        wide = decoder_in_2d(decoder)
        if wide is None:
            logger.info("The decoder stays 1-D: it holds operators it cannot carry over")
            return None
        load = loader(blocked_model(wide, lambda: options(1)), lambda t: not_again(options(t)))
        plain = self.stages[-1]
        one = Stage(load(1), plain.inputs)
        feed = self.stage_inputs(len(self.stages) - 1, self.sample(2 * MIN_PIECE_FRAMES))
        gap = float(np.abs(plain.run(feed) - one.run(feed)).max())
        if gap > 1e-5:
            logger.warning("The decoder stays 1-D: blocked, its audio is %.2g away", gap)
            return None
        return load, one

    def stage_inputs(self, k: int, named: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Stage `k`'s inputs for the frame part's inputs `named` (the stages before it run)."""
        out = None
        for stage in self.stages[:k]:
            out = stage.run(_inputs(stage, out, named))
        return _inputs(self.stages[k], out, named)

    def run(
        self, feed: dict[str, np.ndarray], helpers: Executor | None = None, pieces: int = 1
    ) -> np.ndarray:
        """The audio (1-D) of `feed` (the frame part's inputs by name): whole at one thread,
        or, with `helpers` and halos found, in up to `pieces` pieces at once; whole on the pool
        if shorter than `pooled_below` frames."""
        frames = feed[self.inputs[0]].shape[-1]
        halos = self.halos
        count = min(pieces, frames // MIN_PIECE_FRAMES) if halos and helpers else 1
        stages = self.pooled if frames < self.pooled_below else self.stages
        out = None
        for k, stage in enumerate(stages):
            out = stage.pieces(_inputs(stage, out, feed), count, halos[k] if halos else 0, helpers)
        assert out is not None
        return out.reshape(-1)

    def find_halos(self, pieces: int) -> bool:
        """Find each stage's halo for `pieces` pieces and put splitting in use; False (and
        every item whole) if a stage has none."""
        halos = []
        for k, stage in enumerate(self.stages):
            halo = find_halo(stage, lambda n, k=k: self.stage_inputs(k, self.sample(n)), pieces)
            if halo is None:
                logger.warning("A lone item's frame part runs whole: no halo splits stage %d", k)
                return False
            halos.append(halo)
        self.halos = tuple(halos)
        return True


def _inputs(
    stage: Stage, previous: np.ndarray | None, named: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """`stage`'s inputs: the stage before it's output first (none for the first stage), the
    rest from the frame part's inputs `named`."""
    return [
        previous if previous is not None and j == 0 else named[n]
        for j, n in enumerate(stage.inputs)
    ]


def loader(model: onnx.ModelProto, options: Callable[[int], Any]) -> Callable[[int], Any]:
    """A session of `model` for a thread count."""
    import onnxruntime as ort

    data = model.SerializeToString()
    return lambda threads: ort.InferenceSession(data, options(threads), ["CPUExecutionProvider"])


def find_halo(stage: Stage, feed: Callable[[int], list[np.ndarray]], pieces: int) -> int | None:
    """The narrowest of `HALOS` with which `stage` in `pieces` pieces gives its whole output
    to the bit at each of `HALO_CHECKS` (`feed(frames)`: random inputs that long); None if
    none does."""
    lengths = [round(c * pieces * MIN_PIECE_FRAMES / 2) for c in HALO_CHECKS]
    feeds = [feed(n) for n in lengths]
    wholes = [stage.run(f) for f in feeds]
    serial = _Serial()
    for halo in HALOS:
        if all(
            np.array_equal(whole, stage.pieces(f, pieces, halo, serial))
            for f, whole in zip(feeds, wholes, strict=True)
        ):
            return halo
    return None


class _Serial(Executor):
    """Runs what is submitted at once, in the caller's thread (a check needs no second core)."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        from concurrent.futures import Future

        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future
