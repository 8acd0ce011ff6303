"""What a cluster is given, checked the way the cluster checks it, and stricter: every
RayService and PodMonitor under deploy/ against the upstream CRD schema (vendored in
tests/schemas, versions named there) with unknown fields refused; every Serve config (the
YAML files and each RayService's serveConfigV2) key by key against Ray Serve's own models,
which accept unknown keys (a `max_replica` typo would pass them and be ignored)."""

from __future__ import annotations

import json
import lzma
import shlex
import typing
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel
from ray.runtime_env import RuntimeEnv
from ray.serve.config import AutoscalingPolicy
from ray.serve.schema import ServeDeploySchema

from serve_app.config import (
    HAPROXY_BINARY,
    HAPROXY_SWITCH,
    NODE_SETTINGS,
    TRAVELS,
    AppConfig,
    SynthesizerUserConfig,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = ROOT / "tests" / "schemas"
CRDS = {  # (apiVersion, kind) -> vendored schema
    ("ray.io/v1", "RayService"): "kuberay-v1.7.0-rayservice.json.xz",
    ("monitoring.coreos.com/v1", "PodMonitor"): "prometheus-operator-v0.93.0-podmonitor.json.xz",
}
# In KubeRay v1.7.0's schema still, but "not used anymore" (rayservice_types.go; kuberay#1685).
DEPRECATED = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it lists the known ones (Kubernetes
    would drop them silently: pruning)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_schema(name: str) -> dict:
    return strict(json.loads(lzma.decompress((SCHEMAS / name).read_bytes())))


def manifests() -> list[tuple[str, dict]]:
    """Every Kubernetes object in deploy/ (any YAML document with apiVersion and kind)."""
    found = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and {"apiVersion", "kind"} <= set(doc):
                found.append((f"{path.relative_to(ROOT)}:{doc['kind']}", doc))
    return found


def serve_configs() -> list[tuple[str, dict]]:
    configs = [
        (str(p.relative_to(ROOT)), yaml.safe_load(p.read_text()))
        for p in DEPLOY.glob("serve_config*.yaml")
    ]
    for name, doc in manifests():
        if doc["kind"] == "RayService":
            configs.append((f"{name}.serveConfigV2", yaml.safe_load(doc["spec"]["serveConfigV2"])))
    return configs


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation allows (through Optional, Union, List, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in models_in(arg)]


# Fields Ray types as plain dicts, and what Ray (or Chorus) makes of them.
DICT_FIELDS: dict[str, type[BaseModel] | set[str]] = {
    "args": AppConfig,
    "user_config": SynthesizerUserConfig,
    "autoscaling_policy": AutoscalingPolicy,
    "runtime_env": set(RuntimeEnv.known_fields),
}


def unknown_keys(model: type[BaseModel], data: dict, path: str) -> list[str]:
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    problems = []
    for key, value in data.items():
        where = f"{path}.{key}"
        if key not in fields:
            problems.append(where)
            continue
        known = DICT_FIELDS.get(key) or next(iter(models_in(fields[key].annotation)), None)
        if isinstance(known, set):
            problems += [f"{where}.{k}" for k in value if k not in known]
        elif known is not None:
            for n, part in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(part, dict):
                    problems += unknown_keys(
                        known, part, f"{where}[{n}]" if isinstance(value, list) else where
                    )
    return problems


def test_every_manifest_has_a_vendored_schema_and_there_are_some() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in manifests()}
    assert kinds == set(CRDS), kinds


@pytest.mark.parametrize(
    ("name", "doc"), manifests(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_manifest_validates_against_its_crd_with_unknown_fields_refused(
    name: str, doc: dict
) -> None:
    schema = crd_schema(CRDS[(doc["apiVersion"], doc["kind"])])
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_the_strict_schema_refuses_a_typo_and_the_deprecated_fields() -> None:
    (_, service), *_ = [(n, d) for n, d in manifests() if d["kind"] == "RayService"]
    schema = crd_schema(CRDS[("ray.io/v1", "RayService")])
    typo = {**service, "spec": {**service["spec"], "serveConfigv2": "x"}}
    assert not jsonschema.Draft7Validator(schema).is_valid(typo)
    assert not DEPRECATED & set(service["spec"])


def test_the_operator_can_reach_the_dashboard_and_only_with_a_token() -> None:
    for _, doc in manifests():
        if doc["kind"] != "RayService":
            continue
        cluster = doc["spec"]["rayClusterConfig"]
        head = cluster["headGroupSpec"]["rayStartParams"]
        # KubeRay applies serveConfigV2 through the head Service: localhost would stop it.
        assert head.get("dashboard-host", "0.0.0.0") == "0.0.0.0"
        assert cluster["authOptions"]["mode"] == "token"


@pytest.mark.parametrize(
    ("name", "raw"), serve_configs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_serve_config_has_only_keys_ray_serve_and_chorus_know(name: str, raw: dict) -> None:
    ServeDeploySchema.model_validate(raw)
    assert unknown_keys(ServeDeploySchema, raw, "") == []


def test_the_key_check_finds_a_typo_at_any_depth() -> None:
    _, raw = serve_configs()[0]
    app = raw["applications"][0]
    typo = {
        **raw,
        "applications": [{**app, "deployments": [{"name": "Ingress", "max_replica": 2}]}],
    }
    assert unknown_keys(ServeDeploySchema, typo, "") == [
        ".applications[0].deployments[0].max_replica"
    ]
    env = {**raw, "applications": [{**app, "runtime_env": {"env_var": {}}}]}
    assert unknown_keys(ServeDeploySchema, env, "") == [".applications[0].runtime_env.env_var"]


@pytest.mark.parametrize(
    ("name", "raw"), serve_configs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_the_settings_that_can_travel_with_the_app_do(name: str, raw: dict) -> None:
    for app in raw["applications"]:
        env = app["runtime_env"]["env_vars"]
        assert {k: env.get(k) for k in TRAVELS} == {k: NODE_SETTINGS[k][0] for k in TRAVELS}


def test_the_image_sets_every_node_setting_and_links_the_haproxy_it_names() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in dockerfile.splitlines():
        if line.startswith("ENV "):
            env |= dict(pair.split("=", 1) for pair in shlex.split(line[4:]))
    assert set(NODE_SETTINGS) <= set(env), set(NODE_SETTINGS) - set(env)
    for name in (*TRAVELS, "FORWARDED_ALLOW_IPS", HAPROXY_SWITCH):
        assert env[name] == NODE_SETTINGS[name][0], name
    linked = env[HAPROXY_BINARY]
    assert Path(linked).name == "chorus-haproxy"
    workdir = next(ln.split()[1] for ln in dockerfile.splitlines() if ln.startswith("WORKDIR"))
    assert f'ln -s "$(command -v chorus-haproxy)" {Path(linked).relative_to(workdir)}' in dockerfile
