"""API keys and their limits (`key_limits`, `open_limits`, `api_keys` of the app's args)."""

from __future__ import annotations

import hashlib

from pydantic import Field, model_validator

from serve_app.config.base import LANE_NAMES, VOICE_ID_PATTERN, Lane, _Strict


class Limits(_Strict):
    """What one API key may do. A limit set to null is off."""

    requests_per_s: float | None = Field(
        5.0, gt=0, description="Sustained speech requests per second (token bucket)."
    )
    requests_burst: int = Field(20, ge=1, description="Requests allowed at once after a pause.")
    chars_per_s: float | None = Field(
        2000.0, gt=0, description="Sustained input characters per second (token bucket)."
    )
    chars_burst: int = Field(
        16384, ge=1, description="Characters allowed at once; at least max_input_chars."
    )
    max_concurrent: int | None = Field(
        16, ge=1, description="Speech requests (streams included) in progress at once."
    )

    @property
    def on(self) -> bool:
        """Whether any limit is set."""
        return any(
            v is not None for v in (self.requests_per_s, self.chars_per_s, self.max_concurrent)
        )


UNLIMITED = {"requests_per_s": None, "chars_per_s": None, "max_concurrent": None}


class ApiKey(_Strict):
    """One API key. Give its SHA-256 (`python -m serve_app.clients new` makes a key and its
    hash); a plain `key` is hashed when the config is read and never kept."""

    name: str = Field(
        pattern=VOICE_ID_PATTERN, description="Who holds it; logs and metrics show this name."
    )
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of key.")
    key: str | None = Field(None, min_length=16, repr=False, description="The key itself.")
    lanes: list[Lane] = Field(
        default_factory=lambda: list(LANE_NAMES), min_length=1, description="Lanes it may use."
    )
    default_lane: Lane | None = Field(None, description="Its lane when a request names none.")
    weight: float = Field(
        1.0, gt=0, le=1000, description="Its share of model time against other busy keys."
    )
    limits: Limits | None = Field(None, description="Its own limits instead of key_limits.")

    @model_validator(mode="after")
    def _hash_it(self) -> ApiKey:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError(f"API key {self.name!r}: give exactly one of 'sha256' or 'key'")
        if self.key is not None:
            self.sha256, self.key = hash_key(self.key), None
        if self.default_lane is not None and self.default_lane not in self.lanes:
            raise ValueError(f"API key {self.name!r}: default_lane is not one of its lanes")
        return self


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
