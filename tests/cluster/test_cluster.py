"""Chorus on a multi-node cluster (fake GPUs, fake engine): placement, autoscaling on queued
items, a replica killed under load, and `serve deploy` rollouts under load."""

from __future__ import annotations

import httpx
import pytest
import ray
from ray import serve

from load_tests.local import settled
from tests.cluster.conftest import (
    FakeCluster,
    ready,
    running_replicas,
    three_sentence_load,
    wait_for,
)

pytestmark = pytest.mark.timeout(240)

APP = {"fake_delay_s": 0.3, "items_in_flight": 4}


def synthesizer(replicas: int = 1, **options) -> dict:
    return {
        "name": "Synthesizer",
        "num_replicas": replicas,
        "ray_actor_options": {"num_cpus": 0},
        "user_config": {"max_batch_size": 2},
        **options,
    }


def replica_stats(count: int) -> dict[str, dict]:
    """`stats()` of `count` distinct running Synthesizer replicas, by replica id."""
    handle = serve.get_deployment_handle("Synthesizer", app_name="chorus")
    seen: dict[str, dict] = {}

    def collect() -> bool:
        for _ in range(4 * count):
            stats = handle.stats.remote().result(timeout_s=30)
            seen[stats["replica"]] = stats
        return len(seen) >= count

    wait_for(collect, 60, f"{count} replicas answering")
    return seen


def test_model_replicas_land_on_gpu_nodes_each_on_its_own_gpu(cluster: FakeCluster) -> None:
    gpu = synthesizer(4, ray_actor_options={"num_cpus": 0, "num_gpus": 1})
    cluster.deploy(APP, [gpu])
    wait_for(lambda: ready(cluster.url) and settled(4), 120, "four replicas")
    replicas = list(replica_stats(4).values())
    assert {s["node"] for s in replicas} == cluster.gpu_nodes
    assert {s["device"] for s in replicas} == {"cuda"}
    gpus = {(s["node"], tuple(s["gpu_ids"])) for s in replicas}
    assert len(gpus) == 4 and all(len(ids) == 1 for _, ids in gpus)


def test_model_replicas_scale_up_on_queued_items_and_back_down(cluster: FakeCluster) -> None:
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 4,  # sentence items per model replica, queued and running
        "upscale_delay_s": 1,
        "downscale_delay_s": 4,
        "look_back_period_s": 12,  # above the (deprecated) metrics_interval_s of 10
    }
    cluster.deploy(
        APP,
        [
            synthesizer(None, autoscaling_config=autoscaling),
            {"name": "Ingress", "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        ],
        autoscaling_policy={"policy_function": "serve_app.autoscaling:scale_on_items"},
    )
    wait_for(lambda: ready(cluster.url) and settled(1), 120, "one replica")
    with three_sentence_load(cluster.url, clients=12) as load:
        wait_for(lambda: running_replicas() >= 3, 90, "scale-up to 3+ replicas")
        # The ingress lets more items through once more replicas answer it.
        queue = wait_for(
            lambda: (q := httpx.get(f"{cluster.url}/v1/queue").json())["model_replicas"] >= 2 and q,
            30,
            "the ingress to see the new replicas",
        )
        answered = len(load.answers)
        load.wait_for_answers(answered + 12)
    assert queue["items"] > 0
    wait_for(lambda: running_replicas() == 1, 90, "scale-down to 1 replica")
    assert load.failures(sentences=3) == []
    assert {s["device"] for s in replica_stats(1).values()} == {"cpu"}  # no GPU asked for


def test_killing_a_model_replica_under_load_fails_no_request(cluster: FakeCluster) -> None:
    cluster.deploy({**APP, "fake_delay_s": 0.5}, [synthesizer(2)])
    wait_for(lambda: ready(cluster.url) and settled(2), 120, "two replicas")
    victim = next(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::chorus#Synthesizer")
    )
    with three_sentence_load(cluster.url, clients=8) as load:
        load.wait_for_answers(8)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = len(load.answers)
        load.wait_for_answers(killed_at + 16)
        wait_for(lambda: running_replicas() == 2, 60, "a replacement replica")
    assert load.failures(sentences=3) == []
    assert len(load.answers) >= killed_at + 16


@pytest.mark.front_door
def test_serve_deploy_under_load_applies_in_place_or_rolls_without_failures(
    cluster: FakeCluster,
) -> None:
    cluster.deploy(APP, [synthesizer(2)])
    wait_for(lambda: ready(cluster.url) and settled(2), 120, "two replicas")
    before = replica_stats(2)
    with three_sentence_load(cluster.url, clients=8) as load:
        load.wait_for_answers(8)
        # user_config: applied in place by reconfigure(), same replicas.
        cluster.deploy(APP, [synthesizer(2, user_config={"max_batch_size": 5})])
        wait_for(
            lambda: {s["max_batch_size"] for s in replica_stats(2).values()} == {5},
            60,
            "max_batch_size 5 on every replica",
        )
        in_place = replica_stats(2)
        # Resources and app args: every replica is replaced, a few at a time.
        rolled_options = {
            "ray_actor_options": {"num_cpus": 0.5},
            "user_config": {"max_batch_size": 5},
        }
        cluster.deploy({**APP, "sentence_pause_s": 0.05}, [synthesizer(2, **rolled_options)])
        wait_for(
            lambda: not set(replica_stats(2)) & set(before) and running_replicas() == 2,
            120,
            "new replicas",
        )
        rolled_at = len(load.answers)
        load.wait_for_answers(rolled_at + 8)
    assert set(in_place) == set(before)
    assert load.failures(sentences=3) == []
