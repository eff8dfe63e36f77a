"""Fleet rollouts of many in-process hosts on the real shared stores (redis-server, the Consul test server).

Each host is a real Coordinator; the hosts poll all at once each round (their optimistic
transactions race) on a fake clock, so bake times and TTLs are exact and quick.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from dewy.cache import CACHES
from dewy.fleet.coordinator import FORGET_AFTER, Coordinator
from dewy.fleet.plan import advance
from dewy.fleet.policy import parse_rollout
from dewy.registry.shared import release_to_json
from dewy.fleet.stores import app_key, open_store
from dewy.notifiers import Notifications
from tests.consul_server import ConsulServer
from tests.fleet_agents import FakeClock, agents, deploying_now, poll_round, release
from tests.test_redis import RedisServer

TTL = 30.0
DEPLOY = 20.0  # seconds on the clock a deploy takes
ROUND = 5.0  # seconds on the clock between polls


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.close()


def _store(kind: str, request, tmp_path):
    """A fresh app's store on real Redis or on the Consul test server."""
    if kind == "redis":
        cache = CACHES.load(CACHES.url(f"redis://127.0.0.1:{request.getfixturevalue('redis_server').port}/0"))
        yield open_store(cache, app_key(f"file://{tmp_path}", None))
        asyncio.run(cache.aclose())
    else:
        with ConsulServer() as consul:
            cache = CACHES.load(CACHES.url(f"consul://127.0.0.1:{consul.port}/dewy"))
            yield open_store(cache, app_key(f"file://{tmp_path}", None))
            asyncio.run(cache.aclose())


@pytest.fixture(params=["redis", "consul"])
def store(request, tmp_path):
    yield from _store(request.param, request, tmp_path)


@pytest.fixture
def redis_store(request, tmp_path):
    """Scenarios whose store side the other tests already run on Consul too (the Consul test server is slow)."""
    yield from _store("redis", request, tmp_path)


class Recorder:
    quiet = False

    def __init__(self) -> None:
        self.messages = []

    async def send(self, message) -> None:
        self.messages.append(message)

    async def aclose(self) -> None:
        pass


async def run(fleet, newest, clock, store, rounds: int = 200) -> list[int]:
    """Poll rounds until every live host serves ``newest`` or nothing moves; deploying counts sampled each round."""
    samples = []
    for _ in range(rounds):
        await poll_round(fleet, newest)
        samples.append(await deploying_now(store, clock))
        clock.now += ROUND
        if all(a.version == newest.tag for a in fleet if not a.dead):
            break
    return samples


def test_a_good_release_reaches_20_hosts_canary_first_then_waves_never_more_than_5_at_once(store) -> None:
    policy = parse_rollout("canary=1,wave=25%,max-parallel=5,bake=60s")
    clock = FakeClock()
    fleet = agents(store, policy, 20, clock, ttl=TTL, deploy_time=DEPLOY)

    async def scenario():
        await poll_round(fleet, release("v1.0.0"))  # everyone is on v1.0.0 and registered
        return await run(fleet, release("v2.0.0"), clock, store)

    samples = asyncio.run(scenario())
    assert all(a.version == "v2.0.0" and a.fetched == ["v2.0.0"] for a in fleet)
    assert max(samples) == 5
    starts = sorted(a.started["v2.0.0"] for a in fleet)
    canary = starts[0]
    assert starts.count(canary) == 1  # the canary alone
    waves = sorted(set(starts[1:]))
    assert [starts.count(t) for t in waves] == [5, 5, 5, 4]  # 25% of the live fleet each
    done = canary + DEPLOY
    for start in waves:  # each wave after the previous served for the bake
        assert start >= done + 60
        done = start + DEPLOY


def test_a_release_failing_on_the_canary_is_fetched_by_it_alone_and_quarantined_for_the_fleet(redis_store) -> None:
    store = redis_store
    policy = parse_rollout("canary=1,wave=25%,max-parallel=5,bake=60s")
    clock = FakeClock()
    recorder = Recorder()
    notifications = Notifications([recorder], "shop")
    fleet = agents(store, policy, 20, clock, ttl=TTL, deploy_time=DEPLOY, bad={0: {"v2.0.0"}},
                   notifications=notifications)

    async def scenario():
        await poll_round(fleet, release("v1.0.0"))
        await run(fleet, release("v2.0.0"), clock, store, rounds=60)
        await notifications.flush()
        return await store.read()

    state, hosts = asyncio.run(scenario())
    assert [a.name for a in fleet if a.fetched] == ["host000"]
    assert all(a.version == "v1.0.0" for a in fleet)
    quarantined = state.quarantine["v2.0.0"]
    assert quarantined.host == "host000" and "exited with status 1" in quarantined.reason
    [message] = recorder.messages
    assert message.summary == "v2.0.0 is quarantined for the fleet: it failed on host000"
    assert message.details["reason"].startswith("v2.0.0 exited with status 1")


def test_a_crash_in_the_second_wave_rolls_back_the_hosts_that_took_it_and_stops_later_waves(redis_store) -> None:
    store = redis_store
    policy = parse_rollout("canary=1,wave=25%,max-parallel=5,bake=60s,on-failure=rollback")
    clock = FakeClock()
    fleet = agents(store, policy, 20, clock, ttl=TTL, deploy_time=DEPLOY, bad={8: {"v2.0.0"}})
    first = release_to_json(release("v1.0.0"))

    async def scenario():
        await poll_round(fleet, release("v1.0.0"))  # registered, on v1.0.0: its rollout is complete at once
        await store.update(lambda state, hosts: advance(policy, state, hosts, first, clock.now))
        await run(fleet, release("v2.0.0"), clock, store, rounds=80)

    asyncio.run(scenario())
    took = [a.name for a in fleet if "v2.0.0" in a.fetched]
    assert took[:6] == ["host000", "host001", "host002", "host003", "host004", "host005"]  # canary, first wave
    assert "host008" in took and len(took) == 11  # the second wave took it, host008 failed
    assert all(a.version == "v1.0.0" for a in fleet)  # back everywhere
    assert all(a.fetched == ["v2.0.0", "v1.0.0"] for a in fleet if a.name in took and a.name != "host008")
    assert all(not a.fetched for a in fleet if a.name not in took)  # later waves never fetched it


def test_hosts_killed_mid_rollout_never_stall_it(store) -> None:
    policy = parse_rollout("canary=1,wave=25%,max-parallel=5,bake=60s")
    clock = FakeClock()
    fleet = agents(store, policy, 20, clock, ttl=TTL, deploy_time=DEPLOY)

    async def scenario():
        await poll_round(fleet, release("v1.0.0"))
        newest = release("v2.0.0")
        await poll_round(fleet, newest)
        fleet[0].kill()  # the canary, mid-deploy
        for _ in range(100):  # until a wave deploys
            await poll_round(fleet, newest)
            clock.now += ROUND
            busy = [agent for agent in fleet if agent.busy and not agent.dead]
            if len(busy) > 1:
                busy[0].kill()  # one host of that wave, mid-deploy
                break
        return await run(fleet, newest, clock, store)

    asyncio.run(scenario())
    survivors = [a for a in fleet if not a.dead]
    assert len(survivors) == 18
    assert all(a.version == "v2.0.0" for a in survivors)


def test_a_failing_bake_check_on_the_canary_quarantines_the_release_and_rolls_it_back(redis_store, tmp_path) -> None:
    store = redis_store
    alarm = tmp_path / "alarm"
    policy = parse_rollout("canary=1,wave=25%,bake=60s,on-failure=rollback")
    policy = replace(policy, bake_check=f"if test -e {alarm}; then echo 'error rate 12%'; exit 1; fi")
    clock = FakeClock()
    fleet = agents(store, policy, 5, clock, ttl=TTL, deploy_time=DEPLOY)
    first = release_to_json(release("v1.0.0"))

    async def scenario():
        await poll_round(fleet, release("v1.0.0"))
        await store.update(lambda state, hosts: advance(policy, state, hosts, first, clock.now))
        newest = release("v2.0.0")
        while fleet[0].version != "v2.0.0":
            await poll_round(fleet, newest)
            clock.now += ROUND
        for _ in range(3):  # baking, the check passes
            await poll_round(fleet, newest)
            clock.now += ROUND
        alarm.touch()
        await run(fleet, newest, clock, store, rounds=30)
        return await store.read()

    state, _ = asyncio.run(scenario())
    quarantined = state.quarantine["v2.0.0"]
    assert quarantined.host == "host000"
    assert "exited with status 1: error rate 12%" in quarantined.reason
    assert fleet[0].fetched == ["v2.0.0", "v1.0.0"] and fleet[0].version == "v1.0.0"  # rolled back
    assert all(not agent.fetched for agent in fleet[1:])


def test_a_crash_of_the_canary_within_its_bake_quarantines_the_release(redis_store) -> None:
    store = redis_store
    policy = parse_rollout("canary=1,wave=25%,bake=60s")
    clock = FakeClock()
    fleet = agents(store, policy, 5, clock, ttl=TTL, deploy_time=DEPLOY)

    async def scenario():
        await poll_round(fleet, release("v1.0.0"))
        fleet[0].crashes = 2  # crashed before this release: not its fault
        newest = release("v2.0.0")
        while fleet[0].version != "v2.0.0":
            await poll_round(fleet, newest)
            clock.now += ROUND
        await poll_round(fleet, newest)
        fleet[0].crashes += 1  # the supervisor restarted it once
        await run(fleet, newest, clock, store, rounds=30)
        return await store.read()

    state, hosts = asyncio.run(scenario())
    assert state.quarantine["v2.0.0"].reason == "v2.0.0 crashed 1 time(s) within its bake time (60s)"
    assert all(not agent.fetched for agent in fleet[1:])
    assert fleet[0].version == "v2.0.0"  # on-failure=halt: it stays, nobody else takes it


def test_a_fleet_pause_holds_the_rollout_and_resume_lets_it_go_on(redis_store) -> None:
    store = redis_store
    policy = parse_rollout("canary=1,wave=25%,max-parallel=5,bake=60s")
    clock = FakeClock()
    fleet = agents(store, policy, 20, clock, ttl=TTL, deploy_time=DEPLOY)
    v2 = release("v2.0.0")

    async def scenario():
        await poll_round(fleet, release("v1.0.0"))
        while not any(a.busy for a in fleet):  # the canary starts
            await poll_round(fleet, v2)
            clock.now += ROUND
        await fleet[7].coordinator.pause(0)  # an operator on host007: dewy pause NAME --fleet
        for _ in range(100):  # 500s on the clock: the canary finishes and bakes; nobody else starts
            await poll_round(fleet, v2)
            clock.now += ROUND
        held = [a.name for a in fleet if a.fetched]
        document, _ = await store.read()
        ended = await fleet[3].coordinator.resume()
        samples = await run(fleet, v2, clock, store)
        return held, document, ended, samples

    held, document, ended, samples = asyncio.run(scenario())
    assert held == ["host000"] and fleet[0].version == "v2.0.0"
    assert document.paused.host == "host007" and ended == document.paused
    assert all(a.version == "v2.0.0" and a.fetched == ["v2.0.0"] for a in fleet)  # resumed: it reached everyone
    assert max(samples) == 5


def test_rollback_of_the_fleet_takes_every_host_that_took_the_release_back_whatever_on_failure_says(redis_store) -> None:
    store = redis_store
    policy = parse_rollout("canary=1,wave=25%,max-parallel=5,bake=60s,on-failure=halt")
    clock = FakeClock()
    fleet = agents(store, policy, 20, clock, ttl=TTL, deploy_time=DEPLOY)
    first = release_to_json(release("v1.0.0"))
    v2 = release("v2.0.0")

    async def scenario():
        await poll_round(fleet, release("v1.0.0"))
        await store.update(lambda state, hosts: advance(policy, state, hosts, first, clock.now))
        while sum(a.version == "v2.0.0" for a in fleet) < 6:  # the canary and the first wave serve it
            await poll_round(fleet, v2)
            clock.now += ROUND
        before, after, hosts = await fleet[12].coordinator.roll_back(0)  # dewy rollback NAME --fleet on host012
        await run(fleet, v2, clock, store, rounds=40)
        return after, hosts

    after, hosts = asyncio.run(scenario())
    took = [a.name for a in fleet if "v2.0.0" in a.fetched]
    assert took == ["host000", "host001", "host002", "host003", "host004", "host005"]
    assert sorted(name for name, host in hosts.items() if host.version == "v2.0.0") == took
    quarantined = after.quarantine["v2.0.0"]
    assert quarantined.rollback and quarantined.previous == first and quarantined.operator == 0
    assert quarantined.reason == "rolled back for the fleet by uid 0 on host012"
    assert all(a.version == "v1.0.0" for a in fleet)  # back everywhere
    assert all(a.fetched == ["v2.0.0", "v1.0.0"] for a in fleet if a.name in took)
    assert all(not a.fetched for a in fleet if a.name not in took)  # nobody else ever fetched it


def test_hosts_held_by_their_own_gates_never_stall_the_rollout_and_follow_once_let_go(store) -> None:
    """host000 (the canary by name) and host003 are paused by their operators: the rollout goes round them."""
    policy = parse_rollout("canary=1,wave=50%,bake=60s")
    clock = FakeClock()
    fleet = agents(store, policy, 6, clock, ttl=TTL, deploy_time=DEPLOY)
    v2 = release("v2.0.0")

    async def scenario():
        await poll_round(fleet, release("v1.0.0"))
        for held in (fleet[0], fleet[3]):
            held.holds.add("v2.0.0")
        for _ in range(100):  # 500 s on the clock: the other four take it, canary first
            await poll_round(fleet, v2)
            clock.now += ROUND
        while_held = [a.name for a in fleet if a.fetched]
        for held in (fleet[0], fleet[3]):
            held.holds.clear()  # dewy resume on each
        await run(fleet, v2, clock, store)
        return while_held

    took = asyncio.run(scenario())
    assert took == ["host001", "host002", "host004", "host005"]
    assert all(a.version == "v2.0.0" and a.fetched == ["v2.0.0"] for a in fleet)
    assert fleet[1].started["v2.0.0"] < min(fleet[n].started["v2.0.0"] for n in (2, 4, 5))  # host001: the canary


def test_a_waiting_host_on_consul_reads_the_heartbeats_once_per_poll() -> None:
    """The document first, alone; the heartbeats (one recursive read) only when a wave is in progress."""
    clock = FakeClock()
    policy = parse_rollout("canary=1,bake=60s")
    with ConsulServer() as consul:
        cache = CACHES.load(CACHES.url(f"consul://127.0.0.1:{consul.port}/dewy"))
        store = open_store(cache, app_key("file:///registry", None))

        async def main() -> tuple[int, int]:
            canary, waiting = (Coordinator(policy, store, name, ttl=TTL, serving=lambda: "v1.0.0", clock=clock,
                                           heartbeat=False) for name in ("host0", "host1"))
            await waiting.beat()
            assert await canary.gate(release("v2.0.0")) is not None  # the canary's turn
            asked = len(consul.requests)
            idle = await waiting.gate(release("v2.0.0"))
            recursive = [r for r in consul.requests[asked:] if r.method == "GET" and "recurse" in r.query]
            await cache.aclose()
            return idle, len(recursive)

        assert asyncio.run(main()) == (None, 1)


def test_a_host_without_a_heartbeat_for_a_week_is_forgotten_and_one_that_beats_again_is_back(store) -> None:
    """Decommissioned hosts do not stay in the shared state (and in ``dewy fleet status``) for ever."""
    clock = FakeClock()
    policy = parse_rollout("canary=1")

    async def main() -> list[list[str]]:
        left, resting, here = (Coordinator(policy, store, name, ttl=TTL, serving=lambda: "v1.0.0", clock=clock,
                                           heartbeat=False) for name in ("left", "resting", "here"))
        seen = []
        await left.beat()
        clock.now += FORGET_AFTER - 86400
        await resting.beat()
        clock.now += 2 * 86400  # left: a week and a day without a heartbeat; resting: two days
        await here.beat()
        seen.append(sorted((await store.read())[1]))
        await left.beat()
        seen.append(sorted((await store.read())[1]))
        return seen

    assert asyncio.run(main()) == [["here", "resting"], ["here", "left", "resting"]]
