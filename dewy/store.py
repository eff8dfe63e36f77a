"""The local artifact store: verified archives on disk, keyed ``<tag>--<artifact name>``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Protocol

from dewy import log
from dewy.artifacts import ARTIFACTS, Artifact
from dewy.artifacts.file import LocalFile
from dewy.errors import ArtifactError, CorruptArchive
from dewy.fsutil import TEMP_PREFIX, bad_file_name, fsync_dir, remove_temp_files, sync_filesystem
from dewy.progress import SAMPLE
from dewy.registry import Release
from dewy.signing import MinisignCheck, Signed, TrustedKey, await_signature, fetch_check, finish
from dewy.spool import Aborted, AnySpool, MemorySpool, Reader, Spool
from dewy.urls import Url

Unpack = Callable[[Reader], None]
Sample = Callable[[AnySpool, Reader | None], None]


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


class Verifier(Protocol):
    """A check of the artifact's bytes, fed each chunk as it arrives and asked, once all have, whether they pass.

    The release is extracted while it downloads, but neither the artifact is stored nor the
    release switched to before every verifier of :meth:`ArtifactStore.verifiers` has passed.
    """

    needs_file: bool  # its verdict reads the whole artifact again: the bytes must be spooled to a file

    def update(self, data: bytes | memoryview) -> None: ...

    def verify(self, artifact: Path | None) -> None:
        """Raise ArtifactError if the bytes fed (all of them in ``artifact`` now, if spooled to a file) are not the
        published ones."""


class Checksum:
    """The sha256 of the bytes, against the published one when the release has one."""

    needs_file = False

    def __init__(self, release: Release, expected: str | None) -> None:
        self.release = release
        self.expected = expected
        self.sha256 = hashlib.sha256()

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)

    def verify(self, artifact: Path | None) -> None:
        actual = self.sha256.hexdigest()
        if self.expected and actual != self.expected:
            raise ArtifactError(f"{self.release.artifact_name} of {self.release.tag}: sha256 mismatch (published"
                                f" {self.expected}, downloaded {actual}); the artifact was not deployed")


class Signature:
    """The artifact's minisign signature (verify=minisign), fed the same bytes as the checksum; the legacy form
    signs the whole file, so it is checked over the spooled file once the last byte is in."""

    def __init__(self, check: MinisignCheck) -> None:
        self.check = check
        self.signed: Signed | None = None
        self.needs_file = not check.prehashed

    def update(self, data: bytes | memoryview) -> None:
        self.check.update(data)

    def verify(self, artifact: Path | None) -> None:
        if artifact is None:
            self.signed = self.check.verify()  # prehashed: what update saw is all it needs
            return
        with artifact.open("rb") as file:
            self.signed = finish(self.check, file)


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

    async def verifiers(self, release: Release) -> list[Verifier]:
        """What the artifact's bytes must pass before it is stored or deployed, each fed the same bytes as they
        are written: its checksum and, with trusted keys, its signature (fetched before the download: a release
        without one is refused before any of its bytes are)."""
        found: list[Verifier] = [Checksum(release, await self._published_sha256(release))]
        if self.trusted_keys:
            found.append(Signature(await fetch_check(release, self.trusted_keys)))
        return found

    async def fetch(self, release: Release, unpack: Unpack | None = None, progress: Sample | None = None) -> Path | None:
        """The verified archive for ``release``, downloading it unless already stored or local (file://).

        ``unpack`` (blocking, run in a thread) reads the bytes while they arrive; the artifact
        is stored only once the download, every verifier and ``unpack`` have succeeded, and
        its bytes (with all ``unpack`` wrote on the same filesystem) are on disk: one syncfs.
        A downloaded plain .tar that is unpacked is not stored: its release holds every byte
        of it, and keeping it too would write them twice. Its bytes go from memory straight
        into the release (a :class:`MemorySpool`) and None is returned; only where a verifier
        must read the whole file again (a legacy minisign signature) is it spooled to a file,
        which the caller hands to :meth:`done_with`.
        The first failure ends the others and nothing is stored; what ``unpack`` wrote is the
        caller's to delete. ``progress`` is called about every second while this runs.
        With trusted keys a stored archive's signature is checked again (the keys may have changed).
        """
        target = self.path(release)
        if target.exists():
            if self.trusted_keys:
                check = await fetch_check(release, self.trusted_keys)
                self.signed[release.cache_key] = await asyncio.to_thread(_finish_stored, check, target)
            if unpack:
                spool = Spool.of_file(target, release.artifact_name)
                with spool.reader() as reader:
                    try:
                        await _all_of([_thread("extract", unpack, reader)], spool, reader, progress)
                    except CorruptArchive:  # a bad copy (a file:// artifact copied while being written): fetch it again
                        target.unlink(missing_ok=True)
                        raise
            return target
        artifact = ARTIFACTS.load(Url.parse(release.artifact_url))
        if isinstance(artifact, LocalFile) and not self.trusted_keys:
            return await self._in_place(release, artifact, unpack, progress)
        verifiers = await self.verifiers(release)
        keep = unpack is None or not release.artifact_name.lower().endswith(".tar")
        if not keep and not any(v.needs_file for v in verifiers):
            streamed = MemorySpool(release.artifact_name)
            await _one_pass(streamed, verifiers, unpack, progress, self._download(artifact, streamed))
            self._fetched(release, verifiers, f"downloaded {release.artifact_name} ({streamed.size} bytes) into its release")
            return None
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.directory)
        spool = Spool(Path(temp), release.artifact_name, fd)
        try:
            try:
                await _one_pass(spool, verifiers, unpack, progress, self._download(artifact, spool))
            finally:
                os.close(fd)
            if keep:
                await asyncio.to_thread(sync_filesystem, self.directory)
                os.replace(temp, target)
                fsync_dir(self.directory)
            else:
                target = Path(temp)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self._fetched(release, verifiers, f"downloaded {release.artifact_name} ({spool.size} bytes)")
        return target

    def _fetched(self, release: Release, verifiers: list[Verifier], line: str) -> None:
        """Note who signed the bytes, and tell their sha256 (the ``downloaded`` event, read or downloaded)."""
        checksum = next(v for v in verifiers if isinstance(v, Checksum))
        signed = next((v.signed for v in verifiers if isinstance(v, Signature)), None)
        if signed:
            self.signed[release.cache_key] = signed
        log.info("downloaded", line, version=release.tag, sha256=checksum.sha256.hexdigest(),
                 verified=bool(checksum.expected), **({"signed_by": str(signed)} if signed else {}))

    async def _in_place(self, release: Release, artifact: LocalFile, unpack: Unpack | None,
                        progress: Sample | None) -> Path:
        """A file:// artifact is local already: verified and unpacked where it lies, never copied into the cache.
        (With trusted keys it is copied: the signature must cover bytes nobody else can change while they are read.)"""
        verifiers = await self.verifiers(release)
        fd = artifact.open()
        try:
            spool = Spool.of_file(artifact.path, release.artifact_name, fd)
            await _one_pass(spool, verifiers, unpack, progress)
        finally:
            os.close(fd)
        self._fetched(release, verifiers, f"read {release.artifact_name} where it lies ({spool.size} bytes)")
        return artifact.path

    def done_with(self, artifact: Path | None) -> None:
        """Done with what :meth:`fetch` returned: an artifact the cache does not keep (a downloaded plain .tar,
        all of whose bytes are in its release) is deleted, before the release is made durable, so its bytes are
        never written out (the kernel drops the dirty pages of a deleted file)."""
        if artifact is not None and artifact.parent == self.directory and artifact.name.startswith(TEMP_PREFIX):
            artifact.unlink(missing_ok=True)

    async def _download(self, artifact: Artifact, spool: AnySpool) -> None:
        try:
            await artifact.download(spool)  # type: ignore[arg-type]
        except BaseException:
            spool.abort()
            raise
        spool.finish()

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


def _feed(reader: Reader, verifiers: list[Verifier]) -> None:
    """Give every verifier the bytes as they arrive, as views rather than copies (a thread of its own: hashing
    never holds up the event loop, and runs beside the extraction)."""
    with reader:
        for view in reader.views():
            for verifier in verifiers:
                verifier.update(view)


async def _one_pass(spool: AnySpool, verifiers: list[Verifier], unpack: Unpack | None, progress: Sample | None,
                    download: Coroutine[None, None, None] | None = None) -> None:
    """Feed the verifiers and ``unpack`` the bytes of ``spool`` while ``download`` (if any) writes them; raise
    the first failure, or a verifier's verdict where all bytes came (a mismatch explains a failed extraction)."""
    reader = spool.reader() if unpack else None
    verifying = _thread("verify", _feed, spool.reader(), verifiers)
    work = ([asyncio.ensure_future(download)] if download else []) + [verifying]
    try:
        try:
            await _all_of(work + ([_thread("extract", _unpacking, unpack, reader)] if unpack else []), spool, reader,
                          progress)
        except Exception:
            if not verifying.cancelled() and verifying.exception() is None:  # every byte came and was checked
                await asyncio.to_thread(_verify, verifiers, spool.path)
            raise
        await asyncio.to_thread(_verify, verifiers, spool.path)
    finally:
        if reader:
            reader.close()


def _unpacking(unpack: Unpack, reader: Reader) -> None:
    """Unpack, then let go of the bytes: a memory spool must not hold the download back for a reader that is done
    (a plain .tar ends at its end-of-archive marker; whatever follows is for the verifiers only)."""
    with reader:
        unpack(reader)


def _thread(name: str, work: Callable[..., None], *args: object) -> asyncio.Future:
    """Run blocking ``work`` in a thread of its own: readers waiting for bytes must never hold the pool's
    threads that the download writing those bytes may need (file://, s3://, gs:// write from one)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result: object, failure: BaseException | None) -> None:
        if not future.done():
            future.set_exception(failure) if failure else future.set_result(result)

    def run() -> None:
        try:
            result, failure = work(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, failure = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, failure)
        except RuntimeError:
            pass  # the loop has closed: dewy stopped, and the next start removes what was left
    threading.Thread(target=run, name=name, daemon=True).start()
    return future


async def _all_of(tasks: list[asyncio.Future], spool: AnySpool, reader: Reader | None,
                  progress: Sample | None) -> None:
    """Wait for every task; at the first real failure (or a stop) end the others and raise it.

    A failure once every byte is in aborts nothing: the other readers finish by themselves,
    so the verifiers still tell whether the bytes were the published ones. Threads cannot be
    cancelled: an aborted spool ends them at their next read, and they are waited for.
    """
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, timeout=SAMPLE, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                failure = task.exception()
                if failure is not None and not isinstance(failure, Aborted):
                    raise failure
            if progress:
                progress(spool, reader)
    except BaseException as exc:
        if isinstance(exc, asyncio.CancelledError) or not spool.done:
            spool.abort()
        for task in tasks:
            if isinstance(task, asyncio.Task):
                task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # seen: only the first failure is told
        raise


def _verify(verifiers: list[Verifier], artifact: Path | None) -> None:
    """Every verifier's verdict, in a thread: the legacy signature form reads the whole file."""
    for verifier in verifiers:
        verifier.verify(artifact)


def _finish_stored(check: MinisignCheck, path: Path) -> Signed:
    with path.open("rb") as file:
        return finish(check, file, fed=False)
