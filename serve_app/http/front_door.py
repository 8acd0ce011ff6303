"""Which of the ingress's peers are Serve's own front door, whose last forwarded address is
the request's real peer.

In HAProxy mode the ingress replicas take HTTP from the HAProxy of some Ray node (any node's:
each balances over every ingress replica), so a request's peer is a node's address, never
the client's. Run through chorus-haproxy (`serve_app.haproxy`), HAProxy appends the address
it saw to X-Forwarded-For; from a node's address the ingress takes that last entry as the
peer (`http.requests.client_address`), then applies `trusted_proxies` to what is left, as it
would behind Serve's proxy. A peer that is not a node (someone who reached an ingress
replica's port directly) is believed about nothing. (A process on a Ray node is believed like
HAProxy: it can run code in the cluster anyway.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable

from serve_app.config import front_door, haproxy_adds_peer

logger = logging.getLogger("ray.serve.chorus.ingress")

REFRESH_S = 10.0  # the node list is read this often, and at most once a second on a miss
MISS_REFRESH_S = 1.0
LOCAL = ("127.0.0.1", "::1")


def ray_node_addresses() -> list[str]:
    """The addresses of the Ray cluster's live nodes (a call to Ray's GCS)."""
    import ray

    return [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]


class FrontDoor:
    """`door.forwards(peer)`: whether `peer` is a Ray node's HAProxy that appended the address
    it saw. Always false with Serve's proxy (it hands the ingress no connection) and with an
    HAProxy not run through chorus-haproxy (what it forwards is the client's own word)."""

    def __init__(
        self,
        active: bool | None = None,
        nodes: Callable[[], Iterable[str]] = ray_node_addresses,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if active is None:
            behind_haproxy = front_door() == "haproxy"
            active = behind_haproxy and haproxy_adds_peer()
            if behind_haproxy and not active:
                logger.warning(
                    "HAProxy mode without chorus-haproxy: every request's peer is HAProxy, so "
                    "on an open server all clients share one fair share and one set of "
                    "open_limits (docs/operations.md, The front door)"
                )
        self.active = active
        self._nodes = nodes
        self._clock = clock
        self._addresses = frozenset(ipaddress.ip_address(a) for a in LOCAL)
        self._read_at = float("-inf")
        self._reading: asyncio.Task[None] | None = None

    def forwards(self, peer: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if not self.active:
            return False
        peer = getattr(peer, "ipv4_mapped", None) or peer
        if peer in self._addresses:
            return True
        # NOTE: a node that joined since the last read: read again soon (this request's
        # client is then the node's address; the next ones are right).
        if self._clock() - self._read_at >= MISS_REFRESH_S:
            self.refresh()
        return False

    def refresh(self) -> None:
        """Read the node list again, in a thread, unless a read is under way."""
        if self._reading is not None and not self._reading.done():
            return
        self._read_at = self._clock()
        with contextlib.suppress(RuntimeError):  # no event loop: the next request reads it
            self._reading = asyncio.get_running_loop().create_task(self._read())

    async def run(self) -> None:
        """Keep the node list fresh (a task of the ingress replica's, while it lives)."""
        while self.active:
            self.refresh()
            await asyncio.sleep(REFRESH_S)

    async def _read(self) -> None:
        try:
            found = await asyncio.to_thread(lambda: list(self._nodes()))
        except Exception as exc:  # GCS briefly away: keep what is known
            logger.warning("Could not read Ray's node list: %r", exc)
            return
        self.know(found)

    def know(self, nodes: Iterable[str]) -> None:
        """The nodes' addresses are these (this machine's loopback addresses always)."""
        addresses = set()
        for text in (*LOCAL, *nodes):
            with contextlib.suppress(ValueError):
                addresses.add(ipaddress.ip_address(text))
        self._addresses = frozenset(addresses)
