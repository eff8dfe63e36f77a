"""``--webhook HOST:PORT``: a push asks for a poll now instead of at the next interval.

Two endpoints, both authenticated with one secret, ``$DEWY_WEBHOOK_SECRET`` (a systemd
credential or the environment file, never a flag):

- ``POST /github``: GitHub's webhook deliveries, signed ``X-Hub-Signature-256:
  sha256=HMAC(secret, body)``. A ``release`` event polls now, ``ping`` is answered, other
  events are acknowledged and ignored.
- ``POST /deploy``: anything else that knows of a new release (CI, an object store's event
  notification through a relay), with ``Authorization: Bearer SECRET`` or the same
  signature header over its body. The body is not read for a version: the registry
  still says what is newest, so a forged or stale event can at most cause a poll.

A valid request only sets the daemon's ``poll_now`` event, at most once a second: a flood
of them coalesces into a poll at once and one at the end of each second it lasts. Every request is authenticated, so the endpoint may
listen off loopback behind the operator's reverse proxy. Bodies, time and connections
are bounded by :mod:`dewy.httpd`. If the address cannot be bound, polling goes on and the
webhook is tried again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from http import HTTPStatus

from dewy import log
from dewy.errors import UsageError
from dewy.httpd import Limits, Refused, Request, Response, Server, json_response
from dewy.settings import Settings

SECRET_VARIABLE = "DEWY_WEBHOOK_SECRET"
MAX_BODY = 1 << 20  # GitHub release events are a few kB (25 MB is GitHub's cap for any event)
RETRY_BIND = 30.0
COALESCE = 1.0  # at most one poll a second from pushes; one more at the end of a burst
SIGNATURE = "x-hub-signature-256"


class Webhook:
    def __init__(self, host: str, port: int, secret: str, limits: Limits | None = None) -> None:
        self.host = host
        self.port = port
        self.secret = secret.encode()
        self.server = Server(self._answer, limits or Limits(max_body=MAX_BODY), self._refused)
        self.poll_now: asyncio.Event | None = None
        self._last = -COALESCE  # loop time poll_now was last set
        self._trailing: asyncio.TimerHandle | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Webhook:
        """UsageError (exit 2) without a secret: the endpoint is never open to anyone."""
        secret = os.environ.get(SECRET_VARIABLE) or ""
        if not secret.strip():
            raise UsageError(f"the webhook needs a secret: set {SECRET_VARIABLE} (a systemd credential or the environment "
                             "file); GitHub signs with it, POST /deploy sends it as a Bearer token")
        host, port = settings.webhook
        return cls(host, port, secret)

    async def run(self, poll_now: asyncio.Event) -> None:
        """Serve until cancelled; while the address cannot be bound, say so once and try again."""
        self.poll_now = poll_now
        failed = None
        while True:
            try:
                await self.server.start(self.host, self.port)
                break
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's strerror repeats the address
                if reason != failed:
                    log.error("webhook-failed", f"no webhook: cannot listen on {self.address}: {reason}; polling "
                              f"goes on, trying again every {RETRY_BIND:g}s")
                    failed = reason
            await asyncio.sleep(RETRY_BIND)
        log.info("webhook", f"webhook on http://{self.address} (POST /github, POST /deploy)", port=self.server.port)
        try:
            await asyncio.Future()
        finally:
            if self._trailing:
                self._trailing.cancel()
            await self.server.close()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def _answer(self, request: Request) -> Response:
        if request.path not in ("/github", "/deploy"):
            return json_response(HTTPStatus.NOT_FOUND, {"error": "POST /github or /deploy"})
        if request.method != "POST":
            return json_response(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only POST"})
        refusal = self._unauthenticated(request)
        if refusal:
            log.warning("webhook-refused", f"{request.method} {request.path} from {request.peer}: {refusal}; answered 401",
                        peer=request.peer, path=request.path)
            return json_response(HTTPStatus.UNAUTHORIZED, {"error": refusal})
        if request.path == "/deploy":
            return self._poll(f"POST /deploy from {request.peer}")
        event = request.headers.get("x-github-event", "")
        if event == "ping":
            return json_response(HTTPStatus.OK, {"ok": "pong"})
        if event != "release":
            log.debug("webhook", f"GitHub {event or 'unnamed'} event ignored: only release events poll", github_event=event)
            return json_response(HTTPStatus.OK, {"ignored": f"{event or 'unnamed'} event"})
        try:
            payload = json.loads(request.body)
            action, tag = str(payload.get("action", "?")), str((payload.get("release") or {}).get("tag_name", "?"))
        except (ValueError, AttributeError):
            return json_response(HTTPStatus.BAD_REQUEST, {"error": "a release event's body is a JSON object"})
        return self._poll(f"GitHub release event ({action} {tag[:100]})")

    def _unauthenticated(self, request: Request) -> str | None:
        """Why the request is not from the secret's holder, or None."""
        signature = request.headers.get(SIGNATURE)
        if signature is not None:
            expected = "sha256=" + hmac.new(self.secret, request.body, hashlib.sha256).hexdigest()
            return None if hmac.compare_digest(signature.encode(), expected.encode()) else \
                f"the {SIGNATURE} signature does not match the body and {SECRET_VARIABLE}"
        if request.path == "/deploy":
            if hmac.compare_digest(request.headers.get("authorization", "").encode(), b"Bearer " + self.secret):
                return None
            return f"send Authorization: Bearer ${SECRET_VARIABLE} or an {SIGNATURE} signature"
        return f"no {SIGNATURE} signature: set the webhook's secret on GitHub to {SECRET_VARIABLE}"

    def _poll(self, what: str) -> Response:
        """Wake the daemon now, or, within a second of the last wake-up, once at the end of that second."""
        loop = asyncio.get_running_loop()
        if self._trailing:
            log.debug("webhook-poll", f"{what}: coalesced into the poll already due")
        elif loop.time() - self._last >= COALESCE:
            self._wake()
            log.info("webhook-poll", f"{what}: polling now")
        else:
            self._trailing = loop.call_at(self._last + COALESCE, self._wake)
            log.info("webhook-poll", f"{what}: polling within {COALESCE:g}s (pushes are coalesced)")
        return json_response(HTTPStatus.ACCEPTED, {"ok": "polling"})

    def _wake(self) -> None:
        self._trailing = None
        self._last = asyncio.get_running_loop().time()
        self.poll_now.set()

    def _refused(self, peer: str, exc: Refused) -> None:
        log.warning("webhook-refused", f"request from {peer}: {exc}; answered {exc.status.value}", peer=peer)
