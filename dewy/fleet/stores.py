"""The fleet's shared state in the cache the hosts already share: Redis or Consul.

Two kinds of keys per app (``fleet:ID``, ID a digest of the registry URL and slot, so no
credential of the URL lands in a key): the hosts' heartbeats, each written by its host
alone, and the fleet document (:class:`dewy.fleet.plan.Fleet`), changed only by
:meth:`Store.update`, an optimistic transaction: read the document and the heartbeats,
compute the change (a pure function), write it only if nobody wrote in between, else again.

- Redis: the heartbeats are fields of one hash (``HSET``); the document is one key changed
  under ``WATCH`` / ``MULTI`` / ``EXEC``.
- Consul: each heartbeat is one key under ``fleet:ID:hosts:`` (read with one recursive
  GET); the document is one key written with ``?cas=`` on the ModifyIndex it was read at.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Protocol

from dewy.cache import Cache
from dewy.errors import CacheError, UsageError
from dewy.fleet.plan import Fleet, Host

ATTEMPTS = 50  # conflicting writers: each retry means another host's change went in first

Change = Callable[[Fleet, dict[str, Host]], Fleet]


class Store(Protocol):
    async def beat(self, host: Host) -> None:
        """Write this host's heartbeat."""

    async def read(self) -> tuple[Fleet, dict[str, Host]]:
        """The fleet document and every host's last heartbeat."""

    async def peek(self, names: tuple[str, ...]) -> tuple[Fleet, dict[str, Host]]:
        """The fleet document and the heartbeats of ``names`` only (a wave's hosts): what a waiting host reads."""

    async def update(self, change: Change) -> Fleet:
        """Apply ``change`` atomically to the document as it is now; the document as written (or left)."""

    async def forget(self, names: list[str]) -> None:
        """Delete the heartbeats of ``names`` (hosts gone for good); one that beats again is simply back."""


def app_key(registry: str, slot: str | None) -> str:
    """The fleet of one app: the hosts sharing a registry URL and a slot."""
    return "fleet:" + hashlib.sha256(f"{registry}\0{slot or ''}".encode()).hexdigest()[:16]


def open_store(cache: Cache, key: str) -> Store:
    from dewy.cache.consul import ConsulCache
    from dewy.cache.redis import RedisCache

    if isinstance(cache, RedisCache):
        return RedisStore(cache, key)
    if isinstance(cache, ConsulCache):
        return ConsulStore(cache, key)
    raise UsageError(f"a rollout needs a shared cache (redis://, consul://), not {cache!r}")


def _hosts(values) -> dict[str, Host]:
    hosts = {}
    for value in values:
        try:
            host = Host.from_json(json.loads(value))
        except (ValueError, TypeError):
            continue  # not a heartbeat dewy wrote: not a host
        hosts[host.id] = host
    return hosts


def _document(raw: bytes | None, where: str) -> Fleet:
    try:
        return Fleet.from_json(json.loads(raw) if raw else None)
    except (ValueError, TypeError, KeyError) as exc:
        raise CacheError(f"{where}: the fleet's rollout state is not one dewy wrote ({exc}); "
                         f"delete the key to start the rollout over") from None


def _encode(fleet: Fleet) -> bytes:
    return json.dumps(fleet.to_json(), separators=(",", ":")).encode()


class RedisStore:
    def __init__(self, cache, key: str) -> None:
        from dewy.cache.redis import PREFIX

        self.cache = cache
        self.state_key = f"{PREFIX}{key}:state"
        self.hosts_key = f"{PREFIX}{key}:hosts"

    async def beat(self, host: Host) -> None:
        with self.cache.errors("HSET"):
            await self.cache.client.hset(self.hosts_key, host.id, json.dumps(host.to_json()))

    async def read(self) -> tuple[Fleet, dict[str, Host]]:
        with self.cache.errors("GET"):
            async with self.cache.client.pipeline(transaction=False) as pipe:
                raw, hosts = await pipe.get(self.state_key).hgetall(self.hosts_key).execute()
        return _document(raw, self.cache.where), _hosts(hosts.values())

    async def peek(self, names: tuple[str, ...]) -> tuple[Fleet, dict[str, Host]]:
        with self.cache.errors("GET"):
            async with self.cache.client.pipeline(transaction=False) as pipe:
                pipe.get(self.state_key)
                if names:
                    pipe.hmget(self.hosts_key, list(names))
                raw, *beats = await pipe.execute()
        return _document(raw, self.cache.where), _hosts(beat for beat in (beats[0] if beats else []) if beat)

    async def forget(self, names: list[str]) -> None:
        if names:
            with self.cache.errors("HDEL"):
                await self.cache.client.hdel(self.hosts_key, *names)

    async def update(self, change: Change) -> Fleet:
        from redis.exceptions import WatchError

        with self.cache.errors("WATCH/MULTI/EXEC"):
            async with self.cache.client.pipeline(transaction=True) as pipe:
                for _ in range(ATTEMPTS):
                    try:
                        await pipe.watch(self.state_key)
                        raw = await pipe.get(self.state_key)
                        before = _document(raw, self.cache.where)
                        after = change(before, _hosts((await pipe.hgetall(self.hosts_key)).values()))
                        if after == before:
                            await pipe.unwatch()
                            return before
                        pipe.multi()
                        pipe.set(self.state_key, _encode(after))
                        await pipe.execute()
                        return after
                    except WatchError:
                        continue
        raise CacheError(f"{self.cache.where}: the fleet's rollout state changed {ATTEMPTS} times while this host "
                         "was updating it; retrying next cycle")


class ConsulStore:
    def __init__(self, cache, key: str) -> None:
        self.cache = cache
        self.state_key = f"{key}:state"
        self.hosts_prefix = f"{key}:hosts:"

    async def beat(self, host: Host) -> None:
        await self.cache.put(self.hosts_prefix + host.id, json.dumps(host.to_json()).encode())

    async def read(self) -> tuple[Fleet, dict[str, Host]]:
        raw, _ = await self.cache.versioned(self.state_key)
        return _document(raw, self.cache.where), _hosts(await self.cache.scan(self.hosts_prefix))

    async def peek(self, names: tuple[str, ...]) -> tuple[Fleet, dict[str, Host]]:
        if not names:  # the document alone: every poll of a fleet host asks it first
            raw, _ = await self.cache.versioned(self.state_key)
            return _document(raw, self.cache.where), {}
        fleet, hosts = await self.read()  # one recursive read is one request however many hosts
        return fleet, {name: host for name, host in hosts.items() if name in names}

    async def forget(self, names: list[str]) -> None:
        for name in names:
            await self.cache.delete(self.hosts_prefix + name)

    async def update(self, change: Change) -> Fleet:
        for _ in range(ATTEMPTS):
            raw, index = await self.cache.versioned(self.state_key)
            before = _document(raw, self.cache.where)
            after = change(before, _hosts(await self.cache.scan(self.hosts_prefix)))
            if after == before or await self.cache.swap(self.state_key, _encode(after), index):
                return after
        raise CacheError(f"{self.cache.where}: the fleet's rollout state changed {ATTEMPTS} times while this host "
                         "was updating it; retrying next cycle")
