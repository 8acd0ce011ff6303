"""A model replica's gate: batches side by side, a reconfigure alone."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.model.runs import Gate, cap_after_out_of_memory

pytestmark = pytest.mark.timeout(30)


def test_a_reconfigure_waits_for_running_batches_and_holds_new_ones() -> None:
    async def scenario() -> list[str]:
        gate, seen = Gate(), []

        async def batch(name: str, hold: float) -> None:
            async with gate.shared():
                seen.append(f"{name} in")
                await asyncio.sleep(hold)
                seen.append(f"{name} out")

        async def reconfigure() -> None:
            async with gate.alone():
                seen.append("reconfigure in")
                await asyncio.sleep(0.05)
                seen.append("reconfigure out")

        first = [asyncio.create_task(batch(n, 0.05)) for n in ("a", "b")]
        await asyncio.sleep(0.01)
        change = asyncio.create_task(reconfigure())
        await asyncio.sleep(0.01)
        later = asyncio.create_task(batch("c", 0))
        await asyncio.gather(*first, change, later)
        return seen

    seen = asyncio.run(scenario())
    assert seen[:2] == ["a in", "b in"]  # side by side
    assert seen.index("reconfigure in") > max(seen.index("a out"), seen.index("b out"))
    assert seen.index("c in") > seen.index("reconfigure out")


def test_after_running_out_of_memory_the_cap_is_the_largest_size_that_ran() -> None:
    assert cap_after_out_of_memory({"ok": [16], "oom": []}) is None
    assert cap_after_out_of_memory({"ok": [8, 4, 4], "oom": [16]}) == 8
    assert cap_after_out_of_memory({"ok": [], "oom": [2, 1]}) == 1
