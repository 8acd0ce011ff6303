"""App arguments are validated with clear messages; a typo refuses to deploy."""

from __future__ import annotations

import importlib

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from load_tests.local import SERVE_CONFIG
from serve_app.config import OPENAI_VOICES, AppConfig, SynthesizerUserConfig, parse_app_args

pytestmark = pytest.mark.timeout(30)


def test_defaults_serve_the_packaged_voice_under_openai_names() -> None:
    config = parse_app_args({})
    assert [v.id for v in config.voices] == ["en_US-joe-medium"]
    assert config.aliases == dict.fromkeys(OPENAI_VOICES, "en_US-joe-medium")
    model, cfg = config.voices[0].resolve()
    assert model.is_file() and cfg.is_file()


@pytest.mark.parametrize(
    ("model", "args", "hint"),
    [
        (AppConfig, {"max_input_chars": 100, "max_imput_chars": 5}, "'max_input_chars'"),
        (AppConfig, {"voices": [{"id": "a", "packgae": "x"}]}, "'package'"),
        (AppConfig, {"key_limits": {"requests_per_sec": 1}}, "'requests_per_s'"),
        (SynthesizerUserConfig, {"max_batch_sise": 8}, "'max_batch_size'"),
    ],
)
def test_a_typo_is_refused_with_the_key_it_meant(model: type, args: dict, hint: str) -> None:
    with pytest.raises(ValidationError, match=f"did you mean {hint}"):
        model.model_validate(args)


def test_voice_aliases_add_to_the_openai_names_unless_told_to_replace_them() -> None:
    two = [{"id": "a", "package": "x"}, {"id": "b", "package": "y"}]
    added = parse_app_args({"voices": two, "voice_aliases": {"onyx": "b", "narrator": "b"}})
    assert added.aliases["alloy"] == "a" and added.aliases["onyx"] == "b"
    assert added.aliases["narrator"] == "b" and len(added.aliases) == len(OPENAI_VOICES) + 1
    only = parse_app_args({"voices": two, "voice_aliases": {"x": "b"}, "openai_voice_names": False})
    assert only.aliases == {"x": "b"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"voices": [{"id": "a", "package": "x", "model_path": "/y.onnx"}]}, "exactly one"),
        ({"voices": [{"id": "../evil", "package": "x"}]}, "pattern"),
        ({"voice_aliases": {"alloy": "nobody"}}, "unknown voice"),
        ({"max_input_chars": 0}, "greater than or equal"),
    ],
)
def test_bad_args_fail_clearly(args: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_app_args(args)


def test_user_config_bounds() -> None:
    assert SynthesizerUserConfig.model_validate({"max_batch_size": 8}).max_batch_size == 8
    with pytest.raises(ValidationError):
        SynthesizerUserConfig.model_validate({"max_batch_size": 0})


def test_serve_config_is_valid_and_its_args_parse() -> None:
    raw = yaml.safe_load(SERVE_CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "serve_app.app:build_app"
    assert schema.http_options.host == "127.0.0.1"
    parse_app_args(app.args)
    synth = next(d for d in app.deployments if d.name == "Synthesizer")
    SynthesizerUserConfig.model_validate(synth.user_config)
    assert synth.max_ongoing_requests >= synth.user_config["max_batch_size"]


DEPLOY = SERVE_CONFIG.parent


def cluster_configs() -> list[tuple[str, dict]]:
    gpu = yaml.safe_load((DEPLOY / "serve_config.gpu.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "kuberay" / "rayservice.yaml").read_text())
    return [("gpu", gpu), ("kuberay", yaml.safe_load(service["spec"]["serveConfigV2"]))]


@pytest.mark.parametrize(
    ("name", "raw"), cluster_configs(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_cluster_configs_are_valid_and_consistent(name: str, raw: dict) -> None:
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    parse_app_args(app.args)
    # The policy that scales on queued items is importable, and every deployment autoscales.
    policy = app.autoscaling_policy["policy_function"]
    module, function = policy.split(":")
    assert callable(getattr(importlib.import_module(module), function))
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"Ingress", "Synthesizer"}
    ingress, synth = deployments["Ingress"], deployments["Synthesizer"]
    assert all(d.autoscaling_config for d in deployments.values())
    SynthesizerUserConfig.model_validate(synth.user_config)
    # Model replicas ask for a GPU; the ingress never does.
    assert synth.ray_actor_options.num_gpus > 0
    assert not ingress.ray_actor_options.num_gpus
    # Every ingress replica may keep items_in_flight at each model replica.
    in_flight = app.args["items_in_flight"] * ingress.autoscaling_config["max_replicas"]
    assert synth.max_ongoing_requests >= in_flight
    targets = synth.autoscaling_config["target_ongoing_requests"]
    assert targets >= app.args["items_in_flight"] >= synth.user_config["max_batch_size"]


def test_the_kuberay_service_serves_the_gpu_config() -> None:
    (_, gpu), (_, service) = cluster_configs()
    assert service == gpu
