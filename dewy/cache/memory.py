"""``memory://``: a process-local cache, for tests and for hosts that keep nothing between restarts."""

from __future__ import annotations

import time

from dewy.urls import Url


class MemoryCache:
    def __init__(self, url: Url) -> None:
        url.check_keys(set())
        self._items: dict[str, tuple[bytes, float | None]] = {}

    def _live(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and time.monotonic() >= expires:
            del self._items[key]
            return None
        return value

    async def get(self, key: str) -> bytes | None:
        return self._live(key)

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._items[key] = (value, time.monotonic() + ttl if ttl else None)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        if self._live(key) is not None:
            return False
        await self.put(key, value, ttl)
        return True

    async def aclose(self) -> None:
        pass
