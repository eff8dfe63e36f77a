"""A Slack Web API test server for ``chat.postMessage``, written from Slack's public API documentation.

Faithful where dewy depends on the protocol:

- ``POST /api/chat.postMessage`` with an ``application/x-www-form-urlencoded`` body
  (token in the ``Authorization: Bearer`` header or the ``token`` field; ``attachments``
  as a JSON-encoded string) or an ``application/json`` body (token only in the header);
- answers are HTTP 200 with ``{"ok": true, "channel": ..., "ts": ..., "message": {...}}`` or
  ``{"ok": false, "error": CODE}``: ``not_authed`` (no token), ``invalid_auth`` (unknown
  token), ``missing_scope`` (token without ``chat:write``, with ``needed``/``provided``),
  ``channel_not_found``, ``not_in_channel``, ``no_text`` (neither text, attachments nor
  blocks), ``invalid_attachments``;
- rate limiting: HTTP 429 with ``Retry-After`` (seconds) and ``{"ok": false, "error": "ratelimited"}``.

Channels are known by ID (``C...``) or name (with or without ``#``); the bot may or may
not be a member. Every accepted message is recorded (``messages``); every request too
(``requests``), with its headers, so tests can check what was sent and that secrets were not.

Usage::

    with SlackServer(token="xoxb-test") as slack:
        env = {"SLACK_TOKEN": "xoxb-test", "SLACK_API_URL": slack.api_url}
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.loopback import LoopbackServer


@dataclass
class Channel:
    id: str
    name: str
    member: bool = True


@dataclass
class Request:
    """One request as the server saw it; header names are lower-case."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes


class SlackServer(LoopbackServer):
    """Slack's Web API on 127.0.0.1 (ephemeral port) in a background thread."""

    def __init__(self, token: str = "xoxb-test-token", scopes: tuple[str, ...] = ("chat:write",)) -> None:
        self.tokens: dict[str, tuple[str, ...]] = {token: scopes}
        self.channels: dict[str, Channel] = {}
        self.messages: list[dict[str, Any]] = []  # accepted chat.postMessage arguments, plus "channel_id", "answered_ts"
        self.requests: list[Request] = []
        self._limits: list[int] = []  # Retry-After of the next 429 answers
        self._ts = itertools.count(1)
        self._lock = threading.Lock()
        self._received = threading.Condition(self._lock)
        self.add_channel("C0DEPLOYS", "deploys")
        self._serve(_Handler, "slack-server")
        self.api_url = f"{self.origin}/api/"


    # Test controls -----------------------------------------------------------------

    def add_channel(self, channel_id: str, name: str, member: bool = True) -> None:
        self.channels[channel_id] = Channel(channel_id, name, member)

    def rate_limit_next(self, times: int = 1, retry_after: int = 1) -> None:
        """The next ``times`` calls get HTTP 429 with ``Retry-After: retry_after``."""
        with self._lock:
            self._limits.extend([retry_after] * times)

    def wait_for_messages(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        """Block until at least ``count`` messages were accepted; returns them all."""
        with self._received:
            if not self._received.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"slack got {len(self.messages)} messages within {timeout}s, expected {count}: "
                                     f"{[m.get('text') for m in self.messages]}")
            return list(self.messages)

    # Protocol ----------------------------------------------------------------------

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            if self._limits:
                retry_after = self._limits.pop(0)
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}
        if method != "POST" and method != "GET":
            return 405, {"ok": False, "error": "method_not_allowed"}, {}
        if path != "/api/chat.postMessage":
            return 404, {"ok": False, "error": "unknown_method", "req_method": path.rsplit("/", 1)[-1]}, {}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        args: dict[str, Any]
        if content_type == "application/json":
            try:
                args = json.loads(body or b"{}")
            except ValueError:
                return 200, {"ok": False, "error": "invalid_json"}, {}
            token = None  # "JSON-encoded bodies must supply the token in the Authorization header"
        else:
            args = dict(parse_qsl(body.decode(), keep_blank_values=True))
            token = args.pop("token", None)
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            token = auth[len("Bearer "):]
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if token not in self.tokens:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        scopes = self.tokens[token]
        if "chat:write" not in scopes:
            return 200, {"ok": False, "error": "missing_scope", "needed": "chat:write", "provided": ",".join(scopes)}, {}
        channel = self._channel(str(args.get("channel", "")))
        if channel is None:
            return 200, {"ok": False, "error": "channel_not_found"}, {}
        if not channel.member:
            return 200, {"ok": False, "error": "not_in_channel"}, {}
        attachments = args.get("attachments")
        if isinstance(attachments, str):
            try:
                attachments = json.loads(attachments)
            except ValueError:
                return 200, {"ok": False, "error": "invalid_attachments"}, {}
        if attachments is not None and not isinstance(attachments, list):
            return 200, {"ok": False, "error": "invalid_attachments"}, {}
        if not args.get("text") and not attachments and not args.get("blocks"):
            return 200, {"ok": False, "error": "no_text"}, {}
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        message = {"type": "message", "subtype": "bot_message", "text": args.get("text", ""), "ts": ts,
                   "bot_id": "B0DEWYBOT", "attachments": attachments or []}
        with self._received:
            self.messages.append({**args, "attachments": attachments or [], "channel_id": channel.id, "answered_ts": ts})
            self._received.notify_all()
        return 200, {"ok": True, "channel": channel.id, "ts": ts, "message": message}, {}

    def _channel(self, name: str) -> Channel | None:
        if name in self.channels:
            return self.channels[name]
        name = name.removeprefix("#")
        return next((c for c in self.channels.values() if c.name == name), None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        slack: SlackServer = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = urlsplit(self.path).path
        status, answer, extra = slack._handle(self.command, path, headers, body)
        with slack._lock:
            slack.requests.append(Request(self.command, self.path, status, headers, body))
        content = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is ``SlackServer.requests``."""
