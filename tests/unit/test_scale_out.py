"""Scale-out logic without a cluster: retrying items whose replica died, counting replicas,
the autoscaling policy's arithmetic, and telling an out-of-memory error apart."""

from __future__ import annotations

import asyncio
import contextvars
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ray.exceptions import ActorDiedError, NodeDiedError, WorkerCrashedError
from ray.serve.config import AutoscalingConfig

from serve_app.autoscaling import scale_on_items
from serve_app.errors import ItemTooLarge, Overloaded, PayloadTooLarge
from serve_app.model.engines.base import Synthesized, is_out_of_memory
from serve_app.queue.replicas import ModelReplicas, classify
from tests.fakes import Clock, Handle, Response, item

pytestmark = pytest.mark.timeout(30)


class Call:
    """A fake handle call: fails with `error`, or answers from `replica`."""

    def __init__(self, replica: str, error: BaseException | None = None) -> None:
        self.replica, self.error, self.cancelled = replica, error, False

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        if self.error:
            raise self.error
        return Synthesized(np.zeros(4, np.float32), 0.0, 0.0, self.replica)

    def cancel(self) -> None:
        self.cancelled = True


async def test_an_item_whose_replica_died_is_sent_again_and_answered() -> None:
    calls = [Call("a", ActorDiedError()), Call("b")]
    retried = []
    replicas = ModelReplicas(
        Handle(lambda _: calls.pop(0)), retries=3, on_retry=lambda: retried.append(1)
    )
    answer = await replicas.send(item(5))
    assert answer.replica == "b" and not calls
    assert retried == [1]


async def test_a_replica_lost_more_often_than_the_retries_fails_the_item() -> None:
    replicas = ModelReplicas(Handle(lambda _: Call("a", ActorDiedError())), retries=1)
    with pytest.raises(ActorDiedError):
        await replicas.send(item(5))


async def test_an_engine_error_is_not_retried() -> None:
    calls = [Call("a", ItemTooLarge("too big")), Call("b")]
    with pytest.raises(ItemTooLarge):
        await ModelReplicas(Handle(lambda _: calls.pop(0))).send(item(5))
    assert len(calls) == 1


async def test_cancelling_a_send_cancels_the_replica_call() -> None:
    call = Call("a")
    handle = Handle(lambda _: call)
    task = asyncio.create_task(ModelReplicas(handle).send(item(5)))
    while not handle.calls:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cancelled


async def test_an_item_cancelled_before_its_call_leaves_is_never_sent() -> None:
    handle = Handle(lambda _: Call("a"))
    task = asyncio.create_task(ModelReplicas(handle).send(item(5)))
    await asyncio.sleep(0)  # it waits for the end of this loop turn to be sent
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.01)
    assert handle.calls == []


async def test_items_sent_together_share_one_call_and_keep_their_own_answers() -> None:
    calls = {1: Call("a"), 2: Call("a", ItemTooLarge("too big")), 3: Call("a")}
    handle = Handle(lambda it: calls[it.seed])
    replicas = ModelReplicas(handle)
    sends = [asyncio.create_task(replicas.send(item(5, seed=s))) for s in (1, 2, 3)]
    answers = await asyncio.gather(*sends, return_exceptions=True)
    assert len(handle.calls) == 1  # one handle call for the three
    assert isinstance(answers[1], ItemTooLarge)  # only its own item fails
    assert answers[0].replica == answers[2].replica == "a"


async def test_a_pack_is_sent_outside_the_context_of_the_request_that_opened_it() -> None:
    # Serve cancels the calls a request made when that request is cancelled; a pack carries
    # other requests' items, so it must not belong to the first one's context.
    request = contextvars.ContextVar("request", default=None)
    seen = []

    def submit(_):
        seen.append(request.get())
        return Call("a")

    replicas = ModelReplicas(Handle(submit))

    async def as_request(name: str):
        request.set(name)
        return await replicas.send(item(5))

    await asyncio.gather(as_request("A"), as_request("B"))
    assert seen == [None, None]


class Cancelled:
    """A handle call that Serve cancelled from outside."""

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        raise asyncio.CancelledError()

    def cancel(self) -> None:
        pass


async def test_a_call_cancelled_from_outside_fails_its_items_instead_of_hanging() -> None:
    replicas = ModelReplicas(Handle(lambda _: Cancelled()))
    with pytest.raises(RuntimeError, match="cancelled"):
        await asyncio.wait_for(replicas.send(item(5)), 5)


async def test_a_shared_call_is_cancelled_only_when_all_its_items_are() -> None:
    handle = Handle(lambda _: Response(asyncio.get_running_loop().create_future()))  # pending
    replicas = ModelReplicas(handle)
    one, two = (asyncio.create_task(replicas.send(item(5, seed=s))) for s in (1, 2))
    while not handle.calls:
        await asyncio.sleep(0)
    one.cancel()
    await asyncio.sleep(0)
    assert not handle.calls[0].cancelled
    two.cancel()
    await asyncio.gather(one, two, return_exceptions=True)
    assert handle.calls[0].cancelled


async def test_replicas_are_counted_while_they_answer() -> None:
    clock, counts = Clock(), []
    names = iter(["a", "b", "a", "b", "a"])
    replicas = ModelReplicas(
        Handle(lambda _: Call(next(names))), window_s=30, on_count=counts.append, clock=clock
    )
    assert replicas.count() == 1  # before any answer there is still one replica
    for _ in range(4):
        await replicas.send(item(5))
    assert replicas.count() == 2 and counts == [2]
    clock.now += 31  # "b" stopped answering (scaled down or gone)
    await replicas.send(item(5))
    assert replicas.count() == 1 and counts == [2, 1]


async def test_a_rollouts_stopped_replicas_stop_counting_at_the_controllers_next_answer() -> None:
    clock, counts, running = Clock(), [], [None]
    names = iter(["old-a", "old-b", "new-a", "new-b", "new-a", "new-b"])
    replicas = ModelReplicas(
        Handle(lambda _: Call(next(names))),
        window_s=30,
        on_count=counts.append,
        clock=clock,
        running=lambda: running[0],
    )
    for _ in range(4):  # the old replicas answered, then the new ones
        await replicas.send(item(5))
    assert counts == [2, 3, 4]  # the controller not asked yet: every one that answered
    running[0] = 2  # the old ones stopped: the controller's answer, seconds later
    await replicas.send(item(5))
    assert counts == [2, 3, 4, 2]  # not 30 s later, when the window would forget them
    running[0] = None  # no answer that recent: the window alone
    await replicas.send(item(5))
    assert counts == [2, 3, 4, 2, 4]


def context(name: str, requests: float, replicas: int, target: float, items=None):
    return SimpleNamespace(
        deployment_name=name,
        total_num_requests=requests,
        current_num_replicas=replicas,
        config=AutoscalingConfig(target_ongoing_requests=target, max_replicas=10),
        aggregated_metrics={"items": items} if items is not None else {},
    )


def test_model_replicas_follow_the_items_waiting_at_every_ingress() -> None:
    contexts = {
        "ingress": context(
            "Ingress", requests=300, replicas=2, target=100, items={"i1": 90, "i2": 70}
        ),
        # The replicas themselves see only the items let through: 16 of the 160.
        "synth": context("Synthesizer", requests=16, replicas=2, target=32),
    }
    decisions, state = scale_on_items(contexts)
    assert decisions["synth"] == pytest.approx(160 / 32)  # 5 replicas
    assert decisions["ingress"] == pytest.approx(3.0)
    assert state == {}


def test_before_any_ingress_reports_the_model_replicas_use_their_own_count() -> None:
    contexts = {
        "ingress": context("Ingress", requests=0, replicas=1, target=100, items={}),
        "synth": context("Synthesizer", requests=8, replicas=1, target=4),
    }
    assert scale_on_items(contexts)[0]["synth"] == pytest.approx(2.0)


def test_out_of_memory_is_told_apart_from_other_engine_errors() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_sentence_that_never_fits_is_a_413_naming_the_input() -> None:
    error = classify(ItemTooLarge("too big"))
    assert isinstance(error, PayloadTooLarge)
    assert error.status == 413 and error.param == "input"


@pytest.mark.parametrize("lost", [ActorDiedError(), WorkerCrashedError(), NodeDiedError("n")])
def test_a_replica_lost_past_the_retries_is_a_503_replica_unavailable(lost) -> None:
    error = classify(lost, retry_after_s=3)
    assert isinstance(error, Overloaded)
    assert (error.status, error.code) == (503, "replica_unavailable")
    assert error.headers == {"Retry-After": "3"}
