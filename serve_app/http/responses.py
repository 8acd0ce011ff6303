"""The HTTP adapter for Chorus's errors: every failure leaves as the one envelope
{"error": {"message", "type", "param", "code"}} with its status and headers, and every request
is counted by route, status and the error's own reason. Handlers are registered in one place."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import (
    BadRequest,
    ChorusError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)

if TYPE_CHECKING:
    from serve_app.metrics import IngressMetrics

logger = logging.getLogger("ray.serve.chorus.http")

_BY_STATUS: dict[int, type[ChorusError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def error_response(error: ChorusError, request: Request | None = None) -> JSONResponse:
    """The response for `error`; noted on the request for the request counter."""
    if request is not None:
        request.state.error_reason = error.reason
    return JSONResponse(error.envelope(), status_code=error.status, headers=error.headers)


def register_error_handlers(app: FastAPI) -> None:
    """All exception handlers, in one place."""

    @app.exception_handler(ChorusError)
    async def _chorus(request: Request, exc: ChorusError) -> JSONResponse:
        return error_response(exc, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "no such route; see /docs for the API"
        error = _BY_STATUS.get(exc.status_code, ChorusError)(
            message, headers=dict(exc.headers or {})
        )
        if exc.status_code not in _BY_STATUS:  # a status Chorus never raises itself
            error.status, error.code = exc.status_code, None
            error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(error, request)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        message, param = validation_message(first)
        return error_response(BadRequest(message, param=param, code=first.get("type")), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # NOTE: never leak internals; the request id ties the client's report to the log.
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(ChorusError("internal server error"), request)


def validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """Message and param for the first pydantic error of a request body."""
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if error.get("type") == "extra_forbidden":
        return f"unknown field {param!r}", param
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param


class CountRequests:
    """Counts every HTTP request by route, status and reason (pure ASGI: streams untouched).

    The reason is the error's own (noted by `error_response`); "ok" below 400, "client_gone"
    when the client left before any answer (nginx's 499), "internal" otherwise."""

    def __init__(self, app: Any, metrics: IngressMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status, started = 500, False  # 500 if the app fails before it answers

        async def send_and_note(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:
            if not started:
                status = 499
            raise
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            noted = scope.get("state", {}).get("error_reason")
            reason = "ok" if status < 400 else noted or _UNNOTED.get(status, "internal")
            self.metrics.requests.inc(
                1, tags={"route": route, "status": str(status), "reason": reason}
            )
        return None


_UNNOTED = {499: "client_gone"}
