"""Per-host deploy state that survives restarts: what runs here, what was deployed, what is quarantined.

Never shared between hosts (a shared cache must not make one host skip a release
because another deployed it), so it lives in a JSON file in the working directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dewy.faults import on_disk
from dewy.fsutil import write_atomic


@dataclass
class Deployed:
    tag: str
    key: str  # the artifact's cache key, ``<tag>--<artifact name>``
    release: str  # the release directory name under releases/
    at: str  # UTC ISO time of the deploy
    signed_by: str | None = None  # the verified signature's key and trusted comment (verify=)


@dataclass
class State:
    path: Path
    current: Deployed | None = None
    history: list[Deployed] = field(default_factory=list)  # newest last; matches releases/ on disk
    quarantine: dict[str, str] = field(default_factory=dict)  # cache key -> reason
    app: dict | None = None  # the serving generation: pid, start time, boot, unit, generation, version, release_dir
    last_check: str | None = None  # UTC ISO time of the last deploy cycle
    last_error: str | None = None  # its error, None when it succeeded

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
            app=data.get("app"),
            last_check=data.get("last_check"),
            last_error=data.get("last_error"),
        )

    def save(self) -> None:
        """Write the file atomically; DiskError (naming it) if the disk refuses, and the old file stays."""
        data = {
            "current": asdict(self.current) if self.current else None,
            "history": [asdict(d) for d in self.history],
            "quarantine": self.quarantine,
            "app": self.app,
            "last_check": self.last_check,
            "last_error": self.last_error,
        }
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
