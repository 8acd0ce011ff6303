"""Sentences every engine runs on its own: a warm-up item, and items of varied length for
checks made at start (written in IPA, so no phonemizer is needed; any voice's map takes the
symbols it knows)."""

from __future__ import annotations

from serve_app.model.engines.base import SynthesisItem
from serve_app.model.voices import VoiceInfo

_CHECK_IPA = (
    "jˈɛs.",
    "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ.",
    "spˈiːtʃ sˈɪnθəsˌɪs tˈɜːnz ɹˈɪʔn̩ wˈɜːdz ˌɪntʊ sˈaʊnd ðæt pˈiːpəl kæn hˈɪɹ, "
    "wˈʌn sˈɛntəns æt ɐ tˈaɪm.",
)


def ipa_ids(info: VoiceInfo, ipa: str) -> tuple[int, ...]:
    """Phoneme ids of an IPA string the way piper writes them (a pad after each symbol)."""
    ids = info.phoneme_id_map
    seq = [ids["^"][0]] + [p for ch in ipa for p in (*ids.get(ch, ()), 0)]
    return tuple(seq + [ids["$"][0]])


def warmup_item(info: VoiceInfo) -> SynthesisItem:
    return SynthesisItem(info.id, ipa_ids(info, "həlˈoʊ wˈɜːld."), 1.0, 0.667, 0.8, 0)


def check_items(info: VoiceInfo) -> list[SynthesisItem]:
    """Short, medium and long, noise off: what a check compares is the model alone."""
    return [SynthesisItem(info.id, ipa_ids(info, s), 1.0, 0.0, 0.0, 0) for s in _CHECK_IPA]
