"""The admission logic of a fleet rollout, as pure functions of the shared state, the heartbeats and the time."""

from __future__ import annotations

import json
from dataclasses import replace

from dewy.fleet.plan import (
    BAKING, DEPLOYING, FAILED, GONE, HELD, SERVING, WAITING, Fleet, Host, Paused, Quarantined, admitted, advance, deploying,
    fail, host_states, pause, resume, roll_back, unchanged_for,
)
from dewy.fleet.policy import parse_rollout

V1, V2 = {"tag": "v1.0.0"}, {"tag": "v2.0.0"}
TTL = 30.0


class World:
    """Twenty hosts on v1.0.0, a policy, a clock: each step is what the hosts would do."""

    def __init__(self, spec: str, hosts: int = 20) -> None:
        self.policy = parse_rollout(spec)
        self.now = 1000.0
        self.hosts = {f"h{n:02}": Host(f"h{n:02}", self.now, TTL, "v1.0.0", 0.0) for n in range(hosts)}
        self.fleet = Fleet()
        self.killed: set[str] = set()

    def tick(self, seconds: float = 1.0) -> list[str]:
        """Time passes, live hosts beat, the fleet advances; the hosts admitted to v2.0.0 now."""
        self.now += seconds
        for name, host in self.hosts.items():
            if name not in self.killed:
                self.hosts[name] = replace(host, seen=self.now)
        self.fleet = advance(self.policy, self.fleet, self.hosts, V2, self.now)
        return [name for name in self.hosts if admitted(self.fleet, name, "v2.0.0")]

    def serve(self, *names: str, tag: str = "v2.0.0") -> None:
        for name in names:
            host = self.hosts[name]
            self.hosts[name] = Host(name, self.now, TTL, tag, self.now)

    def hold(self, name: str, tag: str | None) -> None:
        """``name``'s own gates (its pin, pause, deploy window) hold ``tag`` back (None: no more), as its heartbeat says."""
        self.hosts[name] = replace(self.hosts[name], held=tag)

    def kill(self, name: str) -> None:
        self.killed.add(name)  # it beats no more

    def deploying(self) -> list[str]:
        return deploying(self.fleet, self.hosts, self.now)


def test_canary_alone_then_waves_of_a_quarter_each_after_its_bake() -> None:
    world = World("canary=1,wave=25%,max-parallel=5,bake=10m")
    assert world.tick() == ["h00"]  # the canary alone
    assert world.tick(3600) == ["h00"]  # nobody else while it has not served v2.0.0
    world.serve("h00")
    assert world.tick(599) == ["h00"]  # baking
    assert host_states(world.policy, world.fleet, world.hosts, world.now)["h00"] == BAKING
    wave1 = [n for n in world.tick(1) if n != "h00"]
    assert wave1 == ["h01", "h02", "h03", "h04", "h05"]  # 25% of 20
    states = host_states(world.policy, world.fleet, world.hosts, world.now)
    assert {states[n] for n in wave1} == {DEPLOYING} and states["h06"] == WAITING
    world.serve(*wave1[:4])
    assert len(world.tick(3600)) == 6  # wave 2 waits for the whole of wave 1
    world.serve(wave1[4])
    assert len(world.tick(599)) == 6
    assert len(world.tick(1)) == 11
    waves = [len(w.hosts) for w in world.fleet.rollout.waves]
    assert waves == [1, 5, 5]


def test_never_more_than_max_parallel_deploying_within_a_wave() -> None:
    world = World("canary=1,wave=50%,max-parallel=3,bake=0", hosts=21)
    world.tick()
    world.serve("h00")
    seen_max = 0
    for _ in range(40):
        admitted_now = world.tick()
        seen_max = max(seen_max, len(world.deploying()))
        world.serve(*[n for n in admitted_now if world.hosts[n].version != "v2.0.0"][:1])  # one finishes per tick
    assert seen_max == 3
    assert all(h.version == "v2.0.0" for h in world.hosts.values())
    assert world.fleet.rollout.done is not None
    assert [len(w.hosts) for w in world.fleet.rollout.waves] == [1, 11, 9]


def test_a_dead_host_stops_counting_after_its_ttl_and_never_stalls_the_rollout() -> None:
    world = World("canary=1,wave=5,max-parallel=2,bake=0", hosts=8)
    world.tick()
    world.kill("h00")  # the canary dies before serving
    assert world.tick(TTL - 1) == ["h00"]  # within its TTL it still counts: nobody else
    assert world.tick(2) == ["h00", "h01"]  # gone (its old admission stays on record): a new canary, alone
    assert host_states(world.policy, world.fleet, world.hosts, world.now)["h00"] == GONE
    world.serve("h01")
    world.tick()
    assert world.deploying() == ["h02", "h03"]
    world.kill("h02")
    world.tick(TTL + 1)
    assert world.deploying() == ["h03", "h04"]  # its slot is freed
    assert "h02" not in world.fleet.rollout.waves[-1].admitted


def test_a_release_failing_on_the_canary_is_quarantined_and_nobody_else_is_admitted() -> None:
    world = World("canary=1,wave=25%,bake=0,on-failure=rollback")
    world.fleet = advance(world.policy, Fleet(), world.hosts, V1, world.now)  # v1.0.0 is the fleet's release
    assert world.tick() == ["h00"]
    world.fleet = fail(world.fleet, "v2.0.0", "h00", "exited with 1", world.now)
    world.hosts["h00"] = Host("h00", world.now, TTL, "v1.0.0", 0.0, "v2.0.0", "exited with 1")
    for _ in range(5):
        assert world.tick(60) == []
    quarantined = world.fleet.quarantine["v2.0.0"]
    assert (quarantined.host, quarantined.reason, quarantined.previous) == ("h00", "exited with 1", V1)
    states = host_states(world.policy, world.fleet, world.hosts, world.now)
    assert states["h00"] == FAILED and states["h01"] == SERVING
    # a second failure elsewhere keeps the first one's story
    assert fail(world.fleet, "v2.0.0", "h05", "other", world.now).quarantine["v2.0.0"].host == "h00"


def test_a_newer_release_starts_over_from_the_canary() -> None:
    world = World("canary=1,wave=25%,bake=0")
    world.tick()
    world.serve("h00")
    world.tick()
    v3 = {"tag": "v3.0.0"}
    fleet = advance(world.policy, world.fleet, world.hosts, v3, world.now)
    assert fleet.rollout.tag == "v3.0.0" and fleet.rollout.previous == V2
    assert [w.hosts for w in fleet.rollout.waves] == [("h00",)]


def test_the_document_survives_its_json() -> None:
    world = World("canary=2,wave=25%,bake=0")
    world.tick()
    world.fleet = fail(world.fleet, "v2.0.0", "h00", "boom", world.now)
    assert Fleet.from_json(json.loads(json.dumps(world.fleet.to_json()))) == world.fleet


def test_a_host_joining_after_the_rollout_ended_gets_a_wave_of_its_own() -> None:
    world = World("canary=1,wave=100%,bake=0", hosts=3)
    world.tick()
    world.serve("h00")
    world.tick()
    world.serve("h01", "h02")
    world.tick()
    assert world.fleet.rollout.done is not None
    world.hosts["h03"] = Host("h03", world.now, TTL, None, 0.0)  # a new host, nothing deployed
    assert "h03" in world.tick()
    assert world.fleet.rollout.done is None
    world.serve("h03")
    world.tick()
    assert world.fleet.rollout.done is not None


def test_a_host_held_by_its_own_gates_is_passed_by_and_gets_a_turn_once_they_let_the_release_through() -> None:
    world = World("canary=1,wave=100%,bake=0", hosts=4)
    world.hold("h00", "v2.0.0")  # e.g. dewy pause on h00: admitting it would keep the canary's step waiting for ever
    assert world.tick() == ["h01"]  # the canary is the first host that would take the release
    states = host_states(world.policy, world.fleet, world.hosts, world.now)
    assert states["h00"] == HELD and states["h01"] == DEPLOYING
    world.serve("h01")
    assert world.tick() == ["h01", "h02", "h03"]
    assert world.deploying() == ["h02", "h03"]
    world.serve("h02", "h03")
    world.tick()
    assert world.fleet.rollout.done is not None  # every host that would take it has it
    world.hold("h00", None)  # resumed: a wave of its own
    assert "h00" in world.tick() and world.fleet.rollout.done is None
    world.serve("h00")
    world.tick()
    assert world.fleet.rollout.done is not None
    assert host_states(world.policy, world.fleet, world.hosts, world.now)["h00"] == SERVING


def test_a_host_admitted_and_then_held_frees_its_turn_and_gets_a_later_one() -> None:
    world = World("canary=1,wave=100%,max-parallel=1,bake=0", hosts=3)
    assert world.tick() == ["h00"]
    world.hold("h00", "v2.0.0")  # its deploy window closed before it fetched
    members = {"h00": world.hosts["h00"]}
    assert not unchanged_for(world.policy, world.fleet, members, "h01", "v2.0.0", world.now)  # h01 must step in
    assert world.tick() == ["h01"]  # another canary; h00's turn is withdrawn, not kept for later
    assert world.deploying() == ["h01"]
    world.hold("h00", None)  # the window opens while the canary deploys: h00 waits for the next step
    assert world.tick() == ["h01"]
    world.serve("h01")
    assert world.tick() == ["h00", "h01"] and world.deploying() == ["h00"]  # max-parallel=1: h00 first, h02 next
    world.serve("h00")
    assert world.tick() == ["h00", "h01", "h02"]


def test_a_waiting_host_skips_the_transaction_only_when_it_would_change_nothing() -> None:
    """unchanged_for, from the current wave's heartbeats alone, never hides this host's admission (the wave's own
    hosts fill its free slots when they poll)."""
    world = World("canary=1,wave=25%,max-parallel=2,bake=30s", hosts=12)
    skipped = 0
    for step in range(120):
        world.tick(5)
        for name in [n for n, h in world.hosts.items() if h.version != "v2.0.0"][:2]:
            world.serve(name) if admitted(world.fleet, name, "v2.0.0") and step % 3 == 0 else None
        wave = world.fleet.rollout.waves[-1].hosts
        members = {n: h for n, h in world.hosts.items() if n in wave}
        for name in [n for n in world.hosts if not admitted(world.fleet, n, "v2.0.0")]:
            if unchanged_for(world.policy, world.fleet, members, name, "v2.0.0", world.now):
                skipped += 1
                assert not admitted(advance(world.policy, world.fleet, world.hosts, V2, world.now), name, "v2.0.0")
    assert skipped > 100
    assert all(h.version == "v2.0.0" for h in world.hosts.values())


def test_a_paused_fleet_admits_nobody_more_and_its_admitted_hosts_deploy_on_until_resumed() -> None:
    world = World("canary=1,wave=25%,max-parallel=2,bake=0")
    world.tick()
    world.serve("h00")
    assert world.tick() == ["h00", "h01", "h02"]  # wave 1, two of its five at once
    world.fleet = pause(world.fleet, "h07", 0, world.now)
    paused_at = world.now
    world.serve("h01")
    for _ in range(5):
        assert world.tick(3600) == ["h00", "h01", "h02"]  # h02 deploys on; the free slot stays free
    assert world.deploying() == ["h02"]
    # unchanged_for skips the transaction of a paused fleet: advance would change nothing
    assert unchanged_for(world.policy, world.fleet, {}, "h03", "v2.0.0", world.now)
    assert advance(world.policy, world.fleet, world.hosts, {"tag": "v3.0.0"}, world.now) == world.fleet  # nor a new one
    assert pause(world.fleet, "h09", 1000, world.now).paused == Paused("h07", 0, paused_at)  # the first pause is kept
    world.fleet = resume(world.fleet)
    assert world.fleet.paused is None
    assert world.tick() == ["h00", "h01", "h02", "h03"]  # the freed slot is filled at once


def test_rollback_of_the_fleet_quarantines_the_rollouts_target_to_go_back_to_its_previous_release() -> None:
    world = World("canary=1,wave=25%,bake=0")  # on-failure=halt: a rollback is asked for all the same
    world.fleet = advance(world.policy, Fleet(), world.hosts, V1, world.now)  # v1.0.0 is the fleet's release
    world.tick()
    world.serve("h00")
    world.tick()
    rolled = roll_back(world.fleet, "h03", 0, world.now)
    quarantined = rolled.quarantine["v2.0.0"]
    assert quarantined == Quarantined("h03", "rolled back for the fleet by uid 0 on h03", world.now, V1, True, 0)
    assert quarantined.story() == "rolled back for the fleet by uid 0 on h03"  # no host failed
    world.fleet = rolled
    assert world.tick(60) == []  # nobody more is admitted to it
    assert Fleet.from_json(json.loads(json.dumps(rolled.to_json()))) == rolled
    # a failure quarantined already (on-failure=halt kept the hosts on it) keeps its story, now rolled back
    failed = fail(advance(world.policy, Fleet(), world.hosts, V1, world.now), "v1.0.0", "h05", "boom", world.now)
    again = roll_back(failed, "h03", 0, world.now).quarantine["v1.0.0"]
    assert (again.story(), again.rollback) == ("it failed on h05: boom", True)
    assert roll_back(Fleet(), "h03", 0, world.now) == Fleet()  # no rollout: nothing to roll back


def test_a_document_of_a_dewy_before_the_fleet_commands_still_reads() -> None:
    old = {"rollout": None, "quarantine": {"v2.0.0": {"host": "h00", "reason": "boom", "at": 1.0, "previous": V1}}}
    fleet = Fleet.from_json(old)
    assert fleet.paused is None and fleet.quarantine["v2.0.0"].rollback is False
