"""Shared by the benchmarks: the texts, and a sentence pool turned into engine items."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"

# Varied, realistic sentence lengths (3 to ~25 words).
SENTENCES = [
    "Hello there, how are you doing today?",
    "Yes.",
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "Please remember to bring your umbrella tomorrow.",
    "Numbers like 42 and 1999 are read aloud.",
    "Why would anyone do that?",
    "Speech synthesis turns written words into sound that people can hear, one sentence at a time.",
    "Our train leaves at half past nine, so we should be at the station by nine fifteen.",
    "Thank you for calling.",
    "In the morning the market was crowded with people buying fresh bread, fruit and flowers.",
    "It works.",
    "A long time ago, in a small village by the sea, there lived an old fisherman and his wife.",
]


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def save(name: str, report: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2))
    return path
