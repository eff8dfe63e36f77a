"""Releases on disk: ``DIR/releases/<UTC timestamp>/`` and the ``DIR/current`` symlink.

A release is extracted under a ``.partial-`` name and renamed when complete, and
``current`` is replaced by rename(2) of a new symlink, so a kill -9 at any moment
leaves ``current`` pointing at a complete release.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from dewy import archive
from dewy.errors import ArchiveError
from dewy.fsutil import fsync_dir

PARTIAL_PREFIX = ".partial-"


class Releases:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / "releases"
        self.current = root / "current"
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(PARTIAL_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def new_name(self) -> str:
        """A UTC timestamp name, unique even for two deploys within one second."""
        now = datetime.now(timezone.utc)
        name = now.strftime("%Y%m%dT%H%M%S.%fZ")
        suffix = 1
        while (self.directory / name).exists():
            name = f"{now.strftime('%Y%m%dT%H%M%S.%f')}-{suffix}Z"
            suffix += 1
        return name

    def extract(self, artifact: Path, name: str, max_bytes: int) -> Path:
        """Unpack ``artifact`` into ``releases/<name>``; on failure nothing is left behind."""
        partial = self.directory / (PARTIAL_PREFIX + name)
        partial.mkdir()
        try:
            archive.extract(artifact, partial, max_bytes=max_bytes)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        final = self.directory / name
        os.rename(partial, final)
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

    def prune(self, keep: int, protect: set[Path]) -> list[Path]:
        """Delete all but the newest ``keep`` releases, never one in ``protect`` (current, running)."""
        names = sorted((p for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
        doomed = [p for p in names[:-keep] if p.resolve() not in {x.resolve() for x in protect}]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
        return doomed

    def remove(self, release: Path) -> None:
        shutil.rmtree(release, ignore_errors=True)


__all__ = ["Releases", "ArchiveError"]
