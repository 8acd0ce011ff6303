"""Chorus's errors: plain exceptions that carry what a client is told (status, type, code,
param, a message safe to show, and when to retry), and why a request failed (`reason`, the
metrics label). No web framework here: the HTTP layer (`http.responses`) turns them into
responses, and a model replica raises its own failures without importing FastAPI."""

from __future__ import annotations

import math
from typing import Any


class ChorusError(Exception):
    """An error with a status and a message that is safe to show the client."""

    status = 500
    type = "server_error"
    code: str | None = "internal_error"
    reason = "internal"  # why the request failed, for metrics

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or type(self).code
        self.retry_after_s = retry_after_s
        self._headers = headers or {}

    @property
    def retry_after(self) -> int | None:
        """Whole seconds (HTTP allows no fractions), at least 1; None: not worth retrying."""
        if self.retry_after_s is None and self.status not in (429, 503):
            return None
        return retry_after(self.retry_after_s)

    @property
    def headers(self) -> dict[str, str]:
        wait = self.retry_after
        return self._headers if wait is None else {**self._headers, "Retry-After": str(wait)}

    def envelope(self) -> dict[str, Any]:
        """The body every error response has (also an SSE stream's `error` event)."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def retry_after(seconds: float | None) -> int:
    """A Retry-After value: whole seconds, at least 1 and at most an hour."""
    return 1 if seconds is None else min(3600, max(1, math.ceil(seconds)))


class BadRequest(ChorusError):
    status, type, code, reason = 400, "invalid_request_error", "invalid_request", "bad_input"


class Unauthorized(ChorusError):
    status, type, code, reason = 401, "invalid_request_error", "invalid_api_key", "auth"


class Forbidden(ChorusError):
    status, type, code, reason = 403, "permission_error", "forbidden", "auth"


class NotFound(ChorusError):
    status, type, code, reason = 404, "invalid_request_error", "not_found", "not_found"


class MethodNotAllowed(ChorusError):
    status, type, code, reason = 405, "invalid_request_error", "method_not_allowed", "bad_input"


class PayloadTooLarge(ChorusError):
    status, type, code, reason = 413, "invalid_request_error", "request_too_large", "bad_input"


class UnsupportedMediaType(ChorusError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"
    reason = "bad_input"


class RateLimited(ChorusError):
    status, type, code, reason = 429, "rate_limit_error", "rate_limit_exceeded", "rate_limit"


class Overloaded(ChorusError):
    status, type, code, reason = 503, "overloaded_error", "overloaded", "overload"


class ReplicaUnavailable(Overloaded):
    code = reason = "replica_unavailable"


class DeadlineExceeded(ChorusError):
    status, type, code, reason = 504, "timeout_error", "deadline_exceeded", "deadline"


class SynthesisFailed(ChorusError):
    status, type, code, reason = 500, "server_error", "synthesis_failed", "synthesis_failed"


class SynthesisError(RuntimeError):
    """Raised by a model replica: one item failed in the engine; only its own request fails."""


class ItemTooLarge(SynthesisError):
    """Raised by a model replica: one item ran out of device memory even in a batch of its
    own, so it can never be synthesized there."""
