"""``file:///DIR``: releases in a local or shared directory laid out as ``DIR/<semver>/<artifact>``.

The embedded default registry: works with no network, and is the same layout
as the s3:// and gs:// object stores.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timezone
from pathlib import Path

from dewy.errors import RegistryError, UsageError
from dewy.fsutil import write_atomic
from dewy.registry import Release, checksum_file, missing_artifact, select_artifact, shipped_name, shipped_text
from dewy.urls import Url
from dewy.versions import newest, parse_tag


class DirectoryRegistry:
    def __init__(self, url: Url, *, slot: str | None = None) -> None:
        url.check_keys({"pre-release", "artifact"})
        if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
            raise UsageError(f"{url}: expected file:///ABSOLUTE/DIR")
        self.url = url
        self.root = Path(url.path)
        self.prerelease = url.flag("pre-release")
        self.artifact = url.query.get("artifact") or None
        self.slot = slot

    def _current(self) -> Release:
        try:
            tags = [entry.name for entry in self.root.iterdir() if entry.is_dir() and parse_tag(entry.name)]
        except OSError as exc:
            raise RegistryError(f"{self.url}: cannot list releases: {exc.strerror}") from None
        tag = newest(tags, str, prerelease=self.prerelease, slot=self.slot)
        if tag is None:
            raise RegistryError(f"{self.url}: no release directory named by a semantic version (like v1.2.3/)")
        directory = self.root / tag
        names = sorted(p.name for p in directory.iterdir() if p.is_file())
        created = datetime.fromtimestamp(directory.stat().st_mtime, timezone.utc)
        name = select_artifact(names, self.artifact)
        if name is None:
            raise missing_artifact(str(self.url), tag, self.artifact, names, created)
        checksums = checksum_file(names, name)
        return Release(
            tag=tag,
            version=parse_tag(tag),
            artifact_name=name,
            artifact_url=(directory / name).as_uri(),
            created_at=created,
            checksums_url=(directory / checksums).as_uri() if checksums else None,
            id=tag,
        )

    async def current(self) -> Release:
        return await asyncio.to_thread(self._current)

    async def report(self, release: Release, command: str, error: str | None = None) -> None:
        if error is not None:
            return
        host = socket.gethostname()
        name = shipped_name(host, command, datetime.now(timezone.utc))
        try:
            await asyncio.to_thread(write_atomic, self.root / release.tag / name, shipped_text(host, command, name).encode())
        except OSError as exc:
            raise RegistryError(f"{self.url}: cannot write audit record {name}: {exc.strerror}") from None

    async def aclose(self) -> None:
        pass
