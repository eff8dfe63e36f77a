"""Per-host deploy state that survives restarts: what runs here, what was deployed, what is quarantined.

Never shared between hosts (a shared cache must not make one host skip a release
because another deployed it), so it lives in a JSON file in the working directory.

What runs (``app``) has one shape per mode that runs something: the app generation of
server mode (:class:`AppGeneration`), the replica set of container mode
(:class:`ReplicaSet`). The file's layout is the one earlier versions wrote, so an upgraded
dewy adopts what the previous one left running.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

from dewy.faults import on_disk
from dewy.fsutil import write_atomic


@dataclass
class Deployed:
    tag: str
    key: str  # the artifact's cache key, ``<tag>--<artifact name>``
    release: str  # the release directory name under releases/; in container mode the image reference
    at: str  # UTC ISO time of the deploy
    signed_by: str | None = None  # the verified signature's key and trusted comment (verify=)

    def to_json(self) -> dict[str, Any]:
        """Unsigned, as versions before verify= wrote it (a state file is written back unchanged)."""
        data = asdict(self)
        if self.signed_by is None:
            del data["signed_by"]
        return data


@dataclass
class AppGeneration:
    """Server mode: the serving app generation, as a restarted dewy needs it to prove and adopt it."""

    pid: int
    generation: int
    version: str
    release_dir: str
    unit: str | None = None  # its transient systemd scope, when placed in one
    started: int | None = None  # start time in clock ticks since boot (/proc/PID/stat field 22)
    boot: str | None = None  # the boot it started in

    def to_json(self) -> dict[str, Any]:
        identity = {k: v for k, v in (("started", self.started), ("boot", self.boot)) if v is not None}
        return {"pid": self.pid, **identity, "unit": self.unit, "generation": self.generation, "version": self.version,
                "release_dir": self.release_dir}


@dataclass
class ReplicaEntry:
    """Container mode: one serving replica as last checked."""

    id: str
    name: str
    replica: int
    version: str
    ip: str | None
    status: str
    healthy: bool
    reason: str | None  # why it is unhealthy, None when healthy


@dataclass
class DrainingEntry:
    """Container mode: an old replica that finishes its connections until ``until`` (UTC ISO time)."""

    id: str
    name: str
    version: str
    until: str


@dataclass
class RolloutEntry:
    """Container mode: a rollout under way; its replicas carry the ``id`` as a label, so that a dewy killed
    meanwhile has its successor remove them."""

    id: str
    version: str
    digest: str
    image: str
    started_at: str


@dataclass
class ReplicaSet:
    """Container mode: the app's replicas, where they are reachable, and what is draining or rolling out."""

    runtime: str
    network: str
    aliases: list[str]
    ports: list[str]  # the host ports' HOST:PORT
    version: str | None
    digest: str
    image: str | None
    replicas: list[ReplicaEntry] = field(default_factory=list)
    draining: list[DrainingEntry] = field(default_factory=list)
    rollout: RolloutEntry | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mode": "container", **asdict(self)}


@dataclass
class Waiting:
    """A newer version held back by --deploy-window or --min-release-age (:mod:`dewy.schedule`)."""

    version: str
    key: str  # its cache key
    gate: str  # deploy-window | min-release-age
    reason: str  # the line ``dewy status`` and STATUS= show
    until: str  # UTC ISO time the gate lifts
    seen: str  # UTC ISO time this host first saw the version (the age of a release without a publish time)


RunningApp = Union[AppGeneration, ReplicaSet]


@dataclass
class Pin:
    """The host is held on ``tag`` (``dewy pin``, or ``dewy rollback``: then until the registry names a release
    other than ``until``, the one rolled back from, or ``dewy unpin``)."""

    tag: str
    at: str  # UTC ISO time
    uid: int  # who pinned it
    until: str | None = None


@dataclass
class Pause:
    """No deploys (``dewy pause``) since ``at``, by ``uid``, until ``dewy resume``; with ``host``, the fleet's pause
    (``dewy pause --fleet`` on that host) as this host last read it."""

    at: str
    uid: int
    host: str | None = None


def _build(cls: type, data: Any) -> Any:
    """``cls`` from a JSON object, ignoring keys it does not know; TypeError/ValueError if it is not one."""
    if not isinstance(data, dict):
        raise TypeError(f"not an object: {data!r}")
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def app_from_json(data: Any) -> RunningApp | None:
    """What runs, as the state file recorded it; None for a record that cannot be read (nothing is adopted
    then: the app is started from ``current``, the replicas found by their labels)."""
    if not data:
        return None
    try:
        if data.get("mode") == "container":
            replicas = _build(ReplicaSet, data)
            replicas.replicas = [_build(ReplicaEntry, r) for r in replicas.replicas or []]
            replicas.draining = [_build(DrainingEntry, d) for d in replicas.draining or []]
            replicas.rollout = _build(RolloutEntry, replicas.rollout) if replicas.rollout else None
            return replicas
        return _build(AppGeneration, data)
    except (TypeError, ValueError, AttributeError):
        return None


def _record(cls: type, data: Any) -> Any:
    """A pin, a pause or a held version as recorded; None for one that cannot be read (the next poll records a
    held version again)."""
    try:
        return _build(cls, data) if data else None
    except (TypeError, ValueError):
        return None


@dataclass
class State:
    path: Path
    current: Deployed | None = None
    history: list[Deployed] = field(default_factory=list)  # newest last; matches releases/ on disk
    quarantine: dict[str, str] = field(default_factory=dict)  # cache key -> reason
    app: RunningApp | None = None
    last_check: str | None = None  # UTC ISO time of the last deploy cycle
    last_error: str | None = None  # its error, None when it succeeded
    pin: Pin | None = None
    paused: Pause | None = None
    waiting: Waiting | None = None  # a newer version a pin, a pause, the deploy window or the minimum age holds back
    fleet_paused: Pause | None = None  # --rollout: the fleet's pause, as the fleet's gate last read it

    @classmethod
    def load(cls, path: Path) -> State:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError):
            broken = path.with_suffix(".broken")
            path.rename(broken)
            return cls(path)
        return cls(
            path,
            current=Deployed(**data["current"]) if data.get("current") else None,
            history=[Deployed(**d) for d in data.get("history", [])],
            quarantine=dict(data.get("quarantine", {})),
            app=app_from_json(data.get("app")),
            last_check=data.get("last_check"),
            last_error=data.get("last_error"),
            pin=_record(Pin, data.get("pin")),
            paused=_record(Pause, data.get("paused")),
            waiting=_record(Waiting, data.get("waiting")),
            fleet_paused=_record(Pause, data.get("fleet_paused")),
        )

    def save(self) -> None:
        """Write the file atomically; DiskError (naming it) if the disk refuses, and the old file stays."""
        data = {
            "current": self.current.to_json() if self.current else None,
            "history": [d.to_json() for d in self.history],
            "quarantine": self.quarantine,
            "app": self.app.to_json() if self.app else None,
            "last_check": self.last_check,
            "last_error": self.last_error,
        }
        # only when set: a file of a dewy that never held a version is written back unchanged
        data.update({k: asdict(v) for k, v in (("pin", self.pin), ("paused", self.paused), ("waiting", self.waiting),
                                                ("fleet_paused", self.fleet_paused)) if v})
        with on_disk(self.path.parent, "the state file"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(data, indent=2).encode())

    def record(self, deployed: Deployed) -> None:
        self.current = deployed
        self.history.append(deployed)

    def forget(self, deployed: Deployed, previous: Deployed | None) -> None:
        """Undo :meth:`record` of a deploy that did not happen (the state file could not be written, a rollback)."""
        if deployed in self.history:
            self.history.remove(deployed)
        self.current = previous

    def tag_of_release(self, release: str) -> str | None:
        return next((d.tag for d in reversed(self.history) if d.release == release), None)
