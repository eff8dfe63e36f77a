"""A Consul KV HTTP API test server, written from Consul's HTTP API documentation (/v1/kv).

No Consul server can be installed on the test machines, so this speaks the
subset of the API dewy's ``consul://`` cache uses, faithfully:

- ``GET /v1/kv/<key>``: ``[entry]`` with ``Key``, ``CreateIndex``,
  ``ModifyIndex``, ``LockIndex``, ``Flags`` and ``Value`` (base64, ``null``
  when empty); 404 with an empty body when absent; ``?raw`` answers the bare
  value; ``?recurse`` every entry under the prefix; ``?keys`` (with
  ``?separator=``) the key names only; 404 when nothing matches.
- ``X-Consul-Index`` on reads: the entry's ModifyIndex for one key, the
  highest index under the prefix for lists (deletions count, as Consul keeps
  tombstones), the KV table's index when nothing matches. Also
  ``X-Consul-KnownLeader`` and ``X-Consul-LastContact``.
- ``PUT /v1/kv/<key>``: the body is the value (at most 512 KiB, else 413);
  ``?flags=``; ``?cas=<index>``: with 0 the write happens only if the key does
  not exist, otherwise only if the key's ModifyIndex is that index. Answers
  ``true`` or ``false``. Every write takes the next Raft index; CreateIndex is
  kept across updates.
- ``DELETE /v1/kv/<key>``: ``?recurse`` deletes the prefix, ``?cas=<index>``
  deletes only at that ModifyIndex; answers ``true``/``false``.
- ACLs: with ``token=`` set (default policy deny), a request must carry it in
  ``X-Consul-Token``, ``Authorization: Bearer`` or ``?token=``; no token is
  403 ``Permission denied``, an unknown token 403 ``ACL not found``.

Not implemented (dewy does not use them): blocking queries (``?index=`` answers
400 here rather than pretending), sessions (``?acquire``/``?release``), ``?dc=``
other than the local one, transactions.

Usage::

    with ConsulServer(token="secret") as consul:
        ...consul://127.0.0.1:{consul.port}/dewy...
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

from tests.loopback import LoopbackServer

MAX_VALUE = 512 * 1024  # Consul's default kv_max_value_size
DATACENTER = "dc1"


class Logged(NamedTuple):
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str  # decoded key path, e.g. /v1/kv/dewy/x
    query: dict[str, str]
    status: int


@dataclass
class Entry:
    create_index: int
    modify_index: int
    flags: int
    value: bytes

    def json(self, key: str) -> dict[str, Any]:
        return {
            "LockIndex": 0,
            "Key": key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode() if self.value else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class _Reply(Exception):
    def __init__(self, status: int, body: bytes | str = b"", headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.headers = headers or {}


class ConsulServer(LoopbackServer):
    """Consul's KV API on 127.0.0.1 (ephemeral port) in a background thread."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.kv: dict[str, Entry] = {}
        self.tombstones: dict[str, int] = {}  # deleted key -> index of its deletion
        self.index = 1  # the Raft index; every write takes the next one
        self.requests: list[Logged] = []
        self.lock = threading.RLock()
        self._serve(_Handler, "consul-server")
        self.url = self.origin
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="consul-server", daemon=True)
        self._thread.start()


    def value(self, key: str) -> bytes | None:
        """The stored value of ``key`` (test inspection)."""
        with self.lock:
            entry = self.kv.get(key)
            return entry.value if entry else None

    # Request handling -------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> _Reply:
        try:
            self._authorize(query, headers)
            if not path.startswith("/v1/kv/"):
                raise _Reply(404, "404 page not found\n", {"Content-Type": "text/plain; charset=utf-8"})
            if query.get("dc", DATACENTER) != DATACENTER:
                raise _Reply(500, "No path to datacenter\n")
            if "index" in query:
                raise _Reply(400, "blocking queries are not implemented by this test server\n")
            key = path[len("/v1/kv/"):]
            with self.lock:
                if method == "GET":
                    return self._get(key, query)
                if method == "PUT":
                    return self._put(key, query, body)
                if method == "DELETE":
                    return self._delete(key, query)
            raise _Reply(405, f"method {method} not allowed\n")
        except _Reply as reply:
            return reply

    def _authorize(self, query: dict[str, str], headers: dict[str, str]) -> None:
        if self.token is None:
            return
        token = headers.get("x-consul-token") or query.get("token")
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        if not token and scheme.lower() == "bearer":
            token = bearer.strip()
        if not token:
            raise _Reply(403, "Permission denied\n")
        if token != self.token:
            raise _Reply(403, "ACL not found\n")

    def _read_headers(self, index: int) -> dict[str, str]:
        return {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0",
                "Vary": "Accept-Encoding"}

    def _prefix_index(self, prefix: str) -> int:
        indexes = [e.modify_index for k, e in self.kv.items() if k.startswith(prefix)]
        indexes += [i for k, i in self.tombstones.items() if k.startswith(prefix)]
        return max(indexes) if indexes else self.index

    def _get(self, key: str, query: dict[str, str]) -> _Reply:
        if "keys" in query:
            names = sorted(k for k in self.kv if k.startswith(key))
            separator = query.get("separator")
            if separator:
                folded = []
                for name in names:
                    cut = name.find(separator, len(key))
                    short = name[:cut + len(separator)] if cut >= 0 else name
                    if short not in folded:
                        folded.append(short)
                names = folded
            headers = self._read_headers(self._prefix_index(key))
            if not names:
                raise _Reply(404, b"", headers)
            return _Reply(200, json.dumps(names), {**headers, "Content-Type": "application/json"})
        if "recurse" in query:
            entries = [self.kv[k].json(k) for k in sorted(self.kv) if k.startswith(key)]
            headers = self._read_headers(self._prefix_index(key))
            if not entries:
                raise _Reply(404, b"", headers)
            return _Reply(200, json.dumps(entries), {**headers, "Content-Type": "application/json"})
        entry = self.kv.get(key)
        if entry is None:
            raise _Reply(404, b"", self._read_headers(self.index))
        headers = self._read_headers(entry.modify_index)
        if "raw" in query:
            return _Reply(200, entry.value, {**headers, "Content-Type": "text/plain; charset=utf-8",
                                             "X-Content-Type-Options": "nosniff"})
        return _Reply(200, json.dumps([entry.json(key)]), {**headers, "Content-Type": "application/json"})

    def _cas_index(self, query: dict[str, str]) -> int | None:
        if "cas" not in query:
            return None
        try:
            index = int(query["cas"])
        except ValueError:
            raise _Reply(400, "Invalid CAS index\n") from None
        if index < 0:
            raise _Reply(400, "Invalid CAS index\n")
        return index

    def _put(self, key: str, query: dict[str, str], body: bytes) -> _Reply:
        if not key:
            raise _Reply(400, "Missing key name\n")
        if "acquire" in query or "release" in query:
            raise _Reply(400, "sessions are not implemented by this test server\n")
        if len(body) > MAX_VALUE:
            raise _Reply(413, f"Request body(Content-Length) too large, max size: {MAX_VALUE} bytes. "
                              "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.\n")
        try:
            flags = int(query.get("flags", "0"))
        except ValueError:
            raise _Reply(400, "Invalid flags\n") from None
        cas = self._cas_index(query)
        existing = self.kv.get(key)
        if cas is not None:
            if cas == 0 and existing is not None:
                return _true_false(False)
            if cas != 0 and (existing is None or existing.modify_index != cas):
                return _true_false(False)
        self.index += 1
        created = existing.create_index if existing else self.index
        self.kv[key] = Entry(created, self.index, flags, body)
        self.tombstones.pop(key, None)
        return _true_false(True)

    def _delete(self, key: str, query: dict[str, str]) -> _Reply:
        cas = self._cas_index(query)
        if "recurse" in query:
            if cas is not None:
                raise _Reply(400, "Conflicting flags: cas, recurse\n")
            doomed = [k for k in self.kv if k.startswith(key)]
        else:
            existing = self.kv.get(key)
            if cas is not None and (existing is None or existing.modify_index != cas):
                return _true_false(existing is None)  # as Consul: a CAS delete of an absent key succeeds
            doomed = [key] if existing else []
        if doomed:
            self.index += 1
            for name in doomed:
                del self.kv[name]
                self.tombstones[name] = self.index
        return _true_false(True)


def _true_false(ok: bool) -> _Reply:
    return _Reply(200, b"true" if ok else b"false", {"Content-Type": "application/json"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: without it each answer waits ~40 ms

    def _serve(self) -> None:
        consul: ConsulServer = self.server.owner  # type: ignore[attr-defined]
        arrived = time.monotonic()
        parts = urlsplit(self.path)
        path = unquote(parts.path)  # Consul reads the decoded path: %2F in a key name is sent as %252F
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = consul.handle(self.command, path, query, headers, body)
        with consul.lock:
            consul.requests.append(Logged(arrived, self.command, path, query, reply.status))
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_GET = do_PUT = do_DELETE = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is ``ConsulServer.requests``."""
