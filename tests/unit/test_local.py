"""The main job's start-up on one machine (`serve_app.local`) and the node settings check."""

from __future__ import annotations

import os

import pytest
import yaml

from serve_app import local
from serve_app.config import NODE_SETTINGS, unset_node_settings

pytestmark = pytest.mark.timeout(30)


def test_the_address_comes_from_the_environment_or_the_config_is_used_as_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CHORUS_HTTP_HOST", raising=False)
    monkeypatch.delenv("CHORUS_HTTP_PORT", raising=False)
    assert local.with_address(local.DEFAULT_CONFIG) == local.DEFAULT_CONFIG
    monkeypatch.setenv("CHORUS_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("CHORUS_HTTP_PORT", "8123")
    copy = local.with_address(local.DEFAULT_CONFIG)
    try:
        with open(copy) as f:
            raw = yaml.safe_load(f)
        with open(local.DEFAULT_CONFIG) as f:
            original = yaml.safe_load(f)
        assert raw["http_options"] == {**original["http_options"], "host": "0.0.0.0", "port": 8123}
        assert raw["applications"] == original["applications"]  # nothing else changes
    finally:
        os.unlink(copy)


def test_each_missing_node_setting_is_named_with_its_value_and_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, (value, _) in NODE_SETTINGS.items():
        monkeypatch.setenv(name, value)
    assert unset_node_settings() == []
    monkeypatch.delenv("FORWARDED_ALLOW_IPS")
    (warning,) = unset_node_settings()
    assert warning.startswith("FORWARDED_ALLOW_IPS is not set (want '')") and "proxy" in warning
    # The HAProxy binary matters only behind HAProxy.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "")
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH")
    (warning,) = unset_node_settings()
    assert warning.startswith("RAY_SERVE_HAPROXY_BINARY_PATH is not set")
    assert "chorus-haproxy" in warning
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    assert unset_node_settings() == []
