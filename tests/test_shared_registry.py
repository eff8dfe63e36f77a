"""SharedRegistry: one registry answer per TTL for a fleet, with hosts simulated in one process over one cache."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone

import pytest

from dewy.cache import CACHES
from dewy.errors import ArtifactNotReady, CacheError, RegistryError
from dewy.registry import Release
from dewy.registry.shared import AnswerPending, SharedRegistry, release_from_json, release_to_json
from dewy.versions import parse_tag

KEY = "registry:ghr://acme/site:"


def release(tag: str = "v1.2.3") -> Release:
    return Release(tag=tag, version=parse_tag(tag), artifact_name="app_linux_amd64.tar.gz",
                   artifact_url=f"ghr://acme/site/tag/{tag}/app_linux_amd64.tar.gz?id=7",
                   created_at=datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),
                   checksums_url=f"ghr://acme/site/tag/{tag}/checksums.txt?id=8", id="42")


class FakeRegistry:
    """Answers what it is told to, counting the questions; ``gate`` holds answers until set."""

    def __init__(self, answer: Release | Exception) -> None:
        self.answer = answer
        self.asked = 0
        self.reports: list[tuple] = []
        self.looked_up: list[str] = []
        self.closed = False
        self.gate: asyncio.Event | None = None

    async def current(self) -> Release:
        self.asked += 1
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def release(self, tag: str) -> Release:
        self.looked_up.append(tag)
        return release(tag)

    async def report(self, release: Release, command: str, error: str | None = None) -> None:
        self.reports.append((release.tag, command, error))

    async def aclose(self) -> None:
        self.closed = True


class BrokenCache:
    """A shared cache that is down (or comes back when ``down`` is cleared)."""

    def __init__(self, inner) -> None:
        self.inner, self.down = inner, True

    def __getattr__(self, name):
        async def call(*args, **kwargs):
            if self.down:
                raise CacheError("redis://127.0.0.1:6379/0: GET failed: ConnectionError: refused")
            return await getattr(self.inner, name)(*args, **kwargs)
        return call


def hosts(registry, cache, n: int, ttl: float = 0.3, **options) -> list[SharedRegistry]:
    """``n`` hosts of one fleet (distinct identities, one shared cache, the same registry)."""
    fleet = [SharedRegistry(registry, cache, ttl, key=KEY, **options) for _ in range(n)]
    for i, host in enumerate(fleet):
        host.me = {"host": f"host{i}", "pid": 1000 + i}
    return fleet


@pytest.fixture
def cache():
    return CACHES.load(CACHES.url("memory://"))


@pytest.fixture
def events():
    """(level, event, msg) of every dewy log record during the test."""
    records: list[tuple[str, str, str]] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append((record.levelname, getattr(record, "dewy_event", ""), record.getMessage()))

    logger = logging.getLogger("dewy")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def run(coro):
    return asyncio.run(coro)


def test_a_release_survives_the_round_trip() -> None:
    for tag in ("v1.2.3", "1.2.3-rc.1+blue", "V2.0.0"):
        original = release(tag)
        assert release_from_json(json.loads(json.dumps(release_to_json(original)))) == original
    bare = Release(tag="v1.0.0", version=parse_tag("v1.0.0"), artifact_name="a.tgz", artifact_url="file:///r/v1.0.0/a.tgz")
    assert release_from_json(release_to_json(bare)) == bare


def test_one_question_per_ttl_for_the_whole_fleet(cache) -> None:
    registry = FakeRegistry(release())
    fleet = hosts(registry, cache, 10, ttl=0.3)

    async def scenario():
        for _ in range(3):
            assert {await h.current() for h in fleet} == {release()}
        assert registry.asked == 1
        await asyncio.sleep(0.35)  # the answer's TTL is what is under test
        registry.answer = release("v1.3.0")
        answers = [await h.current() for h in fleet]
        assert {a.tag for a in answers} == {"v1.3.0"} and registry.asked == 2
    run(scenario())


def test_concurrent_hosts_wait_for_the_lock_holder(cache) -> None:
    registry = FakeRegistry(release())
    registry.gate = asyncio.Event()  # created outside the loop: fine on 3.10+
    fleet = hosts(registry, cache, 8, ttl=2)

    async def scenario():
        asking = [asyncio.create_task(h.current()) for h in fleet]
        while registry.asked == 0:
            await asyncio.sleep(0)
        registry.gate.set()  # the others found the lock taken and are polling for the holder's answer
        assert {a.tag for a in await asyncio.gather(*asking)} == {"v1.2.3"}
        assert registry.asked == 1
    run(scenario())


def test_not_ready_is_an_answer_shared_by_the_fleet(cache, events) -> None:
    registry = FakeRegistry(ArtifactNotReady("ghr://acme/site: release v2.0.0 has no archive for linux/amd64 yet"))
    fleet = hosts(registry, cache, 3)

    async def scenario():
        for host in fleet:
            with pytest.raises(ArtifactNotReady, match="has no archive for linux/amd64 yet"):
                await host.current()
        assert registry.asked == 1
    run(scenario())
    assert not [e for e in events if e[0] == "WARNING"]


def test_a_failed_refresh_serves_the_last_answer_until_max_stale(cache, events) -> None:
    registry = FakeRegistry(release())
    one, two = hosts(registry, cache, 2, ttl=0.1, max_stale=0.6)

    async def scenario():
        assert (await one.current()).tag == "v1.2.3"
        await asyncio.sleep(0.15)
        registry.answer = RegistryError("GitHub GET /repos/acme/site/releases: unexpected HTTP 502")
        assert (await two.current()).tag == "v1.2.3"  # two asked, failed, serves the last answer
        assert (await one.current()).tag == "v1.2.3"  # one reads the failure: no second question
        assert registry.asked == 2
        await asyncio.sleep(0.6)  # now the last good answer is older than max_stale
        with pytest.raises(RegistryError, match="HTTP 502$"):
            await one.current()
        with pytest.raises(RegistryError, match=r"HTTP 502 \(asked by host0 \(pid 1000\)\)"):
            await two.current()
        assert registry.asked == 3
    run(scenario())
    warnings = [e for e in events if e[0] == "WARNING"]
    assert [e[1] for e in warnings] == ["registry-stale", "registry-stale"]  # once per host per failed refresh
    assert warnings[0][2] == ("the registry could not be asked (GitHub GET /repos/acme/site/releases: unexpected HTTP 502, "
                              "tried by this host); using its answer from 0 s ago")
    assert "HTTP 502, tried by host1 (pid 1001)); using its answer from 0 s ago" in warnings[1][2]


def test_a_rate_limit_keeps_the_whole_fleet_away_until_it_passes(cache) -> None:
    limited = RegistryError("GitHub API rate limit exceeded; retrying after 60 s")
    limited.retry_after = 60
    registry = FakeRegistry(limited)
    fleet = hosts(registry, cache, 4, ttl=0.05)

    async def scenario():
        for host in fleet:
            with pytest.raises(RegistryError) as failure:
                await host.current()
            assert 59 < failure.value.retry_after <= 60
        await asyncio.sleep(0.1)  # longer than the TTL: still nobody asks
        with pytest.raises(RegistryError):
            await fleet[0].current()
        assert registry.asked == 1
    run(scenario())


def test_a_dead_lock_holder_is_replaced_after_the_lock_expires(cache) -> None:
    registry = FakeRegistry(release())
    survivor, = hosts(registry, cache, 1, ttl=0.4, max_wait=0.05)

    async def scenario():
        # A host took the lock and died before answering; no answer was ever stored.
        assert await cache.add(survivor.lock_key, json.dumps({"host": "dead", "pid": 4242}).encode(), 0.4)
        with pytest.raises(AnswerPending, match=r"waiting for dead \(pid 4242\) to ask the registry"):
            await survivor.current()
        assert registry.asked == 0
        await asyncio.sleep(0.4)  # the lock's expiry is what is under test
        assert (await survivor.current()).tag == "v1.2.3" and registry.asked == 1
        assert json.loads(await cache.get(survivor.lock_key))["host"] == "host0"
    run(scenario())
    assert issubclass(AnswerPending, ArtifactNotReady)  # the daemon waits quietly, counting no failure


def test_while_another_host_refreshes_the_last_answer_is_served(cache) -> None:
    registry = FakeRegistry(release())
    one, two = hosts(registry, cache, 2, ttl=0.2, max_wait=0.05)

    async def scenario():
        await one.current()
        await asyncio.sleep(0.25)
        assert await cache.add(one.lock_key, b'{"host": "slow", "pid": 1}', 5)  # a refresh in flight elsewhere
        registry.answer = release("v9.0.0")
        started = time.monotonic()
        assert (await two.current()).tag == "v1.2.3"
        assert time.monotonic() - started < 0.5 and registry.asked == 1
    run(scenario())


def test_a_broken_cache_means_asking_the_registry_directly(cache, events) -> None:
    registry = FakeRegistry(release())
    broken = BrokenCache(cache)
    host, = hosts(registry, broken, 1)

    async def scenario():
        for _ in range(3):
            assert (await host.current()).tag == "v1.2.3"
        assert registry.asked == 3
        broken.down = False
        await host.current()
        await host.current()
        assert registry.asked == 4
    run(scenario())
    assert [e[1] for e in events if e[1].startswith("shared-cache")] == ["shared-cache-down", "shared-cache-up"]


def test_unreadable_answers_are_ignored(cache) -> None:
    registry = FakeRegistry(release())
    host, = hosts(registry, cache, 1)

    async def scenario():
        await cache.put(host.key, b"{not json", 30)
        assert (await host.current()).tag == "v1.2.3"  # unreadable counts as no answer: take the lock, ask
    run(scenario())
    assert registry.asked == 1


def test_report_lookup_and_close_go_to_the_real_registry_and_the_key_names_the_platform(cache) -> None:
    registry = FakeRegistry(release())
    host, = hosts(registry, cache, 1)
    run(host.report(release(), "assets"))
    assert run(host.release("v1.0.0")) == release("v1.0.0")  # a pin's lookup: this host's, never shared
    assert run(host.release("v1.0.0")) == release("v1.0.0")
    run(host.aclose())
    assert registry.reports == [("v1.2.3", "assets", None)] and registry.closed
    assert registry.looked_up == ["v1.0.0", "v1.0.0"] and registry.asked == 0
    assert host.key.startswith(KEY + ":") and host.key != KEY  # amd64 and arm64 hosts never share an answer
