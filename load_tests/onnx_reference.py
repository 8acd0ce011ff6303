"""The voice's reference runtime (onnxruntime on CPU), for parity checks and comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def session(model_path: Path | str):
    """An onnxruntime session of the voice file, or None where onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])


def synthesize(session, phoneme_ids, noise: bool = False, speaker: int | None = None) -> np.ndarray:
    """One sentence's audio; noise off gives the deterministic output parity is checked on.
    `speaker`: the speaker id of a multi-speaker voice."""
    scales = (0.667, 1.0, 0.8) if noise else (0.0, 1.0, 0.0)
    feed = {
        "input": np.array([phoneme_ids], dtype=np.int64),
        "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
        "scales": np.array(scales, dtype=np.float32),
    }
    if speaker is not None:
        feed["sid"] = np.array([speaker], dtype=np.int64)
    return session.run(None, feed)[0].squeeze()


def speakers(model_path: Path | str, phoneme_ids, numbers: list[int]) -> list[np.ndarray]:
    """One sentence spoken by each of a multi-speaker voice's `numbers`, noise off."""
    ort = session(model_path)
    return [synthesize(ort, phoneme_ids, speaker=n) for n in numbers]
