"""How fast the queue drains, and every "how long will this take" made from it.

Work is counted in phoneme ids, the model's input tokens: a sentence's synthesis time grows
with its length, so "phonemes ahead / phonemes drained per second" is an honest wait where
"items ahead" is not. Two sources of the rate:

- **Measured before it guesses**: each model replica times probe batches while it warms up
  (`model.profile`) and hands its profile to the ingress with every answer; before admitting
  a request while idle or after a quiet spell (`PROFILE_FRESH_S`) the ingress asks for one,
  so a cold start, a config change or a roll that no answer has shown yet is known before
  the next burst is admitted; but not just after an answer (`just_answered`), when no
  slower settings can be in place yet. A cold server has a rate from its first request: the
  probe's speed at the batch size the replicas' answers show lately (one item until they
  show any; how full batches get depends on the load, not only on the settings).
- **Measured drain**: phonemes finished per second of busy time (time with work outstanding:
  an idle hour does not read as a slow server). It takes over from the profiles as busy time
  accumulates (`TAKEOVER_S`), and its evidence is dropped when the replicas change (a new
  replica, a roll, a user_config change: a profile with a new stamp), since it described
  replicas that no longer serve.

NOTE: each ingress replica sees only the work it sent. With several ingress replicas (and
traffic spread evenly) its share of the queue and of the measured drain shrink together; a
replica's profile is its whole speed, so until drain is measured each ingress counts on all of
it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from serve_app.model.profile import SpeedProfile

BATCH_DECAY = 0.98  # weight of the batch sizes seen before each answer
PROFILE_FRESH_S = 2.0  # a profile no answer confirmed for this long is asked for again
# Of a profile's one-item probe time: how long after an answer no reconfigure can have ended
# (`Meter.just_answered`).
JUST_ANSWERED_SHARE = 0.5
TAKEOVER_S = 10.0  # busy seconds of measured drain after which it alone is the rate
# Without a profile, busy seconds of measured drain before it may refuse anyone: a few lone
# short items read the model slower than it is (fixed costs per item).
REFUSE_AFTER_S = 2.0
# NOTE: a profile times the engine alone; serving adds round trips, batch waits and the
# ingress's own work. Counting on this share of it kept a cold burst inside max_backlog_s
# (tests/integration/test_cold_door.py).
PROFILE_SHARE = 0.85


class Meter:
    """The drain rate (from replica profiles and measured drain) and the estimates built on
    it. `batch` is the items in flight per model replica, which bounds its batches."""

    def __init__(
        self,
        batch: int,
        phonemes_per_char: float = 2.4,
        window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batch = batch
        self.window_s = window_s
        self.phonemes_per_char = phonemes_per_char
        self.clock = clock
        self._profiles: dict[str, tuple[SpeedProfile, float]] = {}  # replica -> (it, seen at)
        self._replicas = 1
        self._outstanding = 0
        self._busy_total = 0.0  # seconds during which something was outstanding
        self._busy_since = 0.0
        self._done: deque[tuple[float, int, float]] = deque()  # (busy clock, phonemes, model s)
        self._evidence_from = 0.0  # busy clock when the evidence last started afresh
        self._items_seen = self._batches_seen = 0.0  # recent answers, and the batches they ran in
        self._answered: tuple[SpeedProfile, float] | None = None  # the last answer's, and when

    # -- evidence -------------------------------------------------------------------------

    def learn_profile(self, profile: SpeedProfile, batch: int | None = None) -> None:
        """A replica's profile, and the size of a batch it ran (with an answer): a new
        replica or new settings start the evidence afresh."""
        known = self._profiles.get(profile.replica)
        self._profiles[profile.replica] = (profile, self.clock())
        if known is None or known[0] != profile:
            self._forget()
        if batch:  # NOTE: per item, so a batch of b counts 1/b batches: items / batches
            self._answered = (profile, self.clock())
            self._items_seen = self._items_seen * BATCH_DECAY + 1
            self._batches_seen = self._batches_seen * BATCH_DECAY + 1 / batch

    def set_replicas(self, count: int) -> None:
        """Model replicas answering lately (they come and go): the evidence starts afresh."""
        if count != self._replicas:
            self._replicas = count
            self._forget()

    def _forget(self) -> None:
        self._items_seen = self._batches_seen = 0.0
        self._done.clear()
        self._evidence_from = self._busy_clock()

    @property
    def profiled(self) -> bool:
        return bool(self._profiles)

    def load_s(self) -> float | None:
        """How long a model replica took to start, as the slowest known one measured it."""
        loads = [p.load_s for p, _ in self._profiles.values() if p.load_s is not None]
        return max(loads, default=None)

    def just_answered(self) -> bool:
        """Whether the one model replica answered so lately that no slower settings can be in
        place since: its profile holds, with nothing to ask.

        NOTE: a reconfigure waits for the batches running (`Synthesizer.reconfigure`), then
        times a probe item alone before its new profile is given out. Slower settings take
        longer than the old profile's one-item time for it, so within a share of that time
        (`JUST_ANSWERED_SHARE`, for the answer's way back) of an answer a question would
        bring back the same profile. One client sending one sentence after another then
        skips a round trip to the replica per request (~7 ms here, docs/performance.md)."""
        if self._answered is None or self._replicas != 1:
            return False
        profile, at = self._answered
        probe_s = profile.fixed_s + profile.per_item_s
        return self.clock() - at <= JUST_ANSWERED_SHARE * probe_s

    def profile_age_s(self) -> float:
        """Seconds since a replica last confirmed its profile (inf: never)."""
        if not self._profiles:
            return float("inf")
        return self.clock() - max(seen for _, seen in self._profiles.values())

    def added(self) -> None:
        """An item entered the queue."""
        if not self._outstanding:
            self._busy_since = self.clock()
        self._outstanding += 1

    def removed(self, phonemes: int, model_s: float | None) -> None:
        """An item left the queue; with `model_s`, it was synthesized (that long in the model)."""
        busy = self._busy_clock()
        self._outstanding -= 1
        if model_s is not None:
            self._done.append((busy, phonemes, model_s))
        if not self._outstanding:
            self._busy_total = busy
        while self._done and self._done[0][0] < busy - self.window_s:
            self._done.popleft()

    def learn_chars(self, chars: int, phonemes: int) -> None:
        """A finished request's characters and phoneme ids."""
        if chars and phonemes:
            self.phonemes_per_char += 0.2 * (phonemes / chars - self.phonemes_per_char)

    # -- the rate -------------------------------------------------------------------------

    def rate(self) -> float | None:
        """Phonemes drained per second, all replicas together; None with neither a profile
        nor anything drained yet."""
        measured, busy_s = self.measured()
        prior = self.profiled_rate()
        if prior is None:
            return measured
        if measured is None:
            return prior
        trust = min(1.0, busy_s / TAKEOVER_S)
        return trust * measured + (1 - trust) * prior

    def can_refuse(self) -> bool:
        """The rate is honest enough to refuse work by."""
        return self.profiled or self.measured()[1] >= REFUSE_AFTER_S

    def profiled_rate(self) -> float | None:
        """What the replicas' own probes promise, for the replicas answering lately."""
        if not self._profiles:
            return None
        latest = max(seen for _, seen in self._profiles.values())
        rates = [
            p.phonemes_per_s(self.batch_size())
            for p, seen in self._profiles.values()
            if seen >= latest - self.window_s  # NOTE: a rolled-away replica stops answering
        ]
        return PROFILE_SHARE * self._replicas * sum(rates) / len(rates)

    def batch_size(self) -> float:
        """The batches the replicas run lately: 1 until answers show them (how full they get
        depends on the load and the serving layer, not only on the settings), at most the
        items in flight per replica."""
        if not self._batches_seen:
            return 1.0
        return min(self.batch, self._items_seen / self._batches_seen)

    def measured(self) -> tuple[float | None, float]:
        """Measured drain over the last `window_s` of busy time, and that busy time.

        The larger of two measures: phonemes per second of busy time (right under load,
        whatever the number of replicas), and per second of the model's own time (right when
        items come one at a time, since busy time then counts round trips)."""
        busy = self._busy_clock()
        recent = [(p, m) for b, p, m in self._done if b >= busy - self.window_s]
        phonemes = sum(p for p, _ in recent)
        model_s = sum(m for _, m in recent)
        span = min(self.window_s, busy - self._evidence_from)
        if not phonemes or span <= 0:
            return None, 0.0
        return max(phonemes / span, phonemes / model_s if model_s else 0.0), span

    def _busy_clock(self) -> float:
        if not self._outstanding:
            return self._busy_total
        return self._busy_total + (self.clock() - self._busy_since)

    # -- estimates ------------------------------------------------------------------------

    def phonemes(self, chars: int) -> int:
        """Phoneme ids expected for `chars` characters of input."""
        return round(chars * self.phonemes_per_char)

    def seconds(self, phonemes: float, share: float = 1.0) -> float | None:
        """How long `phonemes` of work take at `share` of the rate; None without a rate."""
        if phonemes <= 0:
            return 0.0
        rate = self.rate()
        return None if rate is None else phonemes / (rate * share)


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)
