"""Piper voices run in onnxruntime, the voice file's own runtime: the CPU engine.

Piper's graph draws its noise inside (two RandomNormalLike nodes), so its audio would
depend on nothing a caller can repeat. Here each voice's graph is cut where the noise goes
in (`engines.cut`): the phoneme part (text encoder, duration predictor, alignment) takes the
duration noise as an input and gives every frame its prior; the latent noise is added here;
the frame part (flow, decoder) makes the audio. Both draws are `noise.gaussian`'s, the PyTorch
engine's: a seed gives an item the same noise in either engine, alone or beside any other item.

Every item runs alone (batch 1), as piper runs a sentence: no padding, no per-length set-up
cost. Threads: beside other items, every part of an item runs at one thread, one item per
core; the frame part (flow and decoder, about 85% of the work) on onnxruntime's
channel-blocked convolutions (`engines.blocked`). An item that runs alone runs its phoneme part
on a pool of `threads` and its frame part in `threads` pieces along time at once, each at one
thread (`engines.frames`: with the whole's samples to the bit); a short item's frame part runs
on the pool, alone or not. The frame part's pool sleeps between operations instead of spinning,
so a short item on it beside a one-thread item takes no core from it; the phoneme part's pool,
which only an item alone runs on, spins between its operations and stops when its run ends.

Neither switch changes a sample. In the phoneme part, onnxruntime's matrix products (MLAS)
split the larger of their two sides between threads, and a thread with 64 columns or fewer
sums its products in longer blocks than one with more: the columns are phonemes, and the rows
(192 or more channels) are the larger side until each thread's share of columns is over 64,
or the inner sum fits one block (attention): its pool gives the one thread's outputs at any
length. That is checked for each voice just after load (an item alone runs that part at one
thread until then) and by tests/unit/test_ort_engine.py; where the pool differs, every item
runs it at one thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import nullcontext
from functools import cached_property
from typing import Any

import numpy as np
import onnx
import torch
from onnx.utils import Extractor

from serve_app.config import SynthesizerUserConfig, VoiceSource
from serve_app.model.cores import CoreShare, one_thread
from serve_app.model.engines.base import Engine, SynthesisItem
from serve_app.model.engines.cut import declare, find_cut
from serve_app.model.engines.frames import FramePart, loader
from serve_app.model.engines.noise import DURATION_NOISE, LATENT_NOISE, gaussian
from serve_app.model.engines.samples import warmup_item
from serve_app.model.voices import VoiceInfo, VoiceLoadError

logger = logging.getLogger("ray.serve.chorus.engine")

# Phoneme counts at which the pooled phoneme part is checked against the one-thread one at
# load: either side of 64 and 128 (one or two threads' share of a product's columns), and past
# 192 (the channels, beyond which products split their columns); about 0.4 s here.
POOLED_PHONEME_CHECKS = (1, 64, 65, 97, 128, 129, 193, 257)
_CPU = torch.device("cpu")  # where the noise is drawn


class OrtVoice:
    """One voice as onnxruntime sessions cut where the noise goes in (`find_cut`): the
    phoneme part on a pool of `threads` for an item alone, at one thread beside others; the
    frame part at one thread, in pieces for an item alone (`engines.frames`)."""

    def __init__(self, info: VoiceInfo, threads: int) -> None:
        model = onnx.load(str(info.model_path))
        try:
            cut = find_cut(model.graph)
        except (ValueError, StopIteration) as exc:
            raise VoiceLoadError(
                f"{info.model_path} is not a usable Piper VITS voice: {exc}"
            ) from exc
        inputs = [i.name for i in model.graph.input]
        self.speakers = "sid" in inputs
        if self.speakers != bool(info.speakers):
            raise VoiceLoadError(
                f"its config names {max(1, len(info.speakers))} speaker(s), its graph "
                f"{'takes' if self.speakers else 'has no'} speaker id"
            )
        declare(model.graph, [cut.duration_noise, cut.m_p, cut.logs_p, cut.z_p, *cut.carried])
        extractor = Extractor(model)
        noise = [cut.duration_noise] if cut.duration_noise else []
        front = extractor.extract_model(inputs + noise, [cut.m_p, cut.logs_p, *cut.carried])
        back = extractor.extract_model([cut.z_p, *cut.carried], [cut.output])
        # NOTE: only an item alone runs the phoneme part's pool, so the pool spins (`_options`).
        load_front = loader(front, lambda t: _options(t, spin=t > 1))
        self.info, self.cut = info, cut
        self.front = load_front(1)
        # NOTE: at one thread the pool is the one-thread session; the phoneme part's pool
        # comes once loaded and checked (`_after_load`).
        self.front_pooled = self.front
        self.frames = FramePart(back, _options, self._sample, threads)
        self._pooling: threading.Thread | None = None
        if threads > 1:
            # NOTE: loading the phoneme part's graph takes ~1 s here and its check 0.4 s,
            # finding the frame part's halos ~2 s: that would hold the replica's start on two
            # busy cores. Until then a lone item runs both parts at one thread, with the same
            # outputs.
            self._pooling = threading.Thread(
                target=self._after_load,
                args=(lambda: load_front(threads), threads),
                name=f"chorus-after-load-{info.id}",
                daemon=True,
            )
            self._pooling.start()

    def _after_load(self, load: Callable[[], Any], threads: int) -> None:
        """Put the phoneme part's pool in use if it gives the one thread's outputs, and a lone
        item's frame part in `threads` pieces if halos are found that give the whole's."""
        one_thread()  # NOTE: the checks' noise in torch starts no team beside the engine's items
        self._pool_phonemes(load)
        try:
            self.frames.find_halos(threads)
        except Exception:
            logger.exception("Voice %s: a lone item's frame part runs whole", self.info.id)

    def _pool_phonemes(self, load: Callable[[], Any]) -> None:
        """Load the phoneme part's pool and put it in use if it gives the one thread's
        outputs."""
        try:
            pooled = load()
            if self._check_front_pool(pooled):
                self.front_pooled = pooled
        except Exception:
            logger.exception("Voice %s: its phoneme part stays at one thread", self.info.id)

    @property
    def phonemes_pooled(self) -> bool:
        """Whether the phoneme part's pool is in use (loaded, and its check passed)."""
        return self.front_pooled is not self.front

    def pooled(self, timeout_s: float | None = None) -> bool:
        """`phonemes_pooled`, once the pool has been loaded and checked (waiting up to
        `timeout_s` for that)."""
        if self._pooling is not None:
            self._pooling.join(timeout_s)
        return self.phonemes_pooled

    def _check_front_pool(self, pooled: Any) -> bool:
        """Whether `pooled`, the phoneme part on a pool, gives the one thread's outputs to the
        bit, checked on random phoneme ids at `POOLED_PHONEME_CHECKS`."""
        rng = np.random.default_rng(0)
        symbols = 1 + max(i for ids in self.info.phoneme_id_map.values() for i in ids)
        for length in POOLED_PHONEME_CHECKS:
            ids = tuple(int(i) for i in rng.integers(1, symbols, length))
            item = SynthesisItem(self.info.id, ids, 1.0, 0.667, 0.8, length)
            one, many = (self._phonemes(item, s) for s in (self.front, pooled))
            if not all(np.array_equal(a, b) for a, b in zip(one, many, strict=True)):
                logger.warning(
                    "Voice %s: every item's phoneme part runs at one thread (the pool's "
                    "outputs differ at %d phonemes)",
                    self.info.id,
                    length,
                )
                return False
        return True

    @cached_property
    def _warm_phonemes(self) -> list[np.ndarray]:
        """The phoneme part's outputs for the warm-up item (what `_sample` models its inputs
        on: computed once, not for each of the checks' lengths)."""
        return self._phonemes(warmup_item(self.info), self.front)

    def _sample(self, frames: int) -> dict[str, np.ndarray]:
        """The frame part's inputs for `frames` frames: random latents, and what else crosses
        (the frame mask, all ones for one item; a speaker's embedding) as for a real item."""
        m_p, _, *carried = self._warm_phonemes
        rng = np.random.default_rng(frames)
        feed = {self.cut.z_p: rng.standard_normal((1, m_p.shape[1], frames), np.float32)}
        for name, value in zip(self.cut.carried, carried, strict=True):
            if value.shape[-1] == m_p.shape[2]:  # NOTE: only the mask has frames, all ones
                value = np.ones((*value.shape[:-1], frames), np.float32)
            feed[name] = value
        return feed

    def synthesize(
        self, item: SynthesisItem, helpers: Executor | None = None, pieces: int = 1
    ) -> np.ndarray:
        """One item's audio, float32 mono; `helpers`: threads free for it now, nothing else
        running (its phoneme part then runs on the pool, its frame part in up to `pieces`
        pieces at once: the same samples, sooner)."""
        alone = helpers is not None
        m_p, logs_p, *carried = self._phonemes(item, self.front_pooled if alone else self.front)
        eps = gaussian([item.seed], LATENT_NOISE, m_p.shape[1], [m_p.shape[2]], _CPU).numpy()
        # NOTE: the graph's own order of operations: (noise * exp(logs_p)) * scale + m_p.
        z_p = m_p + eps * np.exp(logs_p) * np.float32(item.noise_scale)
        feed = dict(zip(self.cut.carried, carried, strict=True)) | {self.cut.z_p: z_p}
        return self.frames.run(feed, helpers, pieces)

    def _phonemes(self, item: SynthesisItem, session: Any) -> list[np.ndarray]:
        """The phoneme part in `session`: each frame's prior mean and log scale (1, C, T),
        then what the frame part reads besides (`Cut.carried`)."""
        cut, phonemes = self.cut, len(item.phoneme_ids)
        feed: dict[str, np.ndarray] = {
            "input": np.array([item.phoneme_ids], dtype=np.int64),
            "input_lengths": np.array([phonemes], dtype=np.int64),
            "scales": np.array([item.noise_scale, item.length_scale, item.noise_w], np.float32),
        }
        if self.speakers:
            feed["sid"] = np.array([item.speaker], dtype=np.int64)
        if cut.duration_noise:
            noise = gaussian([item.seed], DURATION_NOISE, 2, [phonemes], _CPU)
            feed[cut.duration_noise] = noise.numpy()
        return session.run(None, feed)


def _options(threads: int, spin: bool = False) -> Any:
    """Session options at `threads` threads; `spin`: a pool whose workers spin between its
    operations, for a session that only an item alone runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # NOTE: a pool's workers by default sleep between operations instead of spinning: a short
    # item on the pool beside another item's one-thread frame part spun a core away from it
    # (two callers in-process: 22.4-24.3 against 20.8-22.3 audio-s/s). The phoneme part's
    # many small operations wait for a sleeping worker's wake-up at each one, so its pool,
    # run only by an item alone, spins, and stops spinning when its run ends (lone items,
    # the twelve sentences alternated, 11 runs each: 1,627 against 1,681 ms, 11 of the 12
    # quicker; spinning without that stop kept each session's workers spinning into the
    # next session's run, 1,891 against 1,595 ms). Spinning changes when, never what.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OrtEngine(Engine):
    """All configured Piper voices in onnxruntime, for CPU replicas: each item alone, side by
    side with others on the replica's engine threads (module docstring)."""

    concurrent_calls = True  # sessions are safe to run from several threads at once
    padding_efficiency = 1.0  # every item runs unpadded: each frame computed is its own

    def __init__(self, voices: list[VoiceSource], threads: int | None = None) -> None:
        self._sources = voices
        self._voices: dict[str, OrtVoice] = {}
        self._threads = threads
        self.threads = 0  # a lone item's, once loaded
        self.decoder_refused: str | None = None  # why decoder settings asked for were refused

    def load(self, device: str) -> None:
        if device != "cpu":
            raise ValueError(f"the onnxruntime engine runs on CPU only, not {device!r}")
        # NOTE: a replica's engine thread has torch set to the replica's threads.
        threads = self._threads or (self.cores.threads if self.cores else torch.get_num_threads())
        self.threads = threads
        if self.cores is None and threads > 1:
            # NOTE: given no cores to share, items come one at a time: each runs alone, with
            # the other threads as its helpers.
            self.cores = CoreShare(threads)
        for source in self._sources:
            info = VoiceInfo.load(source)
            self._voices[info.id] = OrtVoice(info, threads)
        logger.info("Voices %s in onnxruntime, %d threads", list(self._voices), threads)
        self.synthesize([warmup_item(v.info) for v in self._voices.values()])

    def reconfigure(self, settings: SynthesizerUserConfig) -> None:
        """The decoder settings are the PyTorch engine's: here the voice file runs as it is,
        in float32, and a request for another precision or for compiling is refused (logged,
        and in `status`)."""
        asked = []
        if settings.decoder_dtype != "float32":
            asked.append(f"decoder_dtype {settings.decoder_dtype}")
        if settings.decoder_compile == "on":
            asked.append("decoder_compile on")
        self.decoder_refused = None
        if asked:
            self.decoder_refused = (
                f"{' and '.join(asked)}: the onnxruntime engine runs the voice file as it is, "
                "in float32 (cpu_engine: pytorch takes these settings)"
            )
            logger.error("Voices keep their float32 decoder: %s", self.decoder_refused)

    @property
    def voices(self) -> list[str]:
        return list(self._voices)

    def sample_rate(self, voice: str) -> int:
        return self._voices[voice].info.sample_rate

    def synthesize(self, items: list[SynthesisItem]) -> list[np.ndarray]:
        one_thread()  # the noise's few torch operations: no second team beside onnxruntime's
        audio = []
        for item in items:
            with self.cores.item() if self.cores else nullcontext():
                helpers = self.cores.helpers() if self.cores else None
                pieces = self.cores.threads if helpers else 1
                audio.append(self._voices[item.voice].synthesize(item, helpers, pieces))
        return audio

    def pooled(self, timeout_s: float | None = None) -> bool:
        """Whether every voice's phoneme part has its pool in use (`OrtVoice.pooled`)."""
        return all(v.pooled(timeout_s) for v in self._voices.values())

    def status(self) -> dict[str, Any]:
        voices = self._voices.values()
        return {
            "runtime": "onnxruntime",
            "batch_policy": "per_item",
            "threads": self.threads,
            "decoder_blocked": all(v.frames.blocked for v in voices),
            "lone_item_split": all(v.frames.halos is not None for v in voices),
            "phoneme_part_pooled": all(v.phonemes_pooled for v in voices),
            "decoder_refused": self.decoder_refused,
        }

    def close(self) -> None:
        self._voices.clear()
        if self.cores:
            self.cores.close()
