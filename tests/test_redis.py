"""``redis://`` cache against a real redis-server: the Cache protocol, passwords, TLS, and a fleet of 20 dewy processes."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from dewy.cache import CACHES
from dewy.errors import CacheError, UsageError
from tests.fleet import run_fleet
from tests.harness import free_port
from tests.test_cache import test_add_is_a_lock_with_expiry, test_put_get  # noqa: F401  (run here against Redis)

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A real redis-server on 127.0.0.1 (ephemeral port), nothing persisted; stopped by ``close``."""

    def __init__(self, directory: Path, *extra: str) -> None:
        if not Path(REDIS_SERVER).exists():
            raise RuntimeError("redis-server is not installed (scripts/test installs the redis-server package)")
        self.port = free_port()
        tls = "--tls-port" in extra
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", "0" if tls else str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), *[a.replace("PORT", str(self.port)) for a in extra]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        # Readiness: redis-server says so on stdout; its log is read to the end so the pipe never fills.
        self.log: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.log.append(line)
                if "Ready to accept connections" in line:
                    ready.set()
            ready.set()  # exited

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(10) or self.process.poll() is not None:
            self.close()
            raise RuntimeError(f"redis-server did not start: {''.join(self.log[-5:])}")

    def client(self, db: int = 0, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, **kwargs)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.close()


@pytest.fixture
def cache(server):
    """The Cache-protocol tests of test_cache.py, run against Redis (a clean database each time)."""
    server.client(db=3).flushdb()
    return CACHES.load(CACHES.url(f"redis://127.0.0.1:{server.port}/3"))


def run(coro):
    return asyncio.run(coro)


def test_url_options(server, monkeypatch) -> None:
    cache = CACHES.load(CACHES.url(f"redis://127.0.0.1:{server.port}/2?ttl=30s"))
    assert (cache.ttl, cache.db, cache.tls) == (30.0, 2, False)
    assert CACHES.load(CACHES.url("redis://127.0.0.1")).ttl is None
    assert CACHES.load(CACHES.url("redis://127.0.0.1")).port == 6379
    assert CACHES.load(CACHES.url("rediss://cache.example:6380/0")).tls
    for bad, problem in [("redis://127.0.0.1/0?tll=3", "did you mean 'ttl'"), ("redis://127.0.0.1/x", "must be a number"),
                         ("redis:///0", "expected redis://"), ("redis://127.0.0.1/0?ttl=0", "greater than zero")]:
        with pytest.raises(UsageError, match=problem):
            CACHES.load(CACHES.url(bad))


def test_keys_are_namespaced_and_expire_on_the_server(server, cache) -> None:
    async def scenario():
        await cache.put("registry:ghr://a/b:", b"answer", ttl=30)
        assert await cache.add("registry:ghr://a/b::lock", b"me", ttl=2)
        await cache.aclose()
    run(scenario())
    raw = server.client(db=3)
    raw.set("not-dewy", b"x")
    assert sorted(raw.keys()) == [b"dewy:registry:ghr://a/b:", b"dewy:registry:ghr://a/b::lock", b"not-dewy"]
    assert 1900 < raw.pttl("dewy:registry:ghr://a/b::lock") <= 2000  # SET NX PX: the server keeps the expiry
    assert 29_000 < raw.pttl("dewy:registry:ghr://a/b:") <= 30_000


def test_password_from_url_or_environment_and_never_shown(tmp_path, monkeypatch) -> None:
    secured = RedisServer(tmp_path, "--requirepass", "s3cret-pw")
    try:
        url = f"redis://:s3cret-pw@127.0.0.1:{secured.port}/0"
        cache = CACHES.load(CACHES.url(url))
        run(cache.put("k", b"v"))
        assert run(cache.get("k")) == b"v"
        assert "s3cret-pw" not in str(CACHES.url(url)) and "s3cret-pw" not in repr(cache)

        monkeypatch.setenv("REDIS_PASSWORD", "s3cret-pw")
        assert run(CACHES.load(CACHES.url(f"redis://127.0.0.1:{secured.port}/0")).get("k")) == b"v"

        monkeypatch.setenv("REDIS_PASSWORD", "wrong-pw")
        with pytest.raises(CacheError) as failure:
            run(CACHES.load(CACHES.url(f"redis://127.0.0.1:{secured.port}/0")).get("k"))
        assert "wrong-pw" not in str(failure.value) and f"127.0.0.1:{secured.port}" in str(failure.value)

        monkeypatch.delenv("REDIS_PASSWORD")
        with pytest.raises(CacheError, match="AuthenticationError.*REDIS_PASSWORD"):
            run(CACHES.load(CACHES.url(f"redis://127.0.0.1:{secured.port}/0")).get("k"))
    finally:
        secured.close()


def test_unreachable_redis_is_a_cache_error_quickly() -> None:
    cache = CACHES.load(CACHES.url(f"redis://127.0.0.1:{free_port()}/0?ttl=2"))
    started = time.monotonic()
    with pytest.raises(CacheError, match=r"redis://127\.0\.0\.1:\d+/0: GET failed: ConnectionError"):
        run(cache.get("k"))
    assert time.monotonic() - started < 3


def test_rediss_verifies_the_server_certificate(tmp_path, monkeypatch) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    secured = RedisServer(tmp_path, "--tls-port", "PORT", "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                          "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
    try:
        url = CACHES.url(f"rediss://127.0.0.1:{secured.port}/0")
        with pytest.raises(CacheError, match="certificate verify failed"):
            run(CACHES.load(url).get("k"))  # an unknown CA is refused
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the operator's CA bundle
        cache = CACHES.load(url)
        run(cache.put("k", b"over tls"))
        assert run(cache.get("k")) == b"over tls"
        assert secured.client(ssl=True, ssl_ca_certs=str(cert)).get("dewy:k") == b"over tls"
    finally:
        secured.close()


def test_unknown_cache_query_key_exits_2(tmp_path) -> None:
    result = subprocess.run([sys.executable, "-m", "dewy", "assets", "--registry", (tmp_path / "r").as_uri(),
                             "-c", "redis://127.0.0.1:6379/0?ttl=2&prefix=x"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dewy: error: redis://127.0.0.1:6379/0?ttl=2&prefix=x: unknown query key 'prefix'; known keys: ttl"]


def test_fleet_of_20_asks_github_once_per_ttl(server, tmp_path) -> None:
    raw = server.client(db=0)
    raw.flushdb()
    ttl, interval = 2.0, 0.5

    def read_lock() -> tuple[dict, float]:
        [key] = raw.keys("dewy:registry:*:lock")
        return json.loads(raw.get(key)), raw.pttl(key) / 1000

    figures = run_fleet(tmp_path, f"redis://127.0.0.1:{server.port}/0?ttl={ttl:g}", hosts=20, ttl=ttl,
                        interval=interval, read_lock=read_lock)
    print(figures.summary())
    assert all(n <= 2 for n in figures.windows) and sum(figures.windows) <= len(figures.windows) + 1, figures.summary()
    assert figures.polls_in_windows >= 20 * len(figures.windows) * ttl / interval / 2, figures.summary()
    assert figures.min_gap > ttl - 0.3, figures.summary()  # never two refreshes in one TTL, even around the kill
    assert figures.takeover <= figures.lock_left + interval + 0.5, figures.summary()
    assert figures.takeover <= ttl + interval, figures.summary()
