"""Cache backends: the same behaviour from file:// and memory://."""

from __future__ import annotations

import asyncio

import pytest

from dewy.cache import CACHES


@pytest.fixture(params=["file", "memory"])
def cache(request, tmp_path):
    url = tmp_path.as_uri() if request.param == "file" else "memory://"
    return CACHES.load(CACHES.url(url))


def test_put_get(cache) -> None:
    async def scenario():
        assert await cache.get("v1.0.0--a.tgz") is None
        await cache.put("v1.0.0--a.tgz", b"x")
        assert await cache.get("v1.0.0--a.tgz") == b"x"
        assert await cache.get("v1.0.0--b.tgz") is None
    asyncio.run(scenario())


def test_add_is_a_lock_with_expiry(cache) -> None:
    async def scenario():
        assert await cache.add("lock", b"me", ttl=0.2)
        assert not await cache.add("lock", b"you", ttl=0.2)
        assert await cache.get("lock") == b"me"
        await asyncio.sleep(0.25)  # the TTL itself is what is under test
        assert await cache.get("lock") is None
        assert await cache.add("lock", b"you", ttl=5)
    asyncio.run(scenario())


def test_file_cache_survives_a_new_instance(tmp_path) -> None:
    url = CACHES.url(tmp_path.as_uri())
    asyncio.run(CACHES.load(url).put("k", b"v"))
    assert asyncio.run(CACHES.load(url).get("k")) == b"v"


def test_file_cache_entry_with_a_damaged_expiry_is_treated_as_expired(tmp_path) -> None:
    cache = CACHES.load(CACHES.url(tmp_path.as_uri()))
    (tmp_path / ".kv" / "k").write_bytes(b"not-a-time\nv")
    assert asyncio.run(cache.get("k")) is None
    assert not (tmp_path / ".kv" / "k").exists()
