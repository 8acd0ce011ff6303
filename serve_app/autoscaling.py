"""Chorus's application-level autoscaling policy: model replicas follow the sentence items
queued and running, ingress replicas follow requests.

Why not Serve's default policy for the Synthesizer: it counts requests at the replicas and in
handle queues, but Chorus keeps waiting items in the ingress (where lanes and fair shares
decide who goes next) and lets only `items_in_flight` per model replica through. The replicas'
own count therefore stops at that cap whether ten or ten thousand items wait, and the default
policy cannot tell a busy deployment from a drowning one. The ingress reports everything
outstanding (`Ingress.record_autoscaling_stats`), and this policy sizes the Synthesizer on
that: `target_ongoing_requests` of its autoscaling_config reads as sentence items per model
replica, queued and running (about two batches).

In a serve config:

    applications:
      - name: chorus
        autoscaling_policy:
          policy_function: serve_app.autoscaling:scale_on_items
        deployments:
          - name: Synthesizer
            autoscaling_config: {min_replicas: 1, max_replicas: 8, target_ongoing_requests: 32}
          - name: Ingress
            autoscaling_config: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 128}

Serve applies each deployment's min/max, up/down delays and scaling factors to the numbers
returned here.
"""

from __future__ import annotations

from typing import Any

INGRESS, SYNTHESIZER = "Ingress", "Synthesizer"
ITEMS = "items"  # the metric Ingress.record_autoscaling_stats reports


def scale_on_items(contexts: dict[Any, Any]) -> tuple[dict[Any, float], dict[Any, dict]]:
    """Desired replicas per deployment (before Serve's bounds and delays)."""
    items = outstanding_items(contexts)
    decisions: dict[Any, float] = {}
    for deployment, ctx in contexts.items():
        target = ctx.config.get_target_ongoing_requests()
        if ctx.deployment_name == SYNTHESIZER and items is not None:
            decisions[deployment] = items / target
        else:  # Serve's own rule: requests at the replicas and queued at the callers
            decisions[deployment] = ctx.total_num_requests / target
    return decisions, {}


def outstanding_items(contexts: dict[Any, Any]) -> float | None:
    """Sentence items waiting or running, summed over ingress replicas (each averaged over
    the look-back window); None until an ingress replica has reported."""
    for ctx in contexts.values():
        if ctx.deployment_name == INGRESS:
            per_replica = (ctx.aggregated_metrics or {}).get(ITEMS) or {}
            return float(sum(per_replica.values())) if per_replica else None
    return None
