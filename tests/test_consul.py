"""``consul://`` cache against the Consul KV test server: the protocol, the Cache tests, ACL tokens, and a fleet of 5."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest

from dewy.cache import CACHES
from dewy.cache import consul as consul_module
from dewy.errors import CacheError, UsageError
from tests.consul_server import ConsulServer
from tests.fleet import run_fleet
from tests.harness import free_port
from tests.loopback import FixedAnswer, Trickle
from tests.test_cache import test_add_is_a_lock_with_expiry, test_put_get  # noqa: F401  (run here against Consul)

TOKEN = "b1gs3cr3t-acl-token"


@pytest.fixture
def consul():
    with ConsulServer(token=TOKEN) as server:
        yield server


@pytest.fixture
def cache(consul, monkeypatch):
    """The Cache-protocol tests of test_cache.py, run against Consul KV."""
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN)
    return CACHES.load(CACHES.url(f"consul://127.0.0.1:{consul.port}/dewy/test"))


def run(coro):
    return asyncio.run(coro)


def test_the_test_server_follows_consuls_kv_api(consul) -> None:
    """The CAS, index and ACL semantics of Consul's /v1/kv documentation that the cache relies on."""
    with httpx.Client(base_url=consul.url, headers={"X-Consul-Token": TOKEN}) as http:
        assert http.get("/v1/kv/app/a").status_code == 404
        assert http.put("/v1/kv/app/a", params={"cas": "0"}, content=b"one").json() is True
        assert http.put("/v1/kv/app/a", params={"cas": "0"}, content=b"two").json() is False  # cas=0: create only
        got = http.get("/v1/kv/app/a")
        [entry] = got.json()
        assert base64.b64decode(entry["Value"]) == b"one" and entry["Key"] == "app/a"
        assert got.headers["X-Consul-Index"] == str(entry["ModifyIndex"]) and entry["CreateIndex"] == entry["ModifyIndex"]
        assert http.put("/v1/kv/app/a", params={"cas": str(entry["ModifyIndex"] + 1)}, content=b"x").json() is False
        assert http.put("/v1/kv/app/a", params={"cas": str(entry["ModifyIndex"])}, content=b"three").json() is True
        [updated] = http.get("/v1/kv/app/a").json()
        assert updated["ModifyIndex"] > entry["ModifyIndex"] and updated["CreateIndex"] == entry["CreateIndex"]
        assert http.get("/v1/kv/app/a", params={"raw": ""}).content == b"three"
        http.put("/v1/kv/app/b%252Fc", content=b"")  # an encoded slash stays in the key name
        assert http.get("/v1/kv/app/", params={"keys": ""}).json() == ["app/a", "app/b%2Fc"]
        assert [e["Value"] for e in http.get("/v1/kv/app", params={"recurse": ""}).json()] == [updated["Value"], None]
        assert http.delete("/v1/kv/app/a", params={"cas": str(entry["ModifyIndex"])}).json() is False
        assert http.delete("/v1/kv/app/a", params={"cas": str(updated["ModifyIndex"])}).json() is True
        listed = http.get("/v1/kv/app", params={"recurse": ""})
        assert int(listed.headers["X-Consul-Index"]) > updated["ModifyIndex"]  # the deletion's tombstone counts
        assert http.delete("/v1/kv/app", params={"recurse": ""}).json() is True
        assert http.get("/v1/kv/app", params={"recurse": ""}).status_code == 404
        assert http.put("/v1/kv/big", content=b"x" * (512 * 1024 + 1)).status_code == 413
    assert httpx.get(f"{consul.url}/v1/kv/app/a").status_code == 403
    assert httpx.get(f"{consul.url}/v1/kv/app/a").text.strip() == "Permission denied"
    assert httpx.get(f"{consul.url}/v1/kv/app/a", headers={"X-Consul-Token": "nope"}).text.strip() == "ACL not found"
    assert httpx.get(f"{consul.url}/v1/kv/app/a", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


def test_url_options() -> None:
    cache = CACHES.load(CACHES.url("consul://127.0.0.1:8501/fleet/web?ttl=5m"))
    assert (cache.ttl, cache.prefix, cache.base) == (300.0, "fleet/web", "http://127.0.0.1:8501")
    default = CACHES.load(CACHES.url("consul://consul.service"))
    assert (default.ttl, default.prefix, default.base) == (None, "dewy", "http://consul.service:8500")
    for bad, problem in [("consul://127.0.0.1/x?ttl=1&token=t", "unknown query key 'token'"),
                         ("consul:///dewy", "expected consul://"), ("consul://h/p?ttl=soon", "not a duration")]:
        with pytest.raises(UsageError, match=problem):
            CACHES.load(CACHES.url(bad))


def test_keys_are_one_segment_under_the_prefix_with_expiry_in_the_value(consul, cache) -> None:
    async def scenario():
        await cache.put("registry:ghr://a/b:", b"answer", ttl=30)
        await cache.put("plain", b"kept")
        assert await cache.get("registry:ghr://a/b:") == b"answer"
        await cache.aclose()
    run(scenario())
    assert sorted(consul.kv) == ["dewy/test/plain", "dewy/test/registry:ghr:%2F%2Fa%2Fb:"]
    header, _, value = consul.value("dewy/test/registry:ghr:%2F%2Fa%2Fb:").partition(b"\n")
    assert value == b"answer" and 29 < float(header) - time.time() <= 30
    assert consul.value("dewy/test/plain") == b"-\nkept"


def test_an_expired_lock_goes_to_exactly_one_of_many_contenders(consul, monkeypatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN)
    url = CACHES.url(f"consul://127.0.0.1:{consul.port}/dewy")
    hosts = [CACHES.load(url) for _ in range(8)]

    async def scenario():
        assert await hosts[0].add("lock", b"first", ttl=5)
        assert not any(await asyncio.gather(*(h.add("lock", b"early", ttl=5) for h in hosts[1:])))
        with consul.lock:  # the lock's holder died long ago: its value says it expired a minute back
            consul.kv["dewy/lock"].value = repr(time.time() - 60).encode() + b"\nfirst"
        before.append(len(consul.requests))
        won = await asyncio.gather(*(h.add("lock", f"host{i}".encode(), ttl=5) for i, h in enumerate(hosts)))
        assert sum(won) == 1
        assert await hosts[0].get("lock") == f"host{won.index(True)}".encode()
        for h in hosts:
            await h.aclose()
    before: list[int] = []
    run(scenario())
    # every take-over was a check-and-set against an index the key had; how many contenders still saw it expired
    # when they read it (and so tried) depends on timing
    take_overs = [r for r in consul.requests[before[0]:] if r.method == "PUT"]
    assert take_overs and all("cas" in r.query and 0 < int(r.query["cas"]) < consul.kv["dewy/lock"].modify_index
                              for r in take_overs)


def test_acl_token_from_the_environment_never_shown(consul, monkeypatch) -> None:
    url = CACHES.url(f"consul://127.0.0.1:{consul.port}/dewy")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "wrong-token-value")
    with pytest.raises(CacheError, match="permission denied by Consul's ACLs \\(ACL not found\\).*CONSUL_HTTP_TOKEN") as failure:
        run(CACHES.load(url).get("k"))
    assert "wrong-token-value" not in str(failure.value)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN")
    with pytest.raises(CacheError, match="Permission denied"):
        run(CACHES.load(url).put("k", b"v"))
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN)
    cache = CACHES.load(url)
    run(cache.put("k", b"v"))
    assert run(cache.get("k")) == b"v"


def test_unreachable_consul_is_a_cache_error() -> None:
    cache = CACHES.load(CACHES.url(f"consul://127.0.0.1:{free_port()}/dewy"))
    with pytest.raises(CacheError, match=r"consul://127\.0\.0\.1:\d+/dewy: GET k failed: ConnectError"):
        run(cache.get("k"))


def test_fleet_of_5_asks_github_once_per_ttl(consul, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", TOKEN)
    ttl, interval = 2.0, 0.5

    def read_lock() -> tuple[dict, float]:
        [key] = [k for k in consul.kv if k.startswith("dewy/fleet/registry:") and k.endswith(":lock")]
        header, _, value = consul.value(key).partition(b"\n")
        return json.loads(value), float(header) - time.time()

    figures = run_fleet(tmp_path, f"consul://127.0.0.1:{consul.port}/dewy/fleet?ttl={ttl:g}", hosts=5, ttl=ttl,
                        interval=interval, read_lock=read_lock)
    print(figures.summary())
    assert all(n <= 2 for n in figures.windows) and sum(figures.windows) <= len(figures.windows) + 1, figures.summary()
    assert figures.polls_in_windows >= 5 * len(figures.windows) * ttl / interval / 2, figures.summary()
    assert figures.min_gap > ttl - 0.3, figures.summary()
    assert figures.takeover <= figures.lock_left + interval + 0.5, figures.summary()
    assert figures.takeover <= ttl + interval, figures.summary()


def test_a_trickling_consul_cannot_stall_a_cycle(monkeypatch) -> None:
    monkeypatch.setattr(consul_module, "DEADLINE", 0.5)
    with Trickle(content_type="application/json") as server:
        cache = CACHES.load(CACHES.url(f"consul://127.0.0.1:{server.port}/dewy"))
        started = time.monotonic()
        with pytest.raises(CacheError) as raised:
            run(asyncio.wait_for(cache.get("k"), 5))
    assert time.monotonic() - started < 3
    assert str(raised.value) == f"consul://127.0.0.1:{server.port}/dewy: GET k failed: no complete answer within 0.5 s"


@pytest.mark.parametrize("body, problem", [
    ([5], "KV entry [0] is not an object with a string Key"),
    ([{"Key": "dewy/k", "Value": 7, "ModifyIndex": 1}], "KV entry [0] is not an object"),
    ([{"Key": "dewy/k", "Value": "e30=", "ModifyIndex": "1"}], "KV entry [0] is not an object"),
    ([{"Key": "dewy/k", "Value": "not base64!", "ModifyIndex": 1}], "KV entry [0] ('dewy/k') has a Value that is not base64"),
])
def test_answers_of_the_wrong_shape_are_cache_errors(body, problem: str) -> None:
    with FixedAnswer(body) as server:
        cache = CACHES.load(CACHES.url(f"consul://127.0.0.1:{server.port}/dewy"))
        for call in (cache.get("k"), cache.add("k", b"v", 5)):
            with pytest.raises(CacheError) as raised:
                run(call)
            assert problem in str(raised.value)
