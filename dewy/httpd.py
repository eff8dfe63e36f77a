"""The small HTTP/1.1 server under dewy's own endpoints: the admin API and the webhook.

One request per connection (``Connection: close``), on the daemon's asyncio loop, bounded
everywhere a client could hold dewy: the request head by size and by a deadline, the body
by its announced ``Content-Length`` (refused with 413 before a byte of it is read) and by
a second deadline, and the connections open at once by a count (the rest get 503 at
once). No chunked bodies: what posts to dewy (GitHub, CI, a reverse proxy) sends a length.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

MAX_HEAD = 8192
HEAD_TIMEOUT = 10.0  # from accepting the connection to the end of the request head
BODY_TIMEOUT = 10.0  # from the end of the head to the last byte of the body
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 16


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    peer: str  # the client's address, for log lines

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "application/json"


def json_response(status: HTTPStatus, body: Any) -> Response:
    return Response(status, json.dumps(body, indent=2).encode() + b"\n")


class Refused(Exception):
    """A request answered before it reached its handler (too large, too slow, malformed)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Limits:
    max_head: int = MAX_HEAD
    max_body: int = 0  # 0: requests carry no body (GET only)
    head_timeout: float = HEAD_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


async def read_request(reader: asyncio.StreamReader, limits: Limits, peer: str = "") -> Request:
    """One request, or Refused naming what is wrong with it (the status to answer with)."""
    try:
        async with asyncio.timeout(limits.head_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
    except TimeoutError:
        raise Refused(HTTPStatus.REQUEST_TIMEOUT, f"no complete request head within {limits.head_timeout:g}s") from None
    except asyncio.LimitOverrunError:
        raise Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large") from None
    if len(head) > limits.max_head:
        raise Refused(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise Refused(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, _ = parts
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "transfer-encoding" in headers:
        raise Refused(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted: send Content-Length")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise Refused(HTTPStatus.BAD_REQUEST, "malformed Content-Length")
    length = int(length_text)
    if length > limits.max_body:
        raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes refused (at most {limits.max_body})")
    body = b""
    if length:
        try:
            async with asyncio.timeout(limits.body_timeout):
                body = await reader.readexactly(length)
        except TimeoutError:
            raise Refused(HTTPStatus.REQUEST_TIMEOUT, f"body not received within {limits.body_timeout:g}s") from None
    return Request(method, target, headers, body, peer)


class Server:
    """Serves ``handler`` on one address; a refused request is answered here and told to ``refused`` (to log it)."""

    def __init__(self, handler: Handler, limits: Limits, refused: Callable[[str, Refused], None] | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.refused = refused
        self.server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(limits.max_connections)

    @property
    def full(self) -> bool:
        """Every connection slot is taken: the next connection is answered 503."""
        return self._slots.locked()

    async def start(self, host: str, port: int) -> None:
        """Listen; OSError if the address cannot be bound (:func:`bind_error` says it in a few words)."""
        self.server = await asyncio.start_server(self._connection, host, port, limit=self.limits.max_head)

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        try:
            if self.full:
                await _write(writer, json_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many connections"}))
                return
            async with self._slots:
                await _write(writer, await self._answer(reader, peer))
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, peer: str) -> Response:
        try:
            request = await read_request(reader, self.limits, peer)
        except Refused as exc:
            if self.refused:
                self.refused(peer, exc)
            return json_response(exc.status, {"error": str(exc)})
        return await self.handler(request)


async def _write(writer: asyncio.StreamWriter, response: Response) -> None:
    head = (f"HTTP/1.1 {response.status.value} {response.status.phrase}\r\nContent-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + response.body)
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "?"


def bind_error(exc: OSError) -> str:
    """Why an address cannot be bound, in a few words ("Address already in use"): asyncio's strerror repeats
    the address the caller names anyway."""
    return os.strerror(exc.errno) if exc.errno else str(exc)
