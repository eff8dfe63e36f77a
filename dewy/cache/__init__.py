"""The Cache interface: small key/value state, local or shared between hosts.

Artifacts themselves always live in a local directory (see :mod:`dewy.store`):
a multi-GB archive belongs on disk, not in Redis. The cache holds what is cheap
to share: registry answers, locks, and per-host deploy state.
"""

from __future__ import annotations

from typing import Protocol

from dewy.urls import Plugins

CACHES = Plugins("cache", {
    "file": "dewy.cache.file:FileCache",
    "memory": "dewy.cache.memory:MemoryCache",
    "redis": "dewy.cache.redis:RedisCache",
    "rediss": "dewy.cache.redis:RedisCache",
    "consul": "dewy.cache.consul:ConsulCache",
})


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None if absent or expired."""

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``; with ``ttl`` it expires after that many seconds."""

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        """Store only if absent (a lock with expiry); True if this call stored it."""

    async def aclose(self) -> None:
        """Release connections."""
