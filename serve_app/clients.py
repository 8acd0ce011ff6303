"""Who is calling, what they may use, and their limits' state.

With API keys, a client is a key's holder. Keys are kept only as SHA-256 digests; a presented
key is hashed and looked up, so neither the config nor memory nor any log line holds a key.
`python -m serve_app.clients new NAME` makes a key and prints the config entry for it.
On an open server (no keys) a client is a client address (`http.requests.client_address`),
with `open_limits`: each address has its own fair share and, if set, its own limits.

Several ingress replicas share each client's limits (`queue.shared`): each replica enforces
its `share` of a client's rate and burst, and counts the client's requests in progress
elsewhere (`elsewhere`) against its concurrency cap.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from serve_app.config import LANE_NAMES, ApiKey, AppConfig, Limits, env, hash_key
from serve_app.errors import Unauthorized

logger = logging.getLogger("ray.serve.chorus.keys")

OPEN = "anonymous"  # the client of an open API whose address is unknown
RELOAD_EVERY_S = 5.0
MAX_CLIENTS = 10_000  # clients whose limits' state is kept (least recently seen go first)


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; this replica enforces its `share`
    of both.

    NOTE: a request larger than the (shared) burst passes when the bucket is full and leaves
    it in debt, so a small share never locks out the longest input; the rate still holds.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self.share = 1.0
        self._tokens, self._at = float(burst), clock()

    def wait_s(self, n: float) -> float:
        """Seconds until `n` tokens are there (0: now)."""
        now = self._clock()
        rate, burst = self.rate * self.share, self.burst * self.share
        self._tokens = min(burst, self._tokens + (now - self._at) * rate)
        self._at = now
        return max(0.0, (min(n, burst) - self._tokens) / rate)

    def take(self, n: float) -> None:
        self._tokens -= n

    def reshare(self, share: float) -> None:
        """Enforce `share` of the rate and burst from now on; the bucket stays as full (a
        debt stays what it is: scaled, a debt left by a small share would grow)."""
        self.wait_s(0)  # refilled at the old share up to now
        if self._tokens > 0:
            self._tokens *= share / self.share
        self.share = share


@dataclass
class Client:
    """An API key's holder (or a client address of an open API) and its limits' state."""

    name: str
    lanes: tuple[str, ...]
    default_lane: str | None
    weight: float
    limits: Limits
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        lim = self.limits
        self.requests = lim.requests_per_s and TokenBucket(
            lim.requests_per_s, lim.requests_burst, self.clock
        )
        self.chars = lim.chars_per_s and TokenBucket(lim.chars_per_s, lim.chars_burst, self.clock)
        self.elsewhere = 0  # its requests in progress at other ingress replicas
        self.asked = 0  # requests that reached the door since the last `take_asked`

    @property
    def limited(self) -> bool:
        return self.limits.on

    def reshare(self, share: float) -> None:
        for bucket in (self.requests, self.chars):
            if bucket:
                bucket.reshare(share)

    def take_asked(self) -> int:
        asked, self.asked = self.asked, 0
        return asked

    @property
    def settings(self) -> tuple[tuple[str, ...], str | None, float, Limits]:
        return self.lanes, self.default_lane, self.weight, self.limits

    def rate_wait_s(self, chars: int) -> float:
        """How long until a request of `chars` characters fits both buckets (0: now)."""
        waits = [self.requests.wait_s(1) if self.requests else 0.0]
        waits.append(self.chars.wait_s(chars) if self.chars else 0.0)
        return max(waits)

    def charge(self, chars: int) -> None:
        if self.requests:
            self.requests.take(1)
        if self.chars:
            self.chars.take(chars)


class KeyStore:
    """Turns a request's Authorization header into a `Client`, or refuses it (401)."""

    def __init__(self, config: AppConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.open = config.keyless
        self.trusted_proxies = config.proxy_networks
        self._clients: OrderedDict[str, Client] = OrderedDict()  # least recently seen first
        self._by_hash: dict[str, ApiKey] = {}
        self._file_stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._load()
        # Set by `queue.shared` from what every ingress replica reports: this replica's share
        # of each client's limits, and the share of a client it has not heard of.
        self.shares: dict[str, float] = {}
        self.default_share = 1.0

    def authenticate(self, headers: Mapping[str, str], address: str | None = None) -> Client:
        """The client making a request with `headers`, from client `address` (401 without a
        valid key, when the server has keys)."""
        if self.open:
            return self._client(
                address or OPEN, list(LANE_NAMES), None, 1.0, self.config.open_limits
            )
        self._reload_if_changed()
        presented = bearer(headers)
        if presented is None:
            raise Unauthorized(
                "missing API key: send it as 'Authorization: Bearer <key>'",
                code="missing_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        key = self._by_hash.get(hash_key(presented))
        if key is None:
            raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})
        return self._client(key.name, key.lanes, key.default_lane, key.weight, key.limits)

    def _client(
        self,
        name: str,
        lanes: list[str],
        default_lane: str | None,
        weight: float,
        limits: Limits | None = None,
    ) -> Client:
        settings = (tuple(lanes), default_lane, weight, limits or self.config.key_limits)
        client = self._clients.get(name)
        # NOTE: an unchanged key keeps its buckets' state; a changed one starts afresh.
        if client is None or client.settings != settings:
            client = self._clients[name] = Client(name, *settings, clock=self._clock)
            client.reshare(self.shares.get(name, self.default_share))
            if len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
        self._clients.move_to_end(name)
        return client

    def clients(self) -> list[Client]:
        """The clients seen lately (at most MAX_CLIENTS), least recently seen first."""
        return list(self._clients.values())

    def reshare(self, shares: dict[str, float], default: float) -> None:
        """This replica's share of each client's limits, and of any other client's."""
        self.shares, self.default_share = shares, default
        for client in self._clients.values():
            client.reshare(shares.get(client.name, default))

    def _load(self) -> None:
        keys = list(self.config.api_keys)
        path = self.config.api_keys_file
        if path is not None:
            keys += self._read_file(path)
        self.config.check_keys(keys)
        self._by_hash = {k.sha256: k for k in keys if k.sha256}

    def _read_file(self, path: Path) -> list[ApiKey]:
        stat = path.stat()
        self._file_stamp = (stat.st_mtime, stat.st_size)
        entries = yaml.safe_load(path.read_text()) or []
        return TypeAdapter(list[ApiKey]).validate_python(entries)

    def _reload_if_changed(self) -> None:
        path = self.config.api_keys_file
        now = self._clock()
        if path is None or now - self._checked < RELOAD_EVERY_S:
            return
        self._checked = now
        try:
            stat = path.stat()
            if (stat.st_mtime, stat.st_size) != self._file_stamp:
                self._load()
                logger.info("API keys reloaded from %s: %d keys", path, len(self._by_hash))
        except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
            # NOTE: a broken edit keeps the keys that worked rather than locking everyone out.
            logger.error("API keys file %s not reloaded: %s", path, type(exc).__name__)


def bearer(headers: Mapping[str, str]) -> str | None:
    """The key from 'Authorization: Bearer <key>' (or an 'X-API-Key' header)."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve_app.clients", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="make a random key; print it and its config entry")
    new.add_argument("name")
    new.add_argument("--lanes", default="interactive,batch")
    sub.add_parser("hash", help="print the SHA-256 of a key read from CHORUS_KEY or stdin")
    args = parser.parse_args(argv)
    if args.command == "new":
        key = "chorus-" + secrets.token_urlsafe(32)
        lanes = ", ".join(args.lanes.split(","))
        print(f"key (give it to {args.name}; it is not stored): {key}")
        print(f"entry:\n- name: {args.name}\n  sha256: {hash_key(key)}\n  lanes: [{lanes}]")
    else:
        key = env("KEY") or input().strip()
        print(hash_key(key))


if __name__ == "__main__":
    main()
