"""Releases on disk: ``DIR/releases/<UTC timestamp>/`` and the ``DIR/current`` symlink.

A release is extracted under a ``.partial-`` name (while its artifact downloads) and
renamed once complete, verified and on disk, and
``current`` is replaced by rename(2) of a new symlink, so a kill -9 at any moment
leaves ``current`` pointing at a complete release. Deleting works the other way
round: the release is first renamed to a ``.deleting-`` name, so a kill -9 while
its files go never leaves half a release under a name dewy would use. Leftovers
of both kinds are removed when dewy starts, and before each new release is built.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from dewy import log
from dewy.errors import ArchiveError
from dewy.fsutil import fsync_dir, remove_tree, sync_filesystem

PARTIAL_PREFIX = ".partial-"
DELETING_PREFIX = ".deleting-"


class Releases:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / "releases"
        self.current = root / "current"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._sweep()

    def _sweep(self) -> None:
        """Remove what a kill -9, or a disk fault that kept a release from being deleted, left half-done."""
        for leftover in self.directory.iterdir():
            if leftover.name.startswith((PARTIAL_PREFIX, DELETING_PREFIX)):
                _remove_tree(leftover)

    def new_name(self) -> str:
        """A UTC timestamp name, unique even for two deploys within one second."""
        now = datetime.now(timezone.utc)
        name = now.strftime("%Y%m%dT%H%M%S.%fZ")
        suffix = 1
        while (self.directory / name).exists():
            name = f"{now.strftime('%Y%m%dT%H%M%S.%f')}-{suffix}Z"
            suffix += 1
        return name

    @contextmanager
    def building(self, name: str) -> Iterator[Path]:
        """The directory release ``name`` is extracted into, under its partial name; removed if the block fails
        (then whatever wrote into it has ended: a stopped extraction's thread is waited for by its caller)."""
        self._sweep()  # one build at a time: any partial release now is an earlier one that could not be removed
        partial = self.directory / (PARTIAL_PREFIX + name)
        partial.mkdir()
        try:
            yield partial
        except BaseException:
            _remove_tree(partial)
            raise

    def complete(self, name: str) -> Path:
        """Give the built release its name once all of it is on disk (one syncfs, not an fsync per file)."""
        sync_filesystem(self.directory)
        final = self.directory / name
        os.rename(self.directory / (PARTIAL_PREFIX + name), final)
        fsync_dir(self.directory)
        return final

    def current_dir(self) -> Path | None:
        """The release ``current`` points at, if it is a complete one."""
        try:
            target = (self.root / os.readlink(self.current)).resolve()
        except OSError:
            return None
        return target if target.is_dir() else None

    def switch(self, release: Path) -> None:
        """Point ``current`` at ``release`` atomically: there is never a moment without ``current``."""
        staged = self.root / f".current-{os.getpid()}"
        staged.unlink(missing_ok=True)
        os.symlink(os.path.relpath(release, self.root), staged)
        os.replace(staged, self.current)
        fsync_dir(self.root)

    def prune(self, keep: int, protect: Iterable[Path] = ()) -> list[Path]:
        """Delete all but the newest ``keep`` releases, never one in ``protect`` (current, or what a
        generation still runs from, such as one draining after a restart)."""
        protected = {Path(p).resolve() for p in protect}
        names = sorted((p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
        doomed = [p for p in names[:-keep] if p.resolve() not in protected]
        for path in doomed:
            self.remove(path)
        return doomed

    def remove(self, release: Path) -> None:
        """Rename ``release`` out of the way, then delete it (see the module docstring)."""
        doomed = self.directory / (DELETING_PREFIX + release.name)
        suffix = 0
        while os.path.lexists(doomed):  # an earlier deletion of this name that could not finish
            suffix += 1
            doomed = self.directory / f"{DELETING_PREFIX}{release.name}-{suffix}"
        try:
            os.rename(release, doomed)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("remove-failed", f"could not delete {release}: {exc.strerror or exc}")
            return
        fsync_dir(self.directory)
        _remove_tree(doomed)


def _remove_tree(path: Path) -> None:
    """Best effort: what cannot be deleted now keeps its dot-name and is tried again when dewy starts."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("remove-failed", f"could not delete {path}: {exc.strerror or exc}; dewy tries again before the next deploy")


__all__ = ["Releases", "ArchiveError"]
