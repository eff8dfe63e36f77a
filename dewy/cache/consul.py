"""``consul://HOST:PORT/PREFIX?ttl=``: a cache shared by a fleet, in Consul's KV store (HTTP API).

Each dewy key is one Consul key, ``PREFIX/<key>`` (default prefix ``dewy``; the
key is percent-encoded so that it stays one path segment). The ACL token comes
from ``CONSUL_HTTP_TOKEN`` and is sent as ``X-Consul-Token``; it never appears in
a message.

Consul KV has no expiry of its own. Sessions with a TTL could delete keys, but
Consul accepts session TTLs of 10 s to 24 h only, invalidates them up to twice
the TTL late, and would cost a session per lock. Instead the expiry time is
stored in the value, like the ``file://`` cache: the first line is the UNIX time
at which the value expires (or ``-``), the rest is the value. Readers treat an
expired value as absent, and ``add`` replaces an expired value only with a
check-and-set on the ModifyIndex it read (``?cas=0`` creates only), so two hosts
can never both take a lock. This compares hosts' clocks, which NTP keeps well
within a TTL of seconds. Expired keys are removed (``?cas=`` again) when read.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx

from dewy.errors import CacheError, UsageError
from dewy.http import Session, failure_detail
from dewy.urls import Url

DEFAULT_PORT = 8500
DEFAULT_PREFIX = "dewy"
TIMEOUT = httpx.Timeout(5.0)
DEADLINE = 10.0  # one whole request: a Consul trickling its answer must not stall a deploy cycle either
EXPECTED = "consul://HOST[:PORT]/PREFIX?ttl=SECONDS"


class ConsulCache:
    def __init__(self, url: Url) -> None:
        url.check_keys({"ttl"})
        if not url.host:
            raise UsageError(f"{url}: expected {EXPECTED}")
        if url.username or url.password:
            raise UsageError(f"{url}: credentials do not belong in a consul:// URL; set CONSUL_HTTP_TOKEN")
        self.prefix = url.path.strip("/") or DEFAULT_PREFIX
        self.ttl: float | None = url.seconds("ttl")
        host = f"[{url.host}]" if ":" in url.host else url.host
        self.base = f"http://{host}:{url.port or DEFAULT_PORT}"
        self.where = f"consul://{host}:{url.port or DEFAULT_PORT}/{self.prefix}"
        token = os.environ.get("CONSUL_HTTP_TOKEN", "").strip()
        self.http = Session(base_url=self.base, headers={"X-Consul-Token": token} if token else {}, timeout=TIMEOUT)

    def __repr__(self) -> str:
        return f"ConsulCache({self.where!r}, ttl={self.ttl})"

    def _path(self, key: str) -> str:
        """The URL path of ``key``: percent-encoded once for Consul's key name, once more for the URL."""
        return "/v1/kv/" + quote(f"{self.prefix}/{_name(key)}", safe="/:@")

    @contextmanager
    def _network(self, what: str) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPError as exc:
            raise CacheError(f"{self.where}: {what} failed: {failure_detail(exc)}") from None

    async def _request(self, method: str, key: str, *, params: dict[str, Any] | None = None,
                       content: bytes | None = None, missing_ok: bool = False) -> httpx.Response | None:
        what = f"{method} {key}"
        with self._network(what):
            try:
                async with asyncio.timeout(DEADLINE):
                    response = await self.http.send(method, self._path(key), params=params, content=content, follow=False)
            except TimeoutError:
                raise CacheError(f"{self.where}: {what} failed: no complete answer within {DEADLINE:g} s") from None
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code == 403:
            raise CacheError(f"{self.where}: {what}: permission denied by Consul's ACLs "
                             f"({_excerpt(response)}); check CONSUL_HTTP_TOKEN and the token's key policy")
        if response.status_code != 200:
            raise CacheError(f"{self.where}: {what}: HTTP {response.status_code} {_excerpt(response)}")
        return response

    async def _entry(self, key: str) -> tuple[bytes, float | None, int] | None:
        """Value, expiry and ModifyIndex of ``key``, or None if absent."""
        response = await self._request("GET", key, missing_ok=True)
        if response is None:
            return None
        entries = _json(response, self.where)
        if not entries:
            return None
        return _decode(entries[0]) + (int(entries[0].get("ModifyIndex", 0)),)

    async def _cas(self, method: str, key: str, index: int, content: bytes | None = None) -> bool:
        response = await self._request(method, key, params={"cas": str(index)}, content=content)
        return response.content.strip() == b"true"

    async def get(self, key: str) -> bytes | None:
        entry = await self._entry(key)
        if entry is None:
            return None
        value, expires, index = entry
        if _expired(expires):
            await self._cas("DELETE", key, index)  # tidy up; losing the race to a writer is fine
            return None
        return value

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self._request("PUT", key, content=_encode(value, ttl))

    async def delete(self, key: str) -> None:
        await self._request("DELETE", key)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        entry = await self._entry(key)
        if entry is None:
            return await self._cas("PUT", key, 0, _encode(value, ttl))  # cas=0: only if the key does not exist
        _, expires, index = entry
        if not _expired(expires):
            return False
        return await self._cas("PUT", key, index, _encode(value, ttl))  # replace the expired value we saw, nothing newer

    async def versioned(self, key: str) -> tuple[bytes | None, int]:
        """The value of ``key`` (None: absent) and its ModifyIndex (0: absent), for :meth:`swap`."""
        entry = await self._entry(key)
        return (None, 0) if entry is None else (entry[0], entry[2])

    async def swap(self, key: str, value: bytes, index: int) -> bool:
        """Check-and-set: store ``value`` only if ``key`` is still at ``index`` (0: only if absent)."""
        return await self._cas("PUT", key, index, _encode(value, None))

    async def scan(self, key_prefix: str) -> list[bytes]:
        """The values of every key that starts with ``key_prefix``, in one recursive read."""
        response = await self._request("GET", key_prefix, params={"recurse": "true"}, missing_ok=True)
        if response is None:
            return []
        return [_decode(entry)[0] for entry in _json(response, self.where)]

    async def aclose(self) -> None:
        await self.http.aclose()


def _name(key: str) -> str:
    """A dewy key as one Consul path segment (``/`` and other specials percent-encoded)."""
    return quote(key, safe=":@-._~")


def _encode(value: bytes, ttl: float | None) -> bytes:
    return (repr(time.time() + ttl).encode() if ttl else b"-") + b"\n" + value


def _decode(entry: dict[str, Any]) -> tuple[bytes, float | None]:
    raw = base64.b64decode(entry.get("Value") or "")
    header, _, value = raw.partition(b"\n")
    try:
        expires = None if header == b"-" else float(header)
    except ValueError:  # not written by dewy: a value without expiry
        return raw, None
    return value, expires


def _expired(expires: float | None) -> bool:
    return expires is not None and expires <= time.time()


def _json(response: httpx.Response, where: str) -> list[dict[str, Any]]:
    try:
        body = response.json()
    except ValueError:
        raise CacheError(f"{where}: the answer is not JSON (is this Consul's HTTP API?)") from None
    if not isinstance(body, list):
        raise CacheError(f"{where}: expected a JSON list of KV entries")
    for index, entry in enumerate(body):
        if not (isinstance(entry, dict) and isinstance(entry.get("Key"), str)
                and isinstance(entry.get("Value"), (str, type(None)))
                and isinstance(entry.get("ModifyIndex", 0), int) and not isinstance(entry.get("ModifyIndex"), bool)):
            raise CacheError(f"{where}: KV entry [{index}] is not an object with a string Key, a base64 Value"
                             " and a numeric ModifyIndex (is this Consul's HTTP API?)")
        try:
            base64.b64decode(entry.get("Value") or "", validate=True)
        except ValueError:
            raise CacheError(f"{where}: KV entry [{index}] ({entry['Key'][:80]!r}) has a Value that is not base64") from None
    return body


def _excerpt(response: httpx.Response) -> str:
    return response.text.strip()[:200] or response.reason_phrase
