"""One registry answer for a whole fleet: a shared cache with ``ttl=`` in front of the real registry.

Every host of a fleet polls every interval. With ``-c redis://...?ttl=30`` (or
``consul://``), the registry is asked about once per TTL for the whole fleet:

- ``KEY`` holds the current answer and expires ``ttl`` seconds after it was
  written (by the cache server's clock for Redis). While it exists, every host
  just reads it.
- When it has expired, the first host to take the lock ``KEY:lock``
  (``cache.add``: SET NX PX, Consul CAS) asks the real registry and writes the
  answer. The lock is never released by hand: it expires after ``ttl``, so a
  holder that dies mid-refresh is replaced by the next host that polls after
  the expiry, and two refreshes in one TTL happen only when a refresh takes
  longer than the TTL.
- The other hosts wait for the holder with a bounded poll (at most half the TTL,
  at most 5 s), then serve ``KEY:last``, the last answer the registry gave.
- An answer is a release, or "not ready" (ArtifactNotReady: the newest release
  is still being uploaded), which every host then waits on quietly, as if it had
  asked itself.
- A failed refresh (network, HTTP 5xx, rate limit, no eligible release) is
  written as the answer too, with the last good answer inside: every host serves
  that answer (the holder logs a warning) until it is ``max_stale`` old (default
  10 x ttl), then raises the error, so notifications fire. So a failing registry
  is asked once per TTL by the fleet, not once per interval by every host, and
  a rate limit's Retry-After keeps the whole fleet away until it has passed.
- If the cache itself fails, each host asks the registry directly (with a
  warning when that starts and a note when it ends): a Redis outage never
  stops deploys.

Only the registry answer is shared. What a host runs, its history and its
quarantine stay in its own state file, so one host's deploy never makes another
skip a release. ``report()`` and ``release(tag)`` (a pin) go straight to the real registry, per host.

The key also names this host's OS and architecture: without ``artifact=`` the
registry picks the archive for the asking host, so an amd64 and an arm64 host
must not share an answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import sys
import time
from datetime import datetime
from typing import Any

from dewy import log
from dewy.errors import ArtifactNotReady, CacheError, DewyError, RegistryError
from dewy.registry import Registry, Release
from dewy.versions import version_from_text

FORMAT = 1
MAX_WAIT = 5.0  # longest a host waits for another host's refresh before serving the last answer
FIRST_POLL = 0.05
LONGEST_POLL = 0.5


class AnswerPending(ArtifactNotReady):
    """Another host is refreshing the shared answer and none was stored before: wait quietly for it.

    An ArtifactNotReady so that the daemon waits without counting a failure;
    it lasts at most one TTL (the refreshing host's lock expires).
    """


def host_id() -> dict[str, Any]:
    """Who holds a lock: enough for an operator (and a test) to find the process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def release_to_json(release: Release) -> dict[str, Any]:
    return {
        "tag": release.tag,
        "version": str(release.version),
        "artifact_name": release.artifact_name,
        "artifact_url": release.artifact_url,
        "created_at": release.created_at.isoformat() if release.created_at else None,
        "checksums_url": release.checksums_url,
        "signature_url": release.signature_url,
        "id": release.id,
    }


def release_from_json(data: dict[str, Any]) -> Release:
    return Release(
        tag=data["tag"],
        version=version_from_text(data["version"]),
        artifact_name=data["artifact_name"],
        artifact_url=data["artifact_url"],
        created_at=datetime.fromisoformat(data["created_at"]) if data.get("created_at") else None,
        checksums_url=data.get("checksums_url"),
        signature_url=data.get("signature_url"),
        id=data.get("id", ""),
    )


class SharedRegistry:
    """The Registry protocol over ``registry``, sharing its answer through ``cache`` for ``ttl`` seconds."""

    def __init__(self, registry: Registry, cache, ttl: float, *, key: str, max_stale: float | None = None,
                 max_wait: float | None = None) -> None:
        self.registry = registry
        self.cache = cache
        self.ttl = float(ttl)
        self.max_stale = max_stale if max_stale is not None else 10 * self.ttl
        self.max_wait = max_wait if max_wait is not None else min(self.ttl / 2, MAX_WAIT)
        machine = platform.machine().lower() or "unknown"
        self.key = f"{key}:{sys.platform}-{machine}"
        self.lock_key = self.key + ":lock"
        self.last_key = self.key + ":last"
        self.me = host_id()
        self._cache_down = False
        self._warned_error: float | None = None  # checked_at of the failure last warned about

    @property
    def origin(self) -> Registry:
        """The registry asked on the fleet's behalf, for what only it knows (an image pull's credentials)."""
        return self.registry

    # Registry protocol -------------------------------------------------------------

    async def current(self) -> Release:
        try:
            record = await self._shared_answer()
        except CacheError as exc:
            if not self._cache_down:
                log.warning("shared-cache-down", f"shared cache unavailable, asking the registry directly: {exc}")
            self._cache_down = True
            return await self.registry.current()
        if self._cache_down:
            log.info("shared-cache-up", "shared cache reachable again; sharing the registry answer")
            self._cache_down = False
        return self._answer(record)

    async def release(self, tag: str) -> Release:
        """A pin's lookup, for this host alone: straight to the real registry."""
        return await self.registry.release(tag)

    async def report(self, release: Release, command: str, error: str | None = None) -> None:
        await self.registry.report(release, command, error)

    async def aclose(self) -> None:
        await self.registry.aclose()  # the cache belongs to the daemon, which closes it

    # Sharing ------------------------------------------------------------------------

    async def _shared_answer(self) -> dict[str, Any]:
        """The current answer: read, or refreshed under the lock, or the last one while another host refreshes."""
        deadline = time.monotonic() + self.max_wait
        delay = FIRST_POLL
        while True:
            record = await self._read(self.key)
            if record is not None:
                return record
            if await self.cache.add(self.lock_key, json.dumps({**self.me, "at": time.time()}).encode(), self.ttl):
                return await self._refresh()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(delay, remaining))  # no event to await across hosts: a bounded poll
            delay = min(delay * 2, LONGEST_POLL)
        holder = await self._holder()
        last = await self._read(self.last_key)
        if last is not None:
            log.debug("shared-last", f"{holder} is refreshing the registry answer; using the last one meanwhile")
            return last
        raise AnswerPending(f"waiting for {holder} to ask the registry (shared cache {self.key})")

    async def _refresh(self) -> dict[str, Any]:
        """Ask the real registry (this host holds the lock) and store the answer for the fleet."""
        now = time.time()
        answer: dict[str, Any] = {"v": FORMAT, "fetched_at": now, "by": self.me}
        try:
            release = await self.registry.current()
            answer["release"] = release_to_json(release)
        except ArtifactNotReady as exc:
            answer["not_ready"] = str(exc)
        except DewyError as exc:
            return await self._refresh_failed(exc, now)
        log.debug("shared-refresh", "asked the registry for the fleet", version=answer.get("release", {}).get("tag"))
        await self._store(self.key, answer, self.ttl)
        await self._store(self.last_key, answer, self.max_stale)
        return answer

    async def _refresh_failed(self, exc: DewyError, now: float) -> dict[str, Any]:
        retry_after = getattr(exc, "retry_after", None)
        try:
            last = await self._read(self.last_key)
        except CacheError:
            last = None
        failure = {"v": FORMAT, "error": str(exc), "checked_at": now, "by": self.me, "last": last,
                   "retry_after": retry_after}
        # Kept for ttl, or until a rate limit has passed: until then no host asks again.
        await self._store(self.key, failure, max(self.ttl, retry_after or 0))
        return failure

    async def _store(self, key: str, record: dict[str, Any], ttl: float) -> None:
        """Best effort: the answer in hand is used even if it cannot be shared."""
        try:
            await self.cache.put(key, json.dumps(record).encode(), ttl)
        except CacheError as exc:
            log.warning("shared-cache-down", f"could not share the registry answer: {exc}")

    async def _read(self, key: str) -> dict[str, Any] | None:
        raw = await self.cache.get(key)
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("v") != FORMAT:
            log.debug("shared-unreadable", f"ignoring an unreadable shared answer under {key}")
            return None
        return record

    async def _holder(self) -> str:
        try:
            raw = await self.cache.get(self.lock_key)
            holder = json.loads(raw) if raw else None
            return f"{holder['host']} (pid {holder['pid']})" if holder else "another host"
        except (ValueError, KeyError, TypeError, CacheError):
            return "another host"

    # Answers --------------------------------------------------------------------------

    def _answer(self, record: dict[str, Any]) -> Release:
        """The Release in ``record``, or the error it stands for."""
        if "error" not in record:
            return self._good(record)
        last = record.get("last")
        by = record.get("by") or {}
        who = "this host" if by == self.me else f"{by.get('host', '?')} (pid {by.get('pid', '?')})"
        age = time.time() - last["fetched_at"] if last and "fetched_at" in last else None
        if age is not None and age < self.max_stale:
            if self._warned_error != record.get("checked_at"):
                self._warned_error = record.get("checked_at")
                log.warning("registry-stale", f"the registry could not be asked ({record['error']}, tried by {who}); "
                                              f"using its answer from {int(age)} s ago")
            return self._good(last)
        error = RegistryError(record["error"] if by == self.me else f"{record['error']} (asked by {who})")
        if record.get("retry_after"):
            error.retry_after = max(0.0, record["checked_at"] + record["retry_after"] - time.time())  # type: ignore[attr-defined]
        raise error

    def _good(self, record: dict[str, Any]) -> Release:
        if "not_ready" in record:
            raise ArtifactNotReady(record["not_ready"])
        try:
            return release_from_json(record["release"])
        except (KeyError, ValueError, TypeError) as exc:
            raise RegistryError(f"unreadable shared registry answer under {self.key}: {exc!r}") from None
