"""A stream as its listener hears it: playback starts with the first audio and runs in real
time; audio that comes after the listener has played everything before it is a stall
(playback waits for it, then goes on). The backlog schedules a stream's sentences by when
they will be needed (`needed_at`); the ingress reports each stream's stalls as a metric, and
`load_tests.bench_playback` measures them at the client the same way.
"""

from __future__ import annotations

# NOTE: a sentence's audio before it exists: 2.15 decoder frames of 256 samples at 22,050 Hz
# per phoneme id (the packaged voice's median), times the item's length scale. Only an
# order of its lateness: a stream's deadlines move to real durations as its audio arrives.
SPEECH_S_PER_PHONEME = 2.15 * 256 / 22050


class Playback:
    """One listener's playback of one stream."""

    def __init__(self) -> None:
        self.started: float | None = None  # when the first audio came
        self.runs_out = 0.0  # when the audio heard so far will have played out
        self.stall_s = 0.0  # playback time spent waiting for audio that came late
        self.heard_s = 0.0  # audio seconds heard

    def heard(self, seconds: float, at: float) -> None:
        """`seconds` more audio came at `at`."""
        if self.started is None:
            self.started = self.runs_out = at
        elif at > self.runs_out:
            self.stall_s += at - self.runs_out
            self.runs_out = at
        self.runs_out += seconds
        self.heard_s += seconds

    def needed_at(self, after_s: float) -> float | None:
        """When audio that follows `after_s` more seconds of what is not heard yet must be
        there to play without a stall; None before the first audio."""
        return None if self.started is None else self.runs_out + after_s
