"""Which queued sentence item goes to the model replicas next: lanes, then fair shares.

Start-time fair queuing over a small tree: the root's children are the priority lanes, a
lane's children are API keys, a key's children are its requests, and a request holds its
queued items in order. Lanes and keys: the child with the least service so far (divided by
its weight) goes next, so lanes share model time by weight (interactive most of it, batch a
guaranteed slice: it never starves) and keys share a lane by weight. Service is counted in
phoneme ids, the model's input tokens. A key's own requests go by their head item's due
time (`pop`'s `due`): the caller decides, e.g. first sentences before the rest.

NOTE: a child that had nothing queued re-enters at its parent's current virtual time: idle
time banks no credit, so a key that was quiet cannot then take the model for itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

# One step of a path from the root: (child name, child weight).
Step = tuple[Hashable, float]


class Fair:
    """A node of the tree: either children (chosen fairly) or queued items (in order)."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight
        self.vtime = 0.0  # service received / weight, in the parent's virtual time
        self.clock = 0.0  # the virtual start time of the child served last
        self.size = 0  # items queued beneath this node
        self.children: dict[Hashable, Fair] = {}
        self.items: deque[Any] = deque()

    def push(self, path: Sequence[Step], item: Any) -> None:
        """Queue `item` at the leaf named by `path` (created as needed)."""
        chain = [self]
        for name, weight in path:
            parent = chain[-1]
            node = parent.children.get(name)
            if node is None:
                node = parent.children[name] = Fair(weight)
            node.weight = weight
            if node.size == 0:
                node.vtime = max(node.vtime, parent.clock)
            chain.append(node)
        chain[-1].items.append(item)
        for node in chain:
            node.size += 1

    def pop(self, cost: Callable[[Any], float], due: Callable[[Any], Any] | None = None) -> Any:
        """The next item to serve; `cost(item)` is charged to every node on its path. With
        `due`, a node whose children are leaves picks the leaf whose head item is due first."""
        if not self.size:
            raise IndexError("nothing queued")
        chain, node = [], self
        while node.children:
            ready = [c for c in node.children.values() if c.size]
            if due is not None and not ready[0].children:
                child = min(ready, key=lambda c: due(c.items[0]))
            else:
                child = min(ready, key=lambda c: c.vtime)
            node.clock = child.vtime
            chain.append(child)
            node = child
        item = node.items.popleft()
        charge = cost(item)
        self.size -= 1
        for node in chain:
            node.size -= 1
            node.vtime += charge / node.weight
        return item

    def remove(self, path: Sequence[Hashable], item: Any) -> bool:
        """Take a queued item out (its request gave up); False if it is not queued."""
        chain = [self]
        for name in path:
            node = chain[-1].children.get(name)
            if node is None:
                return False
            chain.append(node)
        try:
            chain[-1].items.remove(item)
        except ValueError:
            return False
        for node in chain:
            node.size -= 1
        return True

    def discard(self, path: Sequence[Hashable]) -> None:
        """Forget the leaf at `path` (a finished request) once nothing is queued there, and
        each parent it leaves empty (so the clients of an open server do not pile up).

        NOTE: a node's virtual time is at most one item's charge ahead of its parent's clock
        (it was the least when last served), so forgetting it forgives at most that."""
        chain: list[Fair] = [self]
        for name in path:
            node = chain[-1].children.get(name)
            if node is None:
                return
            chain.append(node)
        for depth in range(len(path), 0, -1):
            node = chain[depth]
            if node.size or node.children:
                return
            del chain[depth - 1].children[path[depth - 1]]

    def items_under(self, path: Sequence[Hashable] = ()) -> list[Any]:
        """The items queued beneath the node at `path`."""
        node: Fair | None = self
        for name in path:
            node = node.children.get(name) if node else None
        if node is None:
            return []
        found = list(node.items)
        for child in node.children.values():
            found += child.items_under()
        return found

    def queued(self, path: Sequence[Hashable] = ()) -> int:
        """Items queued beneath the node at `path`."""
        node: Fair | None = self
        for name in path:
            node = node.children.get(name) if node else None
        return node.size if node else 0
