"""Simulated dewy hosts in one process: each a real Coordinator on the real shared store, on a shared clock.

A host "deploys" by taking ``deploy_time`` on the clock, then serving the release or, if it
is one of its ``bad`` tags, reporting that it did not come up (what the daemon does after a
rollback). Used by tests/test_fleet.py (a fake clock) and bench/fleet.py (the real one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from dewy.fleet.coordinator import Coordinator
from dewy.fleet.plan import deploying
from dewy.fleet.policy import RolloutPolicy
from dewy.fleet.stores import Store
from dewy.registry import Release
from dewy.registry.shared import release_from_json


def release(tag: str) -> Release:
    return release_from_json({"tag": tag, "version": tag.lstrip("v"), "artifact_name": "app.tar.gz",
                              "artifact_url": f"file:///releases/{tag}/app.tar.gz"})


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Agent:
    name: str
    coordinator: Coordinator
    clock: Callable[[], float]
    deploy_time: float
    bad: set[str] = field(default_factory=set)
    version: str | None = "v1.0.0"
    fetched: list[str] = field(default_factory=list)  # every release it started to deploy, in order
    started: dict[str, float] = field(default_factory=dict)  # tag -> when it started deploying it
    busy: tuple[Release, float] | None = None  # deploying what, until when
    dead: bool = False
    crashes: int = 0  # the app's unexpected exits
    holds: set[str] = field(default_factory=set)  # tags its own gates hold back (its pin, pause, deploy window)

    async def step(self, newest: Release) -> None:
        """One poll: finish a deploy whose time is up, else (unless its own gates hold the release) ask the gate,
        as the daemon's tick does."""
        if self.dead:
            return
        if self.busy:
            target, until = self.busy
            if self.clock() < until:
                await self.coordinator.beat()
                return
            self.busy = None
            if target.tag in self.bad:
                await self.coordinator.report(target, f"{target.tag} exited with status 1 during its settle time")
            else:
                self.version = target.tag
                await self.coordinator.report(target, None)
            return
        held = newest.tag in self.holds and newest.tag != self.version
        await self.coordinator.hold(newest.tag if held else None)
        if held:
            await self.coordinator.beat()  # a real host's heartbeat beats in the background meanwhile
            return
        chosen = await self.coordinator.gate(newest)
        if chosen is not None and chosen.tag != self.version:
            self.fetched.append(chosen.tag)
            self.started[chosen.tag] = self.clock()
            self.busy = (chosen, self.clock() + self.deploy_time)

    def kill(self) -> None:
        self.dead = True  # beats no more: gone one TTL later


def agents(store: Store, policy: RolloutPolicy, count: int, clock: Callable[[], float], *, ttl: float,
           deploy_time: float, bad: dict[int, set[str]] | None = None, notifications=None) -> list[Agent]:
    fleet = []
    for n in range(count):
        name = f"host{n:03}"
        agent = Agent(name, None, clock, deploy_time, set((bad or {}).get(n, ())))  # type: ignore[arg-type]
        agent.coordinator = Coordinator(policy, store, name, ttl=ttl, serving=lambda a=agent: a.version,
                                        notifications=notifications, clock=clock, heartbeat=False,
                                        crashes=lambda a=agent: a.crashes)
        fleet.append(agent)
    return fleet


async def deploying_now(store: Store, clock: Callable[[], float]) -> int:
    """Hosts deploying at this moment, as the shared state says."""
    fleet, hosts = await store.read()
    return len(deploying(fleet, hosts, clock()))


async def poll_round(fleet: list[Agent], newest: Release) -> None:
    """Every live host polls once, all at the same time (their transactions race)."""
    await asyncio.gather(*(agent.step(newest) for agent in fleet))
