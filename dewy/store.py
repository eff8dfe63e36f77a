"""The local artifact store: verified archives on disk, keyed ``<tag>--<artifact name>``."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from dewy import log
from dewy.artifacts import ARTIFACTS
from dewy.errors import ArtifactError
from dewy.fsutil import TEMP_PREFIX, atomic_file, bad_file_name, remove_temp_files
from dewy.registry import Release
from dewy.urls import Url


def default_cache_dir() -> Path:
    """$DEWY_CACHEDIR, else ./.dewy/cache, else a fresh temp dir (with a warning: nothing survives a reboot)."""
    if os.environ.get("DEWY_CACHEDIR"):
        return Path(os.environ["DEWY_CACHEDIR"])
    local = Path.cwd() / ".dewy" / "cache"
    try:
        local.mkdir(parents=True, exist_ok=True)
        return local
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix="dewy-cache-"))
        log.warning("cache-dir", f"cannot use {local} ({exc.strerror}); caching in {fallback}, which is lost on reboot; set DEWY_CACHEDIR")
        return fallback


class HashingWriter:
    """Passes writes through to a file while computing their sha256."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.out.write(data)


def parse_checksums(text: str, artifact: str) -> str | None:
    """The sha256 for ``artifact`` from a goreleaser/sha256sum listing, or a bare ``<artifact>.sha256`` file."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    for fields in lines:
        if len(fields) >= 2 and fields[-1].lstrip("*") == artifact:
            return fields[0].lower()
    if len(lines) == 1 and len(lines[0]) == 1:
        return lines[0][0].lower()
    return None


class ArtifactStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        remove_temp_files(directory)

    def path(self, release: Release) -> Path:
        """Where ``release``'s artifact is stored: a file directly in the cache, whatever the registry answered."""
        problem = bad_file_name(release.cache_key)
        if problem:
            raise ArtifactError(f"{release.tag}: the artifact name {release.artifact_name[:100]!r} cannot name a file in"
                                f" the cache: {release.cache_key[:100]!r} {problem}; nothing deployed")
        return self.directory / release.cache_key

    async def fetch(self, release: Release) -> Path:
        """The verified archive for ``release``, downloading it unless already stored."""
        target = self.path(release)
        if target.exists():
            return target
        expected = await self._published_sha256(release)
        with atomic_file(target) as out:
            writer = HashingWriter(out)
            await ARTIFACTS.load(Url.parse(release.artifact_url)).download(writer)
            actual = writer.sha256.hexdigest()
            if expected and actual != expected:
                raise ArtifactError(
                    f"{release.artifact_name} of {release.tag}: sha256 mismatch (published {expected}, downloaded {actual});"
                    " the artifact was not deployed"
                )
        log.info("downloaded", f"downloaded {release.artifact_name} ({writer.size} bytes)", version=release.tag,
                 sha256=actual, verified=bool(expected))
        return target

    async def _published_sha256(self, release: Release) -> str | None:
        if not release.checksums_url:
            return None
        with tempfile.TemporaryFile(dir=self.directory, prefix=TEMP_PREFIX) as listing:
            await ARTIFACTS.load(Url.parse(release.checksums_url)).download(listing)
            listing.seek(0)
            text = listing.read(1 << 20).decode("utf-8", "replace")
        digest = parse_checksums(text, release.artifact_name)
        if digest is None:
            raise ArtifactError(f"{release.tag}: the release's checksum file does not list {release.artifact_name}")
        return digest

    def prune(self, keep: set[str]) -> None:
        """Delete stored artifacts whose key is not in ``keep``."""
        for entry in self.directory.iterdir():
            if entry.is_file() and not entry.name.startswith(".") and entry.name not in keep:
                entry.unlink(missing_ok=True)
