"""Fair shares that hold across ingress replicas, wherever a client's requests land.

Each ingress replica shares the model fairly among the clients whose items wait in it, and
keeps the same number of items in flight as every other replica: so a replica's clients
share that replica's part of the model. Serve's proxy routes without looking at the client,
and a client's next request tends to go where its last one just finished (that replica has
just freed a slot): a light client's few requests can all sit in one replica while a heavy
client fills every replica. In the cluster test (2 ingress replicas, a light key with 4
clients against a heavy one with 24) the light key then got a quarter to three eighths of
the model instead of half, in about one run of four.

So the board (`queue.shared`) also hears, from every replica, the model time (phonemes)
each client was given there in the last interval and whether it had items waiting. Among the
clients that waited anywhere, one that got less than the mean (per unit of its weight) gets a
larger weight in every replica, one that got more a smaller one; a step at a time
(`GAIN`, smoothed over intervals), within `MAX_BOOST` either way, so a replica's other
clients are slowed, never stopped. With one replica reporting the local scheduler is already
fair and every boost is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GAIN = 0.5  # exponent of each step towards the mean
MAX_BOOST = 4.0  # a client's weight is at most this times its own, and at least 1/this
SMOOTHING = 0.5  # weight of the newest interval in a client's smoothed model time
RELAX = 0.5  # a client that stopped waiting keeps this power of its boost per update


@dataclass(frozen=True)
class Service:
    """One client at one replica over the last interval."""

    phonemes: float  # model time it was given there, in phoneme ids synthesized
    waited: bool  # it had items waiting there for a turn
    weight: float = 1.0  # its configured weight (API key `weight`)


class Boosts:
    """Each client's multiplier of its weight, the same in every replica (the board's)."""

    def __init__(self) -> None:
        self.boosts: dict[str, float] = {}
        self._served: dict[str, float] = {}  # smoothed phonemes per interval per weight

    def update(self, replicas: list[dict[str, Service]]) -> dict[str, float]:
        """One step from every live replica's last report; the boosts to apply."""
        served: dict[str, float] = {}
        waited: set[str] = set()
        for report in replicas:
            for name, s in report.items():
                served[name] = served.get(name, 0.0) + s.phonemes / max(s.weight, 1e-9)
                if s.waited:
                    waited.add(name)
        for name in set(self._served) | set(served):
            old = self._served.get(name, served.get(name, 0.0))
            self._served[name] = SMOOTHING * served.get(name, 0.0) + (1 - SMOOTHING) * old
        contended = len(replicas) > 1 and len(waited) > 1
        target = sum(self._served[n] for n in waited) / len(waited) if contended else 0.0
        for name in set(self.boosts) | (waited if contended else set()):
            boost = self.boosts.get(name, 1.0)
            if contended and name in waited:
                ratio = target / max(self._served[name], target / MAX_BOOST**2, 1e-9)
                self.boosts[name] = min(max(boost * ratio**GAIN, 1 / MAX_BOOST), MAX_BOOST)
            elif abs(math.log(boost)) > 0.01:
                self.boosts[name] = boost**RELAX
            else:  # back to its own weight
                del self.boosts[name]
        for name in [n for n in self._served if n not in served and n not in self.boosts]:
            del self._served[name]
        return dict(self.boosts)
