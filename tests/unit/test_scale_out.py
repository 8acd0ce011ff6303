"""Scale-out logic without a cluster: retrying items whose replica died, counting replicas,
the autoscaling policy's arithmetic, and telling an out-of-memory error apart."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ray.exceptions import ActorDiedError, NodeDiedError, WorkerCrashedError
from ray.serve.config import AutoscalingConfig

from serve_app.autoscaling import scale_on_items
from serve_app.errors import ItemTooLarge, Overloaded, PayloadTooLarge, classify
from serve_app.model.engines.base import Synthesized
from serve_app.model.replicas import ModelReplicas
from serve_app.model.synthesizer import is_out_of_memory
from tests.fakes import Clock, Handle, item

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
    task = asyncio.create_task(ModelReplicas(Handle(lambda _: call)).send(item(5)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.cancelled


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
