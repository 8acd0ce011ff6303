"""Every error leaves Chorus in one shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
from ray.exceptions import OutOfMemoryError as WorkerKilledForMemory
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("ray.serve.chorus.errors")

# A model replica (or its node) went away before answering: the item never finished. Sentence
# items are idempotent (same seed, same samples), so the ingress sends them again; once it
# stops retrying, the client hears "replica unavailable".
REPLICA_LOST = (
    RayActorError,
    WorkerCrashedError,
    NodeDiedError,
    ReplicaUnavailableError,
    WorkerKilledForMemory,
)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ChorusError(Exception):
    """An error with a status and a message that is safe to show the client."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or type(self).code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        """The body every error response has (also an SSE stream's `error` event)."""
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()


class SynthesisError(RuntimeError):
    """Raised by a model replica: one item failed in the engine; only its own request fails."""


class ItemTooLarge(SynthesisError):
    """Raised by a model replica: one item ran out of device memory even in a batch of its
    own, so it can never be synthesized there."""


def retry_after(seconds: float | None) -> dict[str, str]:
    """A Retry-After header: whole seconds (HTTP allows no fractions), at least 1."""
    wait = 1 if seconds is None else min(3600, max(1, math.ceil(seconds)))
    return {"Retry-After": str(wait)}


class BadRequest(ChorusError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(ChorusError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class Forbidden(ChorusError):
    status, type, code = 403, "permission_error", "forbidden"


class RateLimited(ChorusError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class NotFound(ChorusError):
    status, type, code = 404, "invalid_request_error", "not_found"


class PayloadTooLarge(ChorusError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnsupportedMediaType(ChorusError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class Overloaded(ChorusError):
    status, type, code = 503, "overloaded_error", "overloaded"


class DeadlineExceeded(ChorusError):
    status, type, code = 504, "timeout_error", "deadline_exceeded"


class SynthesisFailed(ChorusError):
    status, type, code = 500, "server_error", "synthesis_failed"


def error_response(
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def from_error(exc: ChorusError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.status, headers=exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def register_error_handlers(app: FastAPI) -> None:
    """All exception handlers, in one place."""

    @app.exception_handler(ChorusError)
    async def _chorus(request: Request, exc: ChorusError) -> JSONResponse:
        request.state.error_code = exc.code  # for the request counter's reason
        return from_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "no such route; see /docs for the API"
        return error_response(
            exc.status_code,
            message,
            type_,
            code=_HTTP_CODES.get(exc.status_code),
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        message, param = validation_message(first)
        return error_response(
            400, message, "invalid_request_error", param=param, code=first.get("type")
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # NOTE: never leak internals; the request id ties the client's report to the log.
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "server_error", code="internal_error")


def validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """Message and param for the first pydantic error of a request body."""
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if error.get("type") == "extra_forbidden":
        return f"unknown field {param!r}", param
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param


def as_chorus_error(exc: Exception, retry_after_s: float | None = None) -> ChorusError:
    """What the client is told about a failure while its sentences were being synthesized;
    `retry_after_s` is the server's estimate of when the queue will have room."""
    if isinstance(exc, ChorusError):
        return exc
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(f"speech {exc}")
    if isinstance(exc, BackPressureError):
        return Overloaded(
            "the model replicas' queues are full; retry shortly",
            headers=retry_after(retry_after_s),
        )
    if isinstance(exc, ItemTooLarge):
        return PayloadTooLarge(
            "a sentence of this input needs more model memory than a replica has; "
            "split it into shorter sentences",
            param="input",
            code="sentence_too_large",
        )
    if isinstance(exc, SynthesisError):
        return SynthesisFailed(f"synthesis failed: {exc.args[0] if exc.args else exc}")
    if isinstance(exc, REPLICA_LOST):
        return Overloaded(
            "a model replica became unavailable; retry shortly",
            code="replica_unavailable",
            headers=retry_after(retry_after_s),
        )
    logger.error("Unexpected failure during synthesis", exc_info=exc)
    return ChorusError("internal server error", code="internal_error")
