"""``dewy assets``: each release unpacked under ``DIR/releases/<UTC timestamp>/``, ``DIR/current`` pointing at it.

A deploy: fetch and verify the artifact (:mod:`dewy.store`) while it is unpacked under a
``.partial-`` name (:mod:`dewy.releases`), name the release once all of it is on disk,
record it in the state file, then switch
``current`` with one rename(2). Nothing runs: a web server or a cron job reads
``current``. Server mode (:mod:`dewy.targets.server`) is this and an app.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from dewy import archive, log
from dewy.errors import DewyError, UsageError
from dewy.faults import describe, on_disk
from dewy.host import Host
from dewy.liveness import Liveness
from dewy.progress import Progress
from dewy.registry import Registry, Release
from dewy.releases import PARTIAL_PREFIX, Releases
from dewy.settings import Settings
from dewy.signing import Verification
from dewy.spool import Reader
from dewy.state import Deployed, State
from dewy.store import ArtifactStore, default_cache_dir
from dewy.targets import BaseTarget, Candidate, recalled
from dewy.urls import Url


@dataclass
class Unpackable(Candidate):
    """A fetched artifact and the name its release directory will have."""

    artifact: Path | None = None  # None: its bytes went straight into the release (a downloaded plain .tar)
    name: str = ""
    kept: bool = False  # a release already on disk (recalled): nothing to complete, never removed


@dataclass
class Switched:
    """A deploy whose release ``current`` now names: what undoing it needs."""

    release_dir: Path
    old_dir: Path | None  # what ``current`` named before
    deployed: Deployed
    previous: Deployed | None
    built: bool  # the release directory is this deploy's: undoing it removes it


@dataclass
class AssetsTarget(BaseTarget):
    """Releases on disk and the ``current`` link; nothing runs."""

    releases: Releases
    store: ArtifactStore

    restart_kind: ClassVar[str] = "the restart"

    async def adopt(self) -> None:
        await self.converge()

    async def converge(self) -> None:
        """Nothing runs: ``current`` is all there is."""

    def is_current(self, release: Release) -> bool:
        deployed = self.state.current
        current = self.releases.current_dir()
        return bool(deployed and deployed.key == release.cache_key and current and current.name == deployed.release)

    async def ready(self, release: Release) -> None:
        self.store.check_ready(release)

    async def prepare(self, release: Release, progress: Progress) -> Unpackable:
        """Download, verify and unpack in one pass: the release is extracted under its partial name while the
        artifact's bytes arrive. The partial release is the candidate's until it is activated or discarded."""
        name = self.releases.new_name()
        with self.releases.building(name) as partial:  # removed if the fetch fails
            with self.liveness.step(None), on_disk(self.store.directory, f"the download of {release.artifact_name}"):
                artifact = await self.store.fetch(release, self._unpacker(partial, name), progress.sample)
        signed = self.store.signed.get(release.cache_key)
        old_dir = self.releases.current_dir()
        return Unpackable(release, env={"DEWY_RELEASE_DIR": str(self.releases.directory / name),
                                        "DEWY_ARTIFACT": str(artifact) if artifact else ""},
                          deployed={"release_dir": str(self.releases.directory / name),
                                    "signed_by": str(signed) if signed else None},
                          rolled_back={"release_dir": str(old_dir) if old_dir else None}, artifact=artifact, name=name)

    async def recall(self, deployed: Deployed) -> Unpackable | None:
        release_dir = self.releases.directory / deployed.release
        if not deployed.release or not release_dir.is_dir():
            return None
        old_dir = self.releases.current_dir()
        return Unpackable(recalled(deployed), env={"DEWY_RELEASE_DIR": str(release_dir), "DEWY_ARTIFACT": ""},
                          deployed={"release_dir": str(release_dir), "signed_by": deployed.signed_by},
                          rolled_back={"release_dir": str(old_dir) if old_dir else None},
                          name=deployed.release, kept=True)

    def _unpacker(self, partial: Path, name: str) -> Callable[[Reader], None]:
        def unpack(reader: Reader) -> None:
            with on_disk(self.releases.directory, f"release {name}"):
                archive.extract(reader, partial, max_bytes=self.settings.max_archive_size,
                                max_members=self.settings.max_archive_members)
        return unpack

    def discard(self, candidate: Unpackable) -> None:
        """The partial release of a candidate that was not activated (a failed before-deploy hook, a stop)."""
        if not candidate.kept:
            self.store.done_with(candidate.artifact)
            self.releases.remove(self.releases.directory / (PARTIAL_PREFIX + candidate.name))

    async def activate(self, candidate: Unpackable) -> None:
        await self._complete_and_switch(candidate)

    async def _complete_and_switch(self, candidate: Unpackable) -> Switched:
        release, name = candidate.release, candidate.name
        if candidate.kept:
            release_dir = self.releases.directory / name
        else:
            self.store.done_with(candidate.artifact)  # before the release's syncfs: an artifact not kept is never written
            with self.liveness.step(None), on_disk(self.releases.directory, f"release {name}"):
                release_dir = await self._complete(name)
        switched = Switched(release_dir, self.releases.current_dir(),
                            Deployed(release.tag, release.cache_key, name, datetime.now(timezone.utc).isoformat(),
                                     signed_by=candidate.deployed.get("signed_by")),
                            self.state.current, built=not candidate.kept)
        self._switch(switched)
        return switched

    async def _complete(self, name: str) -> Path:
        """Make the release durable and name it, in a thread. A stop cannot interrupt a thread: it is waited for,
        and a release it named is removed again (the candidate's partial one goes with :meth:`discard`)."""
        work = asyncio.ensure_future(asyncio.to_thread(self.releases.complete, name))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await work
            self.releases.remove(self.releases.directory / name)
            raise

    def _switch(self, switched: Switched) -> None:
        """Record the new release, then point ``current`` at it. The state file names it first: wherever dewy is
        killed, the release ``current`` names has its version on record (DEWY_VERSION, no second extraction).
        If either step fails (a full disk), neither took effect."""
        self.state.record(switched.deployed)
        try:
            self.state.save()
            with on_disk(self.releases.root, "the current link"):
                self.releases.switch(switched.release_dir)
        except BaseException:
            self.state.forget(switched.deployed, switched.previous)
            if switched.built:
                self.releases.remove(switched.release_dir)
            with contextlib.suppress(DewyError):
                self.state.save()
            raise

    def _switch_back(self, switched: Switched) -> None:
        """``current`` back at the release that ran before, the new one removed and forgotten."""
        if switched.old_dir:
            self.releases.switch(switched.old_dir)
        else:
            self.releases.current.unlink(missing_ok=True)
        if switched.built:
            self.releases.remove(switched.release_dir)
        self.state.forget(switched.deployed, switched.previous)

    async def prune(self) -> None:
        """Keep the newest releases on disk and only their artifacts in the store; never remove a release that
        something still runs from (:meth:`_in_use`). The deploy happened: a failure is tried again after the next."""
        try:
            current = self.releases.current_dir()
            self.releases.prune(self.settings.keep_releases, protect=self._in_use() | ({current} if current else set()))
            on_disk = {p.name for p in self.releases.directory.iterdir()}
            kept = [d for d in self.state.history if d.release in on_disk]
            if kept != self.state.history:
                self.state.history = kept
                self.state.save()
            self.store.prune({d.key for d in self.state.history})
        except (OSError, DewyError) as exc:
            log.warning("prune-failed", f"could not prune old releases: {describe(exc)}")

    def _in_use(self) -> set[Path]:
        """Release directories something runs from, besides ``current``: nothing, in assets mode."""
        return set()

    async def restart(self) -> None:
        log.info("signal", f"SIGUSR1: no app to restart in {self.settings.mode} mode")

    async def watch(self, changed: Callable[[], None]) -> None:
        """Nothing runs, so nothing changes between deploys."""

    def status(self) -> str | None:
        return None

    async def stop(self, stop_app: bool) -> None:
        """Nothing runs: nothing to stop."""


def release_storage(settings: Settings, cache_url: Url,
                    verification: Verification | None) -> tuple[Releases, ArtifactStore]:
    """``DIR/releases`` and the artifact store (in the file:// cache's directory, else the default cache dir),
    which hands out only archives the trusted keys signed when ``verification`` (verify=minisign) is set."""
    keys = verification.keys if verification else ()
    try:
        releases = Releases(settings.dir)
        if cache_url.scheme == "file":
            store = ArtifactStore(Path(cache_url.path) / "artifacts", keys)
        else:
            store = ArtifactStore(default_cache_dir(), keys)
    except OSError as exc:
        raise UsageError(f"cannot use {exc.filename}: {exc.strerror}") from None
    return releases, store


def build(settings: Settings, *, host: Host, state: State, liveness: Liveness, registry: Registry,
          cache_url: Url, verification: Verification | None) -> AssetsTarget:
    return AssetsTarget(settings, state, liveness, *release_storage(settings, cache_url, verification))
