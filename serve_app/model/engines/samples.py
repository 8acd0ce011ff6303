"""Sentences an engine runs on itself: its warm-up, and the items its self-checks compare."""

from __future__ import annotations

from serve_app.model.engines.base import SynthesisItem
from serve_app.model.voices import VoiceInfo


def ids(info: VoiceInfo, ipa: str) -> tuple[int, ...]:
    """The voice's phoneme ids of an IPA string (symbols it does not know are skipped)."""
    table = info.phoneme_id_map
    seq = [table["^"][0]] + [p for ch in ipa for p in (*table.get(ch, ()), 0)]
    return tuple(seq + [table["$"][0]])


def warmup_item(info: VoiceInfo) -> SynthesisItem:
    return SynthesisItem(info.id, ids(info, "həlˈoʊ wˈɜːld."), 1.0, 0.667, 0.8, 0)


# Sentences of varied length for the decoder precision check (IPA; any voice's map takes the
# symbols it knows).
_CHECK_IPA = (
    "jˈɛs.",
    "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ.",
    "spˈiːtʃ sˈɪnθəsˌɪs tˈɜːnz ɹˈɪʔn̩ wˈɜːdz ˌɪntʊ sˈaʊnd ðæt pˈiːpəl kæn hˈɪɹ, "
    "wˈʌn sˈɛntəns æt ɐ tˈaɪm.",
)


def check_items(info: VoiceInfo) -> list[SynthesisItem]:
    """Noise off: what the check compares is the decoder alone."""
    return [SynthesisItem(info.id, ids(info, s), 1.0, 0.0, 0.0, 0) for s in _CHECK_IPA]
