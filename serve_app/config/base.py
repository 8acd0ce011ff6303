"""What every part of the configuration shares: strict models (a typo names the closest
known key), the id pattern, the priority lanes."""

from __future__ import annotations

import difflib
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, model_validator

VOICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

# Priority lanes, most urgent first. Under contention interactive work goes first; batch work
# keeps a guaranteed share of model time (batch_lane_share), so it never starves.
Lane = Literal["interactive", "batch"]
LANE_NAMES: tuple[str, ...] = get_args(Lane)


class _Strict(BaseModel):
    """Base model that refuses unknown keys, naming the closest known one: a typo in a serve
    config fails the deploy instead of silently running with a default."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if isinstance(key, str) and key not in known:
                    close = difflib.get_close_matches(key, sorted(known), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ValueError(
                        f"unknown {cls.__name__} key {key!r}{hint}; known keys: "
                        f"{', '.join(sorted(known))}"
                    )
        return data
