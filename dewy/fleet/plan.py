"""Who may deploy now: pure functions of the fleet's shared state, the hosts' heartbeats and the time.

The shared state (:class:`Fleet`) is one document per app: the rollout in progress, the
versions quarantined for the whole fleet and an operator's pause. Each host writes only its own
heartbeat (:class:`Host`); the document changes only through :func:`advance`, :func:`fail` and
the operators' :func:`pause`, :func:`resume` and :func:`roll_back`, which the
stores apply as optimistic transactions (whoever computes on a stale document retries), so
any host may compute the next step and any host may die in the middle.

A rollout admits hosts step by step: the ``canary`` first, then waves of ``wave`` of the
live fleet, each step once the previous one has served the new version healthily for
``bake``; within a step at most ``max_parallel`` hosts deploy at once. A host whose
heartbeat is older than its TTL is gone: it stops counting (a wave never waits for it). So does,
for one release, a host whose own gates hold that release back (its operator's pin or pause, its
deploy window, the release's minimum age): it says so in its heartbeat (``held``), the rollout
passes it by, and it asks for a turn of its own once its gates let the release through.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dewy.fleet.policy import RolloutPolicy

SERVING, DEPLOYING, BAKING, WAITING, HELD, FAILED, GONE = (
    "serving", "deploying", "baking", "waiting", "held", "failed", "gone")


@dataclass(frozen=True)
class Host:
    """One host's heartbeat, written by that host only."""

    id: str
    seen: float  # when it last beat (its clock)
    ttl: float  # it counts as gone this long after ``seen``
    version: str | None = None  # the tag it serves
    since: float = 0.0  # when it began serving ``version``
    failed: str | None = None  # a tag that did not come up here
    error: str | None = None  # why
    held: str | None = None  # a tag this host's own gates hold back (a pin, a pause, its deploy window, its age)

    def alive(self, now: float) -> bool:
        return now - self.seen <= self.ttl

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Host:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Wave:
    """One step of a rollout: its hosts, and those admitted so far (host -> when)."""

    hosts: tuple[str, ...]
    admitted: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Rollout:
    target: dict[str, Any]  # the release being rolled out, as the shared registry writes it
    previous: dict[str, Any] | None  # what the fleet ran before: where on-failure=rollback goes back to
    started: float
    waves: tuple[Wave, ...] = ()
    done: float | None = None  # every live host serves the target

    @property
    def tag(self) -> str:
        return self.target["tag"]


@dataclass(frozen=True)
class Quarantined:
    host: str  # where it failed
    reason: str
    at: float
    previous: dict[str, Any] | None  # the release to go back to (on-failure=rollback)
    rollback: bool = False  # the hosts on it go back whatever on-failure says (dewy rollback --fleet)
    operator: int | None = None  # the uid that quarantined it by hand (dewy rollback --fleet): no host failed

    def story(self) -> str:
        """Why, in a few words: where it failed, or who rolled it back."""
        return self.reason if self.operator is not None else f"it failed on {self.host}: {self.reason}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Quarantined:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Paused:
    """No host is admitted to a new release (``dewy pause --fleet``) since ``at``, by ``uid`` on ``host``."""

    host: str
    uid: int
    at: float


@dataclass(frozen=True)
class Fleet:
    rollout: Rollout | None = None
    quarantine: dict[str, Quarantined] = field(default_factory=dict)  # tag -> where and why
    paused: Paused | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Fleet:
        if not data:
            return cls()
        rollout = data.get("rollout")
        if rollout:
            waves = tuple(Wave(tuple(w["hosts"]), dict(w["admitted"])) for w in rollout["waves"])
            rollout = Rollout(rollout["target"], rollout["previous"], rollout["started"], waves, rollout.get("done"))
        paused = data.get("paused")
        return cls(rollout, {tag: Quarantined.from_json(q) for tag, q in data.get("quarantine", {}).items()},
                   Paused(**paused) if paused else None)


def live(hosts: dict[str, Host], now: float) -> dict[str, Host]:
    return {name: host for name, host in hosts.items() if host.alive(now)}


def open_to(hosts: dict[str, Host], tag: str, now: float) -> dict[str, Host]:
    """The live hosts that would deploy ``tag`` if admitted: one whose own gates hold it back is passed by as a
    gone one is (admitting it would keep its wave waiting until its operator or its window lets it go)."""
    return {name: host for name, host in live(hosts, now).items() if host.held != tag}


def advance(policy: RolloutPolicy, fleet: Fleet, hosts: dict[str, Host], target: dict[str, Any], now: float) -> Fleet:
    """The fleet after admitting every host that may deploy ``target`` now (a new rollout if it is new)."""
    tag = target["tag"]
    if tag in fleet.quarantine or fleet.paused:
        return fleet  # paused: nobody more is admitted (those admitted already deploy on)
    rollout = fleet.rollout
    if rollout is None or rollout.tag != tag:
        previous = rollout.target if rollout and rollout.tag not in fleet.quarantine else (rollout and rollout.previous)
        rollout = Rollout(target, previous, now)
    up = open_to(hosts, tag, now)
    on_target = {name for name, host in up.items() if host.version == tag}
    held = live(hosts, now).keys() - up.keys()
    if held:  # admitted before its gates closed: its turn is withdrawn (it gets a later one, not its old one)
        rollout = replace(rollout, waves=tuple(Wave(wave.hosts, {name: at for name, at in wave.admitted.items()
                                                                 if name not in held}) for wave in rollout.waves))
    return replace(fleet, rollout=_admit(policy, rollout, up, on_target, now))


def _admit(policy: RolloutPolicy, rollout: Rollout, up: dict[str, Host], on_target: set[str], now: float) -> Rollout:
    waves = list(rollout.waves)
    if waves:
        wave = waves[-1]
        pending = [name for name in wave.hosts if name in up and name not in on_target]
        if pending:
            waves[-1] = _fill(policy, wave, pending, set(wave.hosts) - up.keys(), now)
            return replace(rollout, waves=tuple(waves))
        served = [up[name].since for name in wave.hosts if name in on_target]
        if served and now - max(served) < policy.bake:
            return rollout  # still baking
    candidates = sorted(name for name in up if name not in on_target)
    if not candidates:
        return rollout if rollout.done is not None else replace(rollout, done=now)
    proven = any(name in on_target for step in waves for name in step.hosts)  # a canary died: another canary
    size = policy.wave_size(len(up)) if proven else policy.canary
    members = tuple(candidates[:size])
    waves.append(_fill(policy, Wave(members), list(members), set(), now))
    return replace(rollout, waves=tuple(waves), done=None)  # a host that joined after the end gets its wave


def _fill(policy: RolloutPolicy, wave: Wave, pending: list[str], gone: set[str], now: float) -> Wave:
    """Admit pending hosts of ``wave`` while fewer than max_parallel deploy; a gone host's slot is freed."""
    admitted = {name: at for name, at in wave.admitted.items() if name not in gone}
    deploying = [name for name in pending if name in admitted]
    limit = policy.max_parallel or len(wave.hosts)
    for name in pending:
        if len(deploying) >= limit:
            break
        if name not in admitted:
            admitted[name] = now
            deploying.append(name)
    return Wave(wave.hosts, admitted)


def unchanged_for(policy: RolloutPolicy, fleet: Fleet, members: dict[str, Host], host: str, tag: str,
                  now: float) -> bool:
    """Whether :func:`advance` would not admit ``host`` now, judged from the heartbeats of the current wave's
    ``members`` alone: ``host`` is admitted already, or it is in the wave and no slot is free, or it is not and
    the wave still deploys (its own hosts fill its slots) or bakes. Then a waiting host skips the transaction
    (and reading the whole fleet's heartbeats): a poll costs the same in a fleet of 20 or of 500."""
    if fleet.paused:
        return True
    rollout = fleet.rollout
    if rollout is None or rollout.tag != tag or tag in fleet.quarantine or not rollout.waves:
        return False
    wave = rollout.waves[-1]
    up = open_to(members, tag, now)
    if host in wave.hosts:
        busy = [name for name in wave.admitted if name in up and up[name].version != tag]
        return host in wave.admitted or len(busy) >= (policy.max_parallel or len(wave.hosts))
    if any(name in up and up[name].version != tag for name in wave.hosts):
        return True
    served = [up[name].since for name in wave.hosts if name in up]
    return bool(served) and now - max(served) < policy.bake


def fail(fleet: Fleet, tag: str, host: str, reason: str, now: float) -> Fleet:
    """``tag`` did not come up on ``host``: quarantined for the fleet (the first failure is the one kept)."""
    if tag in fleet.quarantine:
        return fleet
    rollout = fleet.rollout
    previous = rollout.previous if rollout and rollout.tag == tag else None
    return replace(fleet, quarantine={**fleet.quarantine, tag: Quarantined(host, reason, now, previous)})


def pause(fleet: Fleet, host: str, uid: int, now: float) -> Fleet:
    """``dewy pause --fleet`` from ``uid`` on ``host``: admit nobody more (the first pause is the one kept)."""
    return fleet if fleet.paused else replace(fleet, paused=Paused(host, uid, now))


def resume(fleet: Fleet) -> Fleet:
    """``dewy resume --fleet``: the rollout goes on at the hosts' next polls."""
    return replace(fleet, paused=None)


def roll_back(fleet: Fleet, host: str, uid: int, now: float) -> Fleet:
    """``dewy rollback --fleet`` from ``uid`` on ``host``: the rollout's target is quarantined for the fleet and every
    host on it goes back to the rollout's previous release, whatever on-failure says (a failure already quarantined
    keeps its story, now rolled back). Without a rollout, unchanged."""
    rollout = fleet.rollout
    if rollout is None:
        return fleet
    known = fleet.quarantine.get(rollout.tag)
    quarantined = replace(known, rollback=True) if known else Quarantined(
        host, f"rolled back for the fleet by uid {uid} on {host}", now, rollout.previous, True, uid)
    return replace(fleet, quarantine={**fleet.quarantine, rollout.tag: quarantined})


def admitted(fleet: Fleet, host: str, tag: str) -> bool:
    rollout = fleet.rollout
    return (tag not in fleet.quarantine and rollout is not None and rollout.tag == tag
            and any(host in wave.admitted for wave in rollout.waves))


def host_states(policy: RolloutPolicy, fleet: Fleet, hosts: dict[str, Host], now: float) -> dict[str, str]:
    """What each host is doing, for ``dewy fleet status``."""
    rollout = fleet.rollout
    states = {}
    for name, host in hosts.items():
        if not host.alive(now):
            states[name] = GONE
        elif host.held and host.held != host.version:
            states[name] = HELD
        elif host.failed and host.failed in fleet.quarantine and rollout is not None and host.failed == rollout.tag:
            states[name] = FAILED
        elif rollout is None or rollout.done is not None:
            states[name] = SERVING
        elif host.version == rollout.tag:
            states[name] = BAKING if now - host.since < policy.bake else SERVING
        elif admitted(fleet, name, rollout.tag):
            states[name] = DEPLOYING
        elif rollout.tag in fleet.quarantine:
            states[name] = SERVING
        else:
            states[name] = WAITING
    return states


def deploying(fleet: Fleet, hosts: dict[str, Host], now: float) -> list[str]:
    """Hosts admitted to the rollout that are alive, not held and not yet serving its target: what max_parallel
    bounds."""
    rollout = fleet.rollout
    if rollout is None:
        return []
    up = open_to(hosts, rollout.tag, now)
    return sorted(name for wave in rollout.waves for name in wave.admitted
                  if name in up and up[name].version != rollout.tag and up[name].failed != rollout.tag)
