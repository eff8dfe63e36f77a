"""Fleet rollouts on a real redis-server: operations per second and time to reach the fleet, 20 / 100 / 500 hosts.

Each host is an in-process simulated dewy (tests/fleet_agents.py): a real Coordinator on the
real Redis store, polling every ``interval`` (jittered), a deploy taking ``DEPLOY`` seconds.
For each fleet size, the same release is rolled out twice on fresh state:

- with the policy ``canary=1,wave=25%,max-parallel=P,bake=BAKE`` (P a tenth of the fleet);
- "every host deploys at once": no coordination, each host deploys when it polls.

Printed side by side: the time from publishing to the last host serving, the Redis commands
per second during the rollout (INFO commandstats, the whole fleet), per host per poll, and
the most hosts deploying at once. Every run is bounded (TIMEOUT per rollout).

    .venv/bin/python bench/fleet.py            # 20, 100, 500 hosts (about 2 minutes)
    .venv/bin/python bench/fleet.py 20 100     # some sizes

Targets: the policy is held (canary alone, never more than P deploying) and a rollout's
coordination costs at most 10 Redis commands per host per poll.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

from dewy.cache import CACHES  # noqa: E402
from dewy.fleet.plan import deploying  # noqa: E402
from dewy.fleet.policy import parse_rollout  # noqa: E402
from dewy.fleet.stores import app_key, open_store  # noqa: E402
from tests.fleet_agents import agents, release  # noqa: E402
from tests.test_redis import RedisServer  # noqa: E402

SIZES = (20, 100, 500)
DEPLOY = 0.5  # seconds a simulated deploy takes
BAKE = 1.0
TIMEOUT = 120.0  # one rollout
COMMANDS_PER_POLL = 10


def interval_for(hosts: int) -> float:
    """Poll interval: the simulated hosts share this process's one core, so a big fleet polls less often."""
    return max(0.25, hosts / 400)


def commands(client) -> int:
    return sum(v["calls"] for k, v in client.info("commandstats").items() if k != "cmdstat_info")


async def rollout(port: int, hosts: int, coordinated: bool, run: int) -> dict:
    """One rollout of v2.0.0 over ``hosts`` simulated hosts on v1.0.0; its figures."""
    parallel = max(1, hosts // 10)
    policy = parse_rollout(f"canary=1,wave=25%,max-parallel={parallel},bake={BAKE:g}s")
    interval = interval_for(hosts)
    cache = CACHES.load(CACHES.url(f"redis://127.0.0.1:{port}/0"))
    store = open_store(cache, app_key(f"file:///bench/{run}", None))
    fleet = agents(store, policy, hosts, time.time, ttl=max(3 * interval, 3.0), deploy_time=DEPLOY)
    own = [CACHES.load(CACHES.url(f"redis://127.0.0.1:{port}/0")) for _ in fleet]
    for agent, connection in zip(fleet, own):  # each host its own connection, as real hosts have
        agent.coordinator.store = open_store(connection, app_key(f"file:///bench/{run}", None))
    polls = 0
    most = 0

    async def host(agent, newest) -> None:
        nonlocal polls
        await asyncio.sleep(random.uniform(0, interval))
        while agent.version != newest.tag:
            if coordinated:
                await agent.step(newest)
            elif agent.busy is None:
                agent.busy = (newest, time.time() + DEPLOY)
            elif time.time() >= agent.busy[1]:
                agent.version, agent.busy = newest.tag, None
            polls += 1
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))

    async def sample(done: asyncio.Event) -> None:
        nonlocal most
        while not done.is_set():
            if coordinated:
                state, beats = await store.read()
                most = max(most, len(deploying(state, beats, time.time())))
            else:
                most = max(most, sum(1 for agent in fleet if agent.busy))
            await asyncio.sleep(0.05)

    if coordinated:  # registered on v1.0.0 before the release appears
        await asyncio.gather(*(agent.coordinator.beat() for agent in fleet))
    client = c_redis(port)
    before = commands(client)
    newest = release("v2.0.0")
    started = time.monotonic()
    done = asyncio.Event()
    sampler = asyncio.ensure_future(sample(done))
    await asyncio.wait_for(asyncio.gather(*(host(agent, newest) for agent in fleet)), TIMEOUT)
    elapsed = time.monotonic() - started
    done.set()
    await sampler
    used = commands(client) - before
    for connection in (cache, *own):
        await connection.aclose()
    starts = sorted(agent.started.get("v2.0.0", 0.0) for agent in fleet)
    return {"hosts": hosts, "policy": f"canary=1,wave=25%,max-parallel={parallel},bake={BAKE:g}s" if coordinated
            else "every host at once", "interval": interval, "elapsed": elapsed, "ops": used / elapsed,
            "per_poll": used / max(polls, 1), "most": most, "parallel": parallel,
            "canary_alone": not coordinated or (len(starts) > 1 and starts[1] - starts[0] >= DEPLOY)}


def c_redis(port: int):
    import redis

    return redis.Redis(host="127.0.0.1", port=port)


def main() -> int:
    sizes = [int(a) for a in sys.argv[1:]] or list(SIZES)
    c.banner("fleet rollouts on redis-server (in-process simulated hosts)")
    rows, results = [], []
    with tempfile.TemporaryDirectory() as work:
        server = RedisServer(Path(work))
        try:
            for run, hosts in enumerate(sizes):
                for coordinated in (True, False):
                    figures = asyncio.run(rollout(server.port, hosts, coordinated, 2 * run + coordinated))
                    rows.append((hosts, figures["policy"], f"{figures['interval']:g}s", f"{figures['elapsed']:.1f}s",
                                 f"{figures['ops']:.0f}", f"{figures['per_poll']:.1f}", figures["most"]))
                    if coordinated:
                        held = figures["most"] <= figures["parallel"] and figures["canary_alone"]
                        cheap = figures["per_poll"] <= COMMANDS_PER_POLL
                        results.append(c.verdict(f"{hosts} hosts: policy held", held,
                                                 f"at most {figures['most']} deploying (max-parallel "
                                                 f"{figures['parallel']}), canary alone: {figures['canary_alone']}"))
                        results.append(c.verdict(f"{hosts} hosts: Redis commands per host per poll", cheap,
                                                 f"{figures['per_poll']:.1f} (target <= {COMMANDS_PER_POLL})"))
        finally:
            server.close()
    c.table("time for v2.0.0 to reach every host, and what it costs Redis", rows,
            ("hosts", "policy", "poll", "to the whole fleet", "Redis ops/s", "ops/host/poll", "most deploying"))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
