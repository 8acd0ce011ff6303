"""The texts every benchmark and load test sends (no torch here: locust imports it)."""

from __future__ import annotations

import random

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

# What people send a speech API: mostly a reply of a sentence or two, sometimes a paragraph.
# (share of requests, fewest sentences, most sentences)
MIX = [(0.5, 1, 1), (0.35, 2, 4), (0.15, 6, 10)]


def request_text(rng: random.Random) -> str:
    """One request's text from the mix; the same `rng` state gives the same text."""
    weights = [share for share, _, _ in MIX]
    _, fewest, most = rng.choices(MIX, weights)[0]
    return " ".join(rng.choice(SENTENCES) for _ in range(rng.randint(fewest, most)))


def request_texts(count: int, seed: int) -> list[str]:
    """`count` texts of the mix, the same for every server compared in one run."""
    rng = random.Random(seed)
    return [request_text(rng) for _ in range(count)]
