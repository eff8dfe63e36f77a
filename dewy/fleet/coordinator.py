"""One host's side of a fleet rollout: its heartbeat, the gate the daemon asks before a deploy, its reports.

The daemon asks :meth:`Coordinator.gate` with the release the registry names, before it
fetches anything: the gate answers the release to deploy now (the new one once this host is
admitted, the previous one when the new one was quarantined for the fleet and
``on-failure=rollback``), or None: wait, fetching nothing. The daemon tells
:meth:`Coordinator.report` how each deploy ended; a release that did not come up is
quarantined for the whole fleet, and this host's notifiers say where and why. The operators'
fleet-wide commands (``dewy pause|resume|rollback NAME --fleet``, through this host's control
channel) change the shared document through :meth:`pause`, :meth:`resume` and :meth:`roll_back`.

The heartbeat beats in the background (a third of the TTL), so a host busy with a long
download still counts; a host killed stops beating and is gone one TTL later (``dewy fleet status`` lists it as
gone); one without a heartbeat for a week has left the fleet, and the next host to look deletes its heartbeat.
Time is ``clock`` (wall time: the hosts compare their heartbeats), injectable for tests.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

from dewy import log
from dewy.errors import CacheError, HookError
from dewy.fleet.plan import Fleet, Host, Paused, admitted, advance, fail, pause, resume, roll_back, unchanged_for
from dewy.fleet.policy import RolloutPolicy
from dewy.fleet.stores import Store, app_key, open_store
from dewy.hooks import run_hook
from dewy.notifiers import Notifications
from dewy.registry import Release
from dewy.registry.shared import release_from_json, release_to_json
from dewy.tasks import Background


FORGET_AFTER = 7 * 86400.0  # a host without a heartbeat this long has left the fleet: its heartbeat is deleted
TIDY_EVERY = 3600.0  # how often a host looks for such heartbeats


class Coordinator:
    def __init__(self, policy: RolloutPolicy, store: Store, host: str, *, ttl: float,
                 serving: Callable[[], str | None], notifications: Notifications | None = None,
                 clock: Callable[[], float] = time.time, heartbeat: bool = True, workdir: Path | None = None,
                 hook_timeout: float = 300.0, crashes: Callable[[], int] = lambda: 0) -> None:
        self.policy = policy
        self.store = store
        self.host = host
        self.ttl = ttl
        self.serving = serving  # the tag this host serves now
        self.notifications = notifications
        self.clock = clock
        self.background = Background()
        self._heartbeat: asyncio.Task | None = None
        self._beats = heartbeat  # False: the caller beats (simulated hosts on a fake clock)
        self._version: str | None = None
        self._since = 0.0
        self._failed: tuple[str, str] | None = None  # (tag, why) of the last release that did not come up here
        self._said: str | None = None  # the last waiting line logged at info (repeats go to debug)
        self.workdir = workdir or Path.cwd()  # where --bake-check runs
        self.hook_timeout = hook_timeout
        self.crashes = crashes  # the app's unexpected exits so far (server mode's supervisor counts them)
        self._crashes_before = 0  # ... when this host began serving its version
        self.paused: Paused | None = None  # the fleet's pause as the gate last read it (dewy status shows it)
        self._tidied = -TIDY_EVERY  # when this host last looked for hosts gone for good
        self._held: str | None = None  # the tag this host's own gates hold back, as its heartbeat says

    @classmethod
    def of(cls, settings, cache, state, notifications: Notifications, target) -> Coordinator:
        """The coordinator of ``settings.rollout`` over ``cache`` (a shared one: settings.check saw to it)."""
        policy = settings.rollout
        supervisor = getattr(target, "supervisor", None)  # server mode: its crash count judges a bake
        with settings.given("cache"):
            store = open_store(cache, app_key(settings.registry, settings.slot))
        return cls(policy, store, f"{socket.gethostname()}:{settings.dir}",
                   ttl=policy.ttl or max(3 * settings.interval, 3.0),
                   serving=lambda: state.current.tag if state.current else None, notifications=notifications,
                   workdir=settings.dir, hook_timeout=settings.hook_timeout,
                   crashes=(lambda: supervisor.crashes) if supervisor else (lambda: 0))

    def record(self) -> Host:
        """This host's heartbeat as of now."""
        version = self.serving()
        now = self.clock()
        if version != self._version or not self._since:
            self._version, self._since, self._crashes_before = version, now, self.crashes()
        failed, error = self._failed or (None, None)
        return Host(self.host, now, self.ttl, version, self._since, failed, error, self._held)

    async def beat(self) -> None:
        await self.store.beat(self.record())
        now = self.clock()
        if now - self._tidied >= TIDY_EVERY:  # rarely: it reads every heartbeat
            self._tidied = now
            _, hosts = await self.store.read()
            gone = sorted(name for name, host in hosts.items() if now - host.seen > FORGET_AFTER)
            if gone:
                await self.store.forget(gone)
                log.info("fleet-forgot", f"forgot {len(gone)} host(s) of the fleet without a heartbeat for "
                                         f"{FORGET_AFTER / 86400:g} days: {', '.join(gone)}", hosts=gone)

    async def _beating(self) -> None:
        """Beat a third of the TTL apart for dewy's whole life; a cache outage is told once, when it starts."""
        down = False
        while True:
            try:
                await self.beat()
                down = False
            except CacheError as exc:
                if not down:
                    log.warning("fleet-heartbeat", f"{exc}; this host counts as gone after {self.ttl:g}s without one")
                down = True
            await asyncio.sleep(self.ttl / 3)

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None and self._beats:
            self._heartbeat = self.background.start(self._beating(), "the fleet heartbeat")

    async def hold(self, tag: str | None) -> None:
        """This host's own gates (a pin, a pause, its deploy window, the release's age) hold ``tag`` back (None:
        nothing): told in the heartbeat at once, so the rollout passes this host by instead of admitting it and
        keeping its wave waiting. Once the gates let the release through, :meth:`gate` asks for a turn as usual."""
        if tag == self._held:
            return
        self._held = tag
        if tag is not None:
            self._start_heartbeat()
            await self.beat()  # (a cleared hold is told by the beat of the gate that follows)

    async def gate(self, release: Release) -> Release | None:
        """The release to deploy now, or None: this host waits (and fetches nothing)."""
        self._start_heartbeat()
        await self.beat()
        tag, version = release.tag, self.serving()
        target = release_to_json(release)
        fleet, members = await self._current_wave()
        if version != tag and not unchanged_for(self.policy, fleet, members, self.host, tag, self.clock()):
            fleet = await self.store.update(lambda now_fleet, hosts: advance(self.policy, now_fleet, hosts, target, self.clock()))
        self.paused = fleet.paused
        quarantined = fleet.quarantine.get(tag)
        if quarantined:
            back = quarantined.previous
            going_back = self.policy.on_failure == "rollback" or quarantined.rollback
            if version == tag and going_back and back and back["tag"] != tag:
                self._say("fleet-rollback", f"{tag} is quarantined for the fleet ({quarantined.story()}): going back to "
                                            f"{back['tag']}", version=tag)
                return release_from_json(back)
            self._say("fleet-quarantined", f"{tag} is quarantined for the fleet: {quarantined.story()}", version=tag)
            return None
        if version == tag:
            return release if await self._baked_well(fleet, release) else None
        if admitted(fleet, self.host, tag):
            self._said = None
            log.info("fleet-admitted", f"{tag}: this host's turn in the rollout", version=tag,
                     wave=len(fleet.rollout.waves) - 1)
            return release
        self._say("fleet-waiting", self._waiting(fleet, tag), version=tag)
        return None

    async def _current_wave(self) -> tuple[Fleet, dict[str, Host]]:
        """The document and the heartbeats of its current wave's hosts (not the whole fleet's)."""
        fleet, _ = await self.store.peek(())
        wave = fleet.rollout.waves[-1].hosts if fleet.rollout and fleet.rollout.waves else ()
        return await self.store.peek(wave) if wave else (fleet, {})

    async def _baked_well(self, fleet: Fleet, release: Release) -> bool:
        """While ``release`` bakes here in a rollout, the app must not crash and ``--bake-check`` must pass; a
        failure is reported as the release's (quarantined for the fleet)."""
        rollout = fleet.rollout
        command = self.policy.bake_check
        if rollout is None or rollout.tag != release.tag or rollout.done is not None \
                or self.clock() - self._since >= self.policy.bake:
            return True
        crashed = self.crashes() - self._crashes_before
        if crashed:
            await self.report(release, f"{release.tag} crashed {crashed} time(s) within its bake time "
                                       f"({self.policy.bake:g}s)")
            return False
        if not command:
            return True
        try:
            await run_hook("bake-check", command, cwd=self.workdir, env={"DEWY_VERSION": release.tag},
                           timeout=self.hook_timeout)
        except HookError as exc:
            await self.report(release, str(exc))
            return False
        return True

    def _waiting(self, fleet: Fleet, tag: str) -> str:
        if fleet.paused:
            return f"{tag} waits: the fleet's rollout is paused ({describe_pause(fleet.paused)}; dewy resume NAME --fleet)"
        rollout = fleet.rollout
        step = "the canary" if len(rollout.waves) <= 1 else f"wave {len(rollout.waves) - 1}"
        return f"{tag} waits for its turn in the rollout: {step} is deploying or baking ({self.policy.bake:g}s)"

    def _say(self, event: str, line: str, **fields) -> None:
        """A waiting line at info the first time, at debug while it stays the same."""
        (log.debug if line == self._said else log.info)(event, line, **fields)
        self._said = line

    async def report(self, release: Release, error: str | None) -> None:
        """How a deploy ended here; a failure quarantines ``release`` for the fleet and says so. A success moves the
        rollout on at once (the step after it, or its end: else only a host still waiting would, at its next poll,
        and once every host has the release none is left to mark the rollout done)."""
        if error is None:
            await self.beat()
            target = release_to_json(release)
            await self.store.update(lambda fleet, hosts: advance(self.policy, fleet, hosts, target, self.clock())
                                    if fleet.rollout and fleet.rollout.tag == release.tag else fleet)
            return
        self._failed = (release.tag, error)
        await self.beat()
        fleet = await self.store.update(lambda now_fleet, hosts: fail(now_fleet, release.tag, self.host, error, self.clock()))
        if fleet.quarantine[release.tag].host != self.host:
            return  # another host failed first and told
        log.error("fleet-quarantine", f"{release.tag} is quarantined for the fleet: it failed on {self.host}: {error}",
                  version=release.tag, host=self.host)
        if self.notifications:
            await self.notifications.error("rollback", f"{release.tag} is quarantined for the fleet: it failed on {self.host}",
                                           version=release.tag, **{"failed on": self.host, "reason": error})

    async def pause(self, uid: int) -> Fleet:
        """``dewy pause --fleet``: no host is admitted to a new release until resumed; the fleet as written."""
        return await self.store.update(lambda fleet, hosts: pause(fleet, self.host, uid, self.clock()))

    async def resume(self) -> Paused | None:
        """``dewy resume --fleet``: the pause it ended (None: the fleet was not paused)."""
        fleet, _ = await self.store.peek(())
        if fleet.paused:
            await self.store.update(lambda now_fleet, hosts: resume(now_fleet))
        return fleet.paused

    async def roll_back(self, uid: int) -> tuple[Fleet, Fleet, dict[str, Host]]:
        """``dewy rollback --fleet``: quarantine the rollout's target with rollback semantics; the document before
        and after, and the heartbeats (who is on the target)."""
        before, hosts = await self.store.read()
        after = await self.store.update(lambda fleet, now_hosts: roll_back(fleet, self.host, uid, self.clock()))
        return before, after, hosts

    async def aclose(self) -> None:
        await self.background.cancel()


def describe_pause(paused: Paused) -> str:
    """Who paused the fleet, where and when, in a few words."""
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(paused.at))
    return f"since {at} UTC by uid {paused.uid} on {paused.host}"
