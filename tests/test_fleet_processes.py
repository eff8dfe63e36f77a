"""20 real ``dewy server`` processes (each its own dir and port) rolling out over a real redis-server.

The app is a shell script that sleeps (a bad release exits at once: its start fails and dewy
rolls it back), so the machine's cores go to dewy. One fleet, one policy
(``canary=1,wave=25%,max-parallel=5``), four releases in turn:

- v1.0.0 (good) reaches all 20 canary first, then waves, never more than 5 deploying at once:
  sampled from the shared state while it runs, and from the hosts' own log timestamps;
- v2.0.0 fails to start on the canary: it alone deploys it, no other host fetches it, and
  the fleet quarantines it;
- v3.0.0 (good) while hosts are killed with SIGKILL mid-rollout (the canary among them): the
  survivors complete it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from dewy.cache import CACHES
from dewy.fleet.plan import deploying
from dewy.fleet.stores import app_key, open_store
from tests.conftest import host_artifact, tar_gz
from tests.harness import Dewy, free_port
from tests.test_redis import RedisServer

HOSTS = 20
TTL = 3.0
POLICY = f"canary=1,wave=25%,max-parallel=5,bake=1s,ttl={TTL:g}s,on-failure=rollback"
GOOD = "#!/bin/sh\nexec sleep 600\n"
BAD = "#!/bin/sh\necho 'cannot open the database' >&2\nexit 3\n"
# fails on a host whose dir holds FAIL_HERE (releases/TS/run -> the dir)
PICKY = '#!/bin/sh\ntest -e "$(dirname "$(dirname "$(dirname "$(readlink -f "$0")")")")/FAIL_HERE" && exit 3\nexec sleep 600\n'


def publish(registry: Path, tag: str, script: str) -> None:
    directory = registry / tag
    directory.mkdir(parents=True)
    staged = directory / ".upload"
    staged.write_bytes(tar_gz({"run": script}, modes={"run": 0o755}))
    staged.rename(directory / host_artifact())


class Sampler:
    """How many hosts the shared state says are deploying, sampled every 50 ms in a thread."""

    def __init__(self, redis_port: int, registry: str) -> None:
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(redis_port, registry)), daemon=True)
        self._thread.start()

    async def _run(self, port: int, registry: str) -> None:
        cache = CACHES.load(CACHES.url(f"redis://127.0.0.1:{port}/5"))
        store = open_store(cache, app_key(registry, None))
        while not self._stop.is_set():
            fleet, hosts = await store.read()
            self.most = max(self.most, len(deploying(fleet, hosts, time.time())))
            self.samples += 1
            await asyncio.sleep(0.05)
        await cache.aclose()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _when(record: dict) -> float:
    return datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()


def overlap(hosts: list[Dewy], version: str, killed: dict[int, float] | None = None) -> int:
    """The most hosts whose log shows them between ``deploying`` and ``deployed``/``rollback`` of ``version`` at once;
    a host killed meanwhile (``killed``: its index -> when) counts until its heartbeat's TTL has run out."""
    edges = []
    for n, dewy in enumerate(hosts):
        start = next((_when(r) for r in dewy.seen if r.get("event") == "deploying" and r.get("version") == version), None)
        end = next((_when(r) for r in dewy.seen if r.get("event") in ("deployed", "rollback")
                    and r.get("version") == version), None)
        if end is None and n in (killed or {}):
            end = killed[n] + TTL
        if start is not None:
            edges += [(start, 1), (end if end is not None else float("inf"), -1)]
    most = now = 0
    for _, step in sorted(edges):
        now += step
        most = max(most, now)
    return most


def drain(hosts: list[Dewy]) -> None:
    for dewy in hosts:
        while not dewy.events.empty():
            dewy.seen.append(dewy.events.get())


def wait_all(hosts: list[Dewy], event: str, version: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for dewy in hosts:
        dewy.wait_for(event, timeout=max(1.0, deadline - time.monotonic()), already=True, version=version)


def redeployed_after(dewy: Dewy, first: str, then: str, timeout: float = 60) -> None:
    """``then`` deployed after ``first`` was (a rollback by redeploying the previous release)."""
    records = dewy.seen
    at = next(i for i, r in enumerate(records) if r.get("event") == "deployed" and r.get("version") == first)
    if not any(r.get("event") == "deployed" and r.get("version") == then for r in records[at:]):
        dewy.wait_for("deployed", timeout=timeout, version=then)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.close()


def fleet_host(home: Path, registry: str, redis_port: int, policy: str, database: int = 0) -> Dewy:
    """A real ``dewy server`` in ``home`` of the fleet rolling out ``registry`` over the redis-server on ``redis_port``."""
    home.mkdir()
    return Dewy(["server", "-r", registry, "-i", "0.5", "-c", f"redis://127.0.0.1:{redis_port}/{database}",
                 "--rollout", policy, "-p", f"127.0.0.1:{free_port()}", "--settle-time", "0.3",
                 "-d", str(home / "site"), "--", "/bin/sh", "current/run"], cwd=home)


def test_20_processes_canary_then_waves_a_failing_canary_alone_and_kill_9_mid_rollout(tmp_path, redis_server) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    url = registry.as_uri()
    publish(registry, "v1.0.0", GOOD)
    sampler = Sampler(redis_server.port, url)
    hosts: list[Dewy] = []
    try:
        for n in range(HOSTS):
            hosts.append(fleet_host(tmp_path / f"host{n:02}", url, redis_server.port, POLICY, database=5))
        wait_all(hosts, "deployed", "v1.0.0", timeout=120)
        drain(hosts)
        admitted = sorted((_when(r), n) for n, dewy in enumerate(hosts) for r in dewy.seen
                          if r.get("event") == "fleet-admitted" and r.get("version") == "v1.0.0")
        assert len(admitted) == HOSTS
        waves = {}
        for n, dewy in enumerate(hosts):
            record = next(r for r in dewy.seen if r.get("event") == "fleet-admitted" and r.get("version") == "v1.0.0")
            waves.setdefault(record["wave"], []).append(n)
        assert len(waves[0]) == 1 and admitted[0][1] == waves[0][0]  # the canary alone, first
        assert len(waves) >= 4 and all(1 <= len(members) <= 5 for members in waves.values())  # 25% of at most 20
        assert overlap(hosts, "v1.0.0") <= 5
        assert sampler.most <= 5 and sampler.samples > 20

        # v2.0.0 fails to start on the canary: deployed there only, fetched nowhere else
        publish(registry, "v2.0.0", BAD)
        hosts[0].wait_for("fleet-quarantine", timeout=60, version="v2.0.0")
        for dewy in hosts[1:]:
            dewy.wait_for("fleet-quarantined", timeout=30, already=True, version="v2.0.0")
        drain(hosts)
        tried = [n for n, dewy in enumerate(hosts) if any(r.get("event") == "deploying" and r.get("version") == "v2.0.0"
                                                           for r in dewy.seen)]
        assert tried == [0]
        read = [n for n, dewy in enumerate(hosts) if any(r.get("event") == "downloaded" and r.get("version") == "v2.0.0"
                                                          for r in dewy.seen)]
        assert read == [0], "the canary alone read the artifact's bytes"
        for n in range(1, HOSTS):
            assert not list((tmp_path / f"host{n:02}").rglob("v2.0.0*")), "no other host has anything of it"

        # v3.0.0 while hosts die: the canary (host00) once admitted, then the new canary's first wave's first host
        publish(registry, "v3.0.0", GOOD)
        hosts[0].wait_for("fleet-admitted", timeout=60, version="v3.0.0")
        hosts[0].kill()
        killed = {0: time.time()}
        hosts[2].wait_for("fleet-admitted", timeout=60, version="v3.0.0")
        hosts[2].kill()
        killed[2] = time.time()
        survivors = [d for d in hosts if d.process.poll() is None]
        assert len(survivors) == HOSTS - 2
        wait_all(survivors, "deployed", "v3.0.0", timeout=120)
        drain(hosts)
        assert overlap(hosts, "v3.0.0", killed) <= 5
        assert sampler.most <= 5

        # dewy fleet status, from the app's config file, on any host
        time.sleep(TTL)  # the measured quantity: the killed hosts' heartbeats run out
        config = tmp_path / "shop.toml"
        config.write_text(f'mode = "server"\nregistry = "{url}"\ncache = "redis://127.0.0.1:{redis_server.port}/5"\n'
                          f'rollout = {{ canary = 1, wave = "25%", max_parallel = 5, bake = "1s" }}\n'
                          f'[server]\ncommand = ["/bin/sh", "current/run"]\n')
        shown = subprocess.run([sys.executable, "-m", "dewy", "fleet", "status", "--config", str(config), "--json"],
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        info = json.loads(shown.stdout)
        states = {h["host"].rsplit("/", 2)[-2]: (h["version"], h["state"]) for h in info["hosts"]}
        assert states.pop("host00")[1] == states.pop("host02")[1] == "gone"
        assert set(states.values()) == {("v3.0.0", "serving")} and len(states) == HOSTS - 2
        assert info["rollout"]["version"] == "v3.0.0" and info["rollout"]["previous"] == "v1.0.0"
        assert info["quarantine"]["v2.0.0"]["host"].endswith("/host00/site")
        assert "exited with status 3" in info["quarantine"]["v2.0.0"]["reason"]
        table = subprocess.run([sys.executable, "-m", "dewy", "fleet", "status", "--config", str(config)],
                               capture_output=True, text=True, timeout=30).stdout
        assert "rollout: v1.0.0 -> v3.0.0" in table and "quarantined: v2.0.0: failed on" in table
        assert len([line for line in table.splitlines() if " serving " in line]) == HOSTS - 2

        # v4.0.0 fails on host10 only, in the second wave: rolled back there and on every host that took it;
        # no host of a later wave deploys it
        (tmp_path / "host10" / "site" / "FAIL_HERE").touch()
        publish(registry, "v4.0.0", PICKY)
        failed = hosts[10].wait_for("fleet-admitted", timeout=120, version="v4.0.0")
        assert failed["wave"] == 2
        hosts[10].wait_for("fleet-quarantine", timeout=60, version="v4.0.0")
        for dewy in survivors:
            dewy.wait_for(("fleet-quarantined", "fleet-rollback"), timeout=30, already=True, version="v4.0.0")
        drain(hosts)
        took = [n for n, dewy in enumerate(hosts) if any(r.get("event") == "deployed" and r.get("version") == "v4.0.0"
                                                          for r in dewy.seen)]
        assert len(took) >= 6  # the canary, the first wave (and hosts of the second that deployed it)
        for n in took:
            redeployed_after(hosts[n], "v4.0.0", "v3.0.0")
        waves = {n: next((r["wave"] for r in dewy.seen if r.get("event") == "fleet-admitted"
                          and r.get("version") == "v4.0.0"), None) for n, dewy in enumerate(hosts)}
        for n, dewy in enumerate(hosts):
            if waves[n] is None or waves[n] > 2:
                assert not any(r.get("event") == "deploying" and r.get("version") == "v4.0.0" for r in dewy.seen), n
        assert any(wave is None for n, wave in waves.items() if n not in killed)  # later waves existed
    finally:
        sampler.close()
        for dewy in hosts:
            if dewy.process.poll() is None:
                dewy.stop()
    assert all(dewy.process.returncode in (0, -9) for dewy in hosts), [d.seen[-5:] for d in hosts]
    print(f"max deploying sampled from Redis: {sampler.most} over {sampler.samples} samples", file=sys.stderr)
