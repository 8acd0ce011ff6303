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


def synthesize(session, phoneme_ids, noise: bool = False) -> np.ndarray:
    """One sentence's audio; noise off gives the deterministic output parity is checked on."""
    scales = (0.667, 1.0, 0.8) if noise else (0.0, 1.0, 0.0)
    feed = {
        "input": np.array([phoneme_ids], dtype=np.int64),
        "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
        "scales": np.array(scales, dtype=np.float32),
    }
    return session.run(None, feed)[0].squeeze()
