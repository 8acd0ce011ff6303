"""Text -> sentence items: normalisation, sentence splitting, espeak phonemes -> voice ids.

Phonemizing costs ~3 us per character and holds the GIL, so the ingress does it one sentence
at a time between awaits (see `TextFrontend.sentences`) rather than in a thread pool.
"""

from __future__ import annotations

import asyncio
import re
import threading
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass

from serve_app.model.voices import VoiceInfo

# Not said aloud: punctuation the phonemizer passes through, and the id map's specials.
_SILENT_PHONEMES = frozenset(" !'(),-.:;?\"_^$")
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "jr",
        "sr",
        "vs",
        "etc",
        "no",
        "nos",
        "fig",
        "figs",
        "vol",
        "approx",
        "dept",
        "est",
        "inc",
        "ltd",
        "co",
        "corp",
        "mt",
        "ft",
        "gen",
        "gov",
        "sen",
        "rep",
        "sgt",
        "capt",
        "lt",
        "col",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "u.s",
        "u.k",
    ]
)
# A sentence ends at . ! ? or an ellipsis (with closing quotes/brackets), before whitespace.
_SENTENCE_END = re.compile(r"""[.!?\u2026]+["'\u201d\u2019)\]]*(?=\s)""")
_CLAUSE_END = re.compile(r"[,;:\u2014\u2013]\s")
_WHITESPACE = re.compile(r"\s+")


# What the door's estimate of phonemes per character is first measured on (per voice).
SAMPLE = (
    "The meeting starts at nine tomorrow morning. Please bring the reports you wrote last "
    "week, and let me know if anything changed since then! Thank you, and see you soon."
)


class TextError(ValueError):
    """The text cannot be spoken; the message is safe to show the client."""


def normalize(text: str) -> str:
    """NFKC, control and format characters and emoji dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\t\r":
            out.append(" " if ch != "\n" else "\n")
        elif cat in ("Cc", "Cf", "Cs", "Co", "Cn", "So", "Sk") or ch == "\ufe0f":
            # Emoji and other pictographs (So) are dropped: espeak would read out their names.
            out.append(" ")
        else:
            out.append(ch)
    lines = (_WHITESPACE.sub(" ", line).strip() for line in "".join(out).split("\n"))
    return "\n".join(line for line in lines if line)


# NOTE: the API document says the same (`protocol.SPEAKABLE`, a JSON Schema pattern): a text
# is speakable when it has a letter or a number, in any script (Unicode categories L and N).
def is_speakable(text: str) -> bool:
    return any(unicodedata.category(ch)[0] in "LN" for ch in text)


def split_sentences(text: str, max_chars: int) -> list[str]:
    """Sentences of at most `max_chars`, split at clauses and then words when too long."""
    sentences: list[str] = []
    for paragraph in text.split("\n"):
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            end = match.end()
            words = paragraph[start:end].rsplit(None, 1)
            last = words[-1].lower().rstrip(".") if words else ""
            if match.group().startswith(".") and (last in _ABBREVIATIONS or len(last) == 1):
                continue  # "Dr. Smith", "J. R. R. Tolkien": not a sentence end
            sentences.append(paragraph[start:end].strip())
            start = end
        sentences.append(paragraph[start:].strip())
    return [piece for s in sentences if s for piece in _cap_length(s, max_chars)]


def _cap_length(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for part in _split_keep(sentence, _CLAUSE_END):
        if len(part) > max_chars:
            if current:
                pieces.append(current)
                current = ""
            pieces.extend(_split_words(part, max_chars))
        elif len(current) + len(part) > max_chars:
            pieces.append(current)
            current = part
        else:
            current += part
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def _split_keep(text: str, pattern: re.Pattern[str]) -> list[str]:
    parts, start = [], 0
    for m in pattern.finditer(text):
        parts.append(text[start : m.end()])
        start = m.end()
    parts.append(text[start:])
    return [p for p in parts if p]


def _split_words(text: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    current = ""
    for word in text.split(" "):
        while len(word) > max_chars:  # one enormous "word": cut it
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:max_chars])
            word = word[max_chars:]
        if current and len(current) + 1 + len(word) > max_chars:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


class _Espeak:
    """piper-tts's espeak-ng phonemizer: process-wide state, so one lock around it."""

    _lock = threading.Lock()
    _phonemizer = None

    @classmethod
    def phonemize(cls, voice: str, text: str) -> list[str]:
        with cls._lock:
            if cls._phonemizer is None:
                from piper.phonemize_espeak import EspeakPhonemizer

                cls._phonemizer = EspeakPhonemizer()
            sentences = cls._phonemizer.phonemize(voice, text)
        # NOTE: espeak splits at every period ("Dr." too); our splitter already chose the
        # sentence, so espeak's pieces are joined back into one item.
        joined: list[str] = []
        for phonemes in sentences:
            if joined and phonemes:
                joined.append(" ")
            joined.extend(phonemes)
        return joined


@dataclass(frozen=True)
class Sentence:
    index: int
    text: str
    phoneme_ids: tuple[int, ...]


class TextFrontend:
    """Turns request text into phoneme-id sentences for one voice."""

    def __init__(self, voice: VoiceInfo, max_item_chars: int) -> None:
        self.voice = voice
        self.max_item_chars = max_item_chars

    def prepare(self, text: str) -> list[str]:
        """Normalised sentences; raises TextError when nothing in `text` can be spoken."""
        clean = normalize(text)
        if not is_speakable(clean):
            raise TextError("input has no speakable text (letters or digits)")
        return [s for s in split_sentences(clean, self.max_item_chars) if is_speakable(s)]

    def phoneme_ids(self, sentence: str) -> tuple[int, ...] | None:
        """Ids for one sentence, or None when espeak finds nothing to say in it."""
        id_map = self.voice.phoneme_id_map
        phonemes = [p for p in _Espeak.phonemize(self.voice.espeak_voice, sentence) if p in id_map]
        if all(p in _SILENT_PHONEMES for p in phonemes):
            return None
        pad = id_map["_"]
        ids = [*id_map["^"], *pad]
        for p in phonemes:
            ids.extend(id_map[p])
            ids.extend(pad)
        ids.extend(id_map["$"])
        return tuple(ids)

    def phonemes_per_char(self, text: str = SAMPLE) -> float:
        """Phoneme ids per input character of `text` in this voice."""
        ids = [self.phoneme_ids(s) or () for s in self.prepare(text)]
        return sum(len(i) for i in ids) / len(text)

    async def sentences(self, sentences: list[str]) -> AsyncIterator[Sentence]:
        """Phonemize lazily, one sentence per event-loop turn, skipping silent ones."""
        index = 0
        for text in sentences:
            ids = self.phoneme_ids(text)
            await asyncio.sleep(0)  # let other requests run between sentences
            if ids is not None:
                yield Sentence(index, text, ids)
                index += 1
