"""``redis://HOST:PORT/DB?ttl=`` (``rediss://`` for TLS): a cache shared by a fleet, in the Redis it already runs.

Keys live under ``dewy:``; ``add`` is ``SET NX PX``, so a lock's expiry is kept by
the Redis server's clock, not by the hosts'. The password comes from the URL
(``redis://:PASSWORD@HOST`` or ``redis://USER:PASSWORD@HOST`` for an ACL user) or
from ``REDIS_PASSWORD``; it never appears in a message (``str(url)`` redacts it).
``rediss://`` verifies the server against the system CA store (``SSL_CERT_FILE``
points elsewhere).

``ttl=``: how long one host's registry answer serves the whole fleet (see
:mod:`dewy.registry.shared`); without it the cache is shared but the registry is
asked by every host.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, RedisError

from dewy.errors import CacheError, UsageError
from dewy.urls import Url

PREFIX = "dewy:"
DEFAULT_PORT = 6379
TIMEOUT = 5.0  # per connect and per command: a Redis outage must not stall a deploy cycle for long
EXPECTED = "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]?ttl=SECONDS"


class RedisCache:
    def __init__(self, url: Url) -> None:
        url.check_keys({"ttl"})
        if not url.host:
            raise UsageError(f"{url}: expected {EXPECTED}")
        db = url.path.strip("/") or "0"
        if not db.isdigit():
            raise UsageError(f"{url}: the database must be a number, as in redis://HOST:PORT/0")
        self.host = url.host
        self.port = url.port or DEFAULT_PORT
        self.db = int(db)
        self.tls = url.scheme == "rediss"
        self.ttl: float | None = url.seconds("ttl")
        self.where = f"{url.scheme}://{self.host}:{self.port}/{self.db}"
        self._username = unquote(url.username) if url.username else None
        password = url.password
        self._password = unquote(password) if password else (os.environ.get("REDIS_PASSWORD") or None)
        self._client: Redis | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"RedisCache({self.where!r}, ttl={self.ttl})"

    @property
    def client(self) -> Redis:
        """One client per event loop, created on first use (no connection at construction time)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = Redis(
                host=self.host, port=self.port, db=self.db, username=self._username, password=self._password,
                ssl=self.tls, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), retries=1),
            )
            self._loop = loop
        return self._client

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        """A Redis failure of ``what`` (a command's name) as one CacheError line naming this Redis."""
        try:
            yield
        except (RedisError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, AuthenticationError):
                detail += " (the password comes from the URL, redis://:PASSWORD@HOST, or REDIS_PASSWORD)"
            raise CacheError(f"{self.where}: {what} failed: {detail}") from None

    async def get(self, key: str) -> bytes | None:
        with self.errors("GET"):
            return await self.client.get(PREFIX + key)

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self.errors("SET"):
            await self.client.set(PREFIX + key, value, px=_ms(ttl) if ttl else None)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        with self.errors("SET NX"):
            return bool(await self.client.set(PREFIX + key, value, px=_ms(ttl), nx=True))

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.aclose()
            except (RedisError, OSError, RuntimeError):
                pass  # a connection of a finished event loop; nothing left to release


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
