"""Reading a request off the wire: who sent it (the client address, through trusted proxies),
and for speech the JSON body under a size cap, its validation, and its urgency (priority lane
and deadline, from the body or headers), as one `SpeechCall`. Every failure is a clear 4xx."""

import ipaddress
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import Headers

from serve_app.config import LANE_NAMES, AppConfig
from serve_app.deadline import Deadline
from serve_app.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from serve_app.http.responses import validation_message
from serve_app.protocol import MIN_DEADLINE_S, SpeechRequest
from serve_app.speech.context import SpeechCall


async def read_speech_call(request: Request, config: AppConfig) -> SpeechCall:
    """The speech request in `request`; its deadline starts now."""
    arrived = time.monotonic()
    body = parse_speech_request(await read_json_body(request, config.max_body_bytes))
    asked, seconds = urgency(body, request.headers, config)
    return SpeechCall(body, asked, Deadline(seconds, start=arrived))


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The request's JSON body, read with a size cap; every failure is a clear 4xx."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(
            f"send the body as application/json (got {content_type or 'no content type'!r})"
        )
    declared = request.headers.get("content-length")
    too_large = PayloadTooLarge(f"request body is larger than the limit of {max_bytes} bytes")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            code="invalid_json",
        ) from None


def parse_speech_request(data: Any) -> SpeechRequest:
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        return SpeechRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        message, param = validation_message(first)
        raise BadRequest(message, param=param, code=first.get("type")) from None


def urgency(req: SpeechRequest, headers: Any, config: AppConfig) -> tuple[str | None, float]:
    """The lane a request asks for (body `priority` or X-Chorus-Priority; None: its key's
    default) and its deadline in seconds (body `deadline_s` or X-Chorus-Deadline, else the
    server's default)."""
    asked = req.priority or headers.get("x-chorus-priority")
    if asked is not None and asked not in LANE_NAMES:
        raise BadRequest(
            f"unknown priority {asked[:32]!r}; use one of {', '.join(LANE_NAMES)}",
            param="priority",
            code="unknown_priority",
        )
    deadline = req.deadline_s
    if deadline is None and "x-chorus-deadline" in headers:
        try:
            deadline = float(headers["x-chorus-deadline"])
        except ValueError:
            deadline = -1.0
        if not MIN_DEADLINE_S <= deadline < float("inf"):
            raise BadRequest(
                f"X-Chorus-Deadline must be a number of seconds, at least {MIN_DEADLINE_S:g}",
                param="deadline_s",
                code="invalid_deadline",
            )
    deadline = deadline or config.request_timeout_s
    if deadline > config.max_deadline_s:
        raise BadRequest(
            f"deadline of {deadline:g} s is longer than this server's maximum of "
            f"{config.max_deadline_s:g} s",
            param="deadline_s",
            code="deadline_too_long",
        )
    return asked, deadline


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(
    request: Request,
    trusted: Sequence[Network],
    front_door: Callable[[IP], bool] | None = None,
) -> str | None:
    """The address of the client that sent `request`: the connection's peer, or, when the
    peer is a trusted proxy, the nearest address in its Forwarded / X-Forwarded-For chain
    that is not a trusted proxy. An IPv6 client is its /64 network (one host's addresses).

    From a peer that is Serve's own front door (`front_door(peer)`: an HAProxy that appends
    the address it saw to X-Forwarded-For, `http.front_door`), that last entry is the real
    peer, and the chain is what came before it."""
    peer = _ip(request.client.host if request.client else None)
    if peer is None:
        return None
    xff = None  # read only where it counts: most requests need neither header
    if front_door is not None and front_door(peer):
        xff = _x_forwarded_for(request.headers)
        if xff:
            peer = _ip(xff.pop()) or peer
    hop = peer
    if _trusted(hop, trusted):
        if xff is None:
            xff = _x_forwarded_for(request.headers)
        for entry in reversed(_forwarded_for(request.headers) or xff):
            address = _ip(entry)
            if address is None:
                break  # not an address ("unknown", obfuscated): the last proxy is the client
            hop = address
            if not _trusted(hop, trusted):
                break
    hop = getattr(hop, "ipv4_mapped", None) or hop
    if hop.version == 6:
        return str(ipaddress.ip_network(f"{hop}/64", strict=False))
    return str(hop)


def _forwarded_for(headers: Headers) -> list[str]:
    """The `for=` addresses of a `Forwarded` header (RFC 7239), first client first."""
    chain = []
    for element in ",".join(headers.getlist("forwarded")).split(","):
        for pair in element.split(";"):
            name, _, value = pair.strip().partition("=")
            if name.lower() == "for":
                chain.append(value.strip().strip('"'))
    return chain


def _x_forwarded_for(headers: Headers) -> list[str]:
    """The addresses of `X-Forwarded-For`, first client first."""
    xff = headers.getlist("x-forwarded-for")
    return [a.strip() for a in ",".join(xff).split(",") if a.strip()]


def _ip(text: str | None) -> IP | None:
    """An address from a header's node ("1.2.3.4", "1.2.3.4:80", "[::1]:80", "::1")."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: IP, trusted: Sequence[Network]) -> bool:
    address = getattr(address, "ipv4_mapped", None) or address
    return any(address in net for net in trusted if net.version == address.version)
