"""The local artifact store: verified archives on disk, keyed ``<tag>--<artifact name>``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from dewy import log
from dewy.artifacts import ARTIFACTS
from dewy.errors import ArtifactError
from dewy.fsutil import TEMP_PREFIX, atomic_file, bad_file_name, remove_temp_files
from dewy.registry import Release
from dewy.signing import MinisignCheck, Signed, TrustedKey, await_signature, fetch_check, finish
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
    """Passes writes through to a file while computing their sha256 (and feeding a signature check)."""

    def __init__(self, out: BinaryIO, check: MinisignCheck | None = None) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.check = check
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        if self.check:
            self.check.update(data)
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
    def __init__(self, directory: Path, trusted_keys: Sequence[TrustedKey] = ()) -> None:
        self.directory = directory
        self.trusted_keys = trusted_keys  # verify=minisign: only archives these keys signed are handed out
        self.signed: dict[str, Signed] = {}  # cache key -> who signed the archive fetch() last handed out
        directory.mkdir(parents=True, exist_ok=True)
        remove_temp_files(directory)

    def path(self, release: Release) -> Path:
        """Where ``release``'s artifact is stored: a file directly in the cache, whatever the registry answered."""
        problem = bad_file_name(release.cache_key)
        if problem:
            raise ArtifactError(f"{release.tag}: the artifact name {release.artifact_name[:100]!r} cannot name a file in"
                                f" the cache: {release.cache_key[:100]!r} {problem}; nothing deployed")
        return self.directory / release.cache_key

    def check_ready(self, release: Release) -> None:
        """ArtifactNotReady while a release that must be signed has no signature yet (CI may be uploading it)."""
        if self.trusted_keys:
            await_signature(release)

    async def fetch(self, release: Release) -> Path:
        """The verified archive for ``release``, downloading it unless already stored. With trusted keys, its
        signature is checked before the download and again for a stored archive (the keys may have changed)."""
        target = self.path(release)
        check = await fetch_check(release, self.trusted_keys) if self.trusted_keys else None
        if target.exists():
            if check:
                self.signed[release.cache_key] = await asyncio.to_thread(_finish_stored, check, target)
            return target
        expected = await self._published_sha256(release)
        with atomic_file(target) as out:
            writer = HashingWriter(out, check)
            await ARTIFACTS.load(Url.parse(release.artifact_url)).download(writer)
            actual = writer.sha256.hexdigest()
            if expected and actual != expected:
                raise ArtifactError(
                    f"{release.artifact_name} of {release.tag}: sha256 mismatch (published {expected}, downloaded {actual});"
                    " the artifact was not deployed"
                )
            if check:
                out.flush()
                self.signed[release.cache_key] = await asyncio.to_thread(finish, check, out)
        log.info("downloaded", f"downloaded {release.artifact_name} ({writer.size} bytes)", version=release.tag,
                 sha256=actual, verified=bool(expected), **({"signed_by": str(self.signed[release.cache_key])} if check else {}))
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


def _finish_stored(check: MinisignCheck, path: Path) -> Signed:
    with path.open("rb") as file:
        return finish(check, file, fed=False)
