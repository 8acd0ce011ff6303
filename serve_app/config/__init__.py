"""Chorus's configuration, validated and documented, by concern:

- `args`: the app's arguments (the `args:` block of a serve config), `AppConfig`;
- `keys`: API keys and their limits;
- `replica`: the model replica's `user_config`, applied in place by `serve deploy`;
- `node`: the environment (the one place the app reads environment variables) and logging;
- `base`: what they share (strict models, the id pattern, the priority lanes).

Every public name is importable from here.
"""

from serve_app.config.args import (
    DEFAULT_VOICE_ID,
    OPENAI_VOICES,
    AppConfig,
    VoiceSource,
    parse_app_args,
)
from serve_app.config.base import LANE_NAMES, VOICE_ID_PATTERN, Lane
from serve_app.config.keys import UNLIMITED, ApiKey, Limits, hash_key
from serve_app.config.node import (
    CHORUS_HAPROXY,
    HAPROXY_BINARY,
    HAPROXY_SWITCH,
    NODE_SETTINGS,
    TRAVELS,
    FrontDoorKind,
    calls_over_grpc,
    configure_logging,
    env,
    front_door,
    haproxy_adds_peer,
    unset_node_settings,
)
from serve_app.config.replica import SynthesizerUserConfig

__all__ = [
    "CHORUS_HAPROXY",
    "DEFAULT_VOICE_ID",
    "HAPROXY_BINARY",
    "HAPROXY_SWITCH",
    "LANE_NAMES",
    "NODE_SETTINGS",
    "OPENAI_VOICES",
    "TRAVELS",
    "UNLIMITED",
    "VOICE_ID_PATTERN",
    "ApiKey",
    "AppConfig",
    "FrontDoorKind",
    "Lane",
    "Limits",
    "SynthesizerUserConfig",
    "VoiceSource",
    "calls_over_grpc",
    "configure_logging",
    "env",
    "front_door",
    "hash_key",
    "haproxy_adds_peer",
    "parse_app_args",
    "unset_node_settings",
]
