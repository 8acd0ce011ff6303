"""App arguments are validated with clear messages; unknown keys are warned about."""

from __future__ import annotations

import logging

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from serve_app.config import OPENAI_VOICES, AppConfig, SynthesizerUserConfig, parse_app_args
from serve_app.local import SERVE_CONFIG

pytestmark = pytest.mark.timeout(30)


def test_defaults_serve_the_packaged_voice_under_openai_names() -> None:
    config = parse_app_args({})
    assert [v.id for v in config.voices] == ["en_US-joe-medium"]
    assert set(config.voice_aliases) == set(OPENAI_VOICES)
    model, cfg = config.voices[0].resolve()
    assert model.is_file() and cfg.is_file()


def test_unknown_keys_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ray.serve.chorus.config"):
        config = AppConfig.model_validate({"max_input_chars": 100, "max_imput_chars": 5})
    assert config.max_input_chars == 100
    assert "max_imput_chars" in caplog.text


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
