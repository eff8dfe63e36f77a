"""The object-store layout shared by ``file://``, ``s3://`` and ``gs://``: ``PREFIX/<semver>/<artifact>``.

A backend answers four small questions about its store, each a blocking call
that this base runs in a worker thread: which directories lie under the prefix,
which files lie directly in one of them (and since when the directory exists),
what URL names one file, and how to write one small file. Everything else is
here, once: the newest eligible version, the artifact and checksum choice, the
upload grace measured from the directory's time, and the audit record
``PREFIX/<tag>/shipped_to_<host>_<command>_at_<UTC>.txt``.

A bucket store (S3, GCS) answers those questions with keys:
:class:`BucketRegistry` lists "directories" as the common prefixes of a
delimiter ``/`` listing and files as the keys directly under one, so that such a
backend only lists, writes, names a key and explains its SDK's failures.

Backends raise RegistryError with one line naming the URL, what failed and
what to do.
"""

from __future__ import annotations

import asyncio
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from dewy.errors import RegistryError
from dewy.lazyclient import LazyClient
from dewy.registry import Release, find_tag, release_files, shipped_name, shipped_text
from dewy.urls import Url
from dewy.versions import QUERY_KEYS as VERSION_KEYS, Selection

AUDIT_PREFIX = "shipped_to_"
# How long the file listing of an unchanged newest version is reused (remote stores only):
# a poll then costs one list request, and a change inside the version directory is seen within this time.
LISTING_TTL = 300.0
T = TypeVar("T")


@dataclass(frozen=True)
class Listing:
    """The files directly in one version directory, and when that directory appeared (None: unknown)."""

    names: list[str]
    created: datetime | None


def earliest(times: Iterable[object]) -> datetime | None:
    """The oldest of some object times: when a version "directory" of an object store appeared (what is not a time is unknown)."""
    known = [t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in times if isinstance(t, datetime)]
    return min(known) if known else None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def relative_name(key: str, directory: str) -> str | None:
    """``key`` relative to ``directory`` (which ends in ``/``) if it is a file directly in it, else None."""
    if not key.startswith(directory):
        return None
    name = key[len(directory):]
    return name if name and "/" not in name else None


class ObjectStoreRegistry(ABC):
    """Releases as version directories holding their artifacts. Subclasses implement the four backend calls."""

    QUERY_KEYS = frozenset({"pre-release", "artifact"}) | VERSION_KEYS
    # Reuse the file listing of the newest version while it stays the newest (up to LISTING_TTL):
    # right for remote stores where each list request costs time and money, not for a local directory.
    reuse_listing = True

    def __init__(self, url: Url, *, slot: str | None = None) -> None:
        url.check_keys(self.QUERY_KEYS)
        self.url = url
        self.prerelease = url.flag("pre-release")
        self.selection = Selection.of(url, prerelease=self.prerelease, slot=slot)
        self.artifact = url.query.get("artifact") or None
        self.slot = slot
        self._known: tuple[Release, float] | None = None

    # ------------------------------------------------------------ backend (blocking, run in a thread)

    @abstractmethod
    def list_versions(self) -> Iterable[str]:
        """Names of the directories directly under the prefix (any names; non-semver ones are ignored here)."""

    @abstractmethod
    def list_files(self, tag: str) -> Listing:
        """The files directly in directory ``tag``."""

    @abstractmethod
    def file_url(self, tag: str, name: str) -> str:
        """The artifact URL (any scheme in dewy.artifacts) of file ``name`` in directory ``tag``."""

    @abstractmethod
    def write_file(self, tag: str, name: str, data: bytes) -> None:
        """Create the small file ``name`` in directory ``tag``."""

    def close(self) -> None:
        """Release the backend's connections."""

    # ------------------------------------------------------------ the Registry interface

    async def current(self) -> Release:
        return await asyncio.to_thread(self.newest_release)

    async def release(self, tag: str) -> Release:
        return await asyncio.to_thread(self.release_named, tag)

    async def report(self, release: Release, command: str, error: str | None = None) -> None:
        """Write the audit record into the version's directory. Failed deploys are not recorded (as for GitHub)."""
        if error is not None:
            return
        host = socket.gethostname()
        name = shipped_name(host, command, datetime.now(timezone.utc))
        await asyncio.to_thread(self.write_file, release.tag, name, shipped_text(host, command, name).encode())

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # ------------------------------------------------------------ the shared logic

    def newest_release(self) -> Release:
        tags = self._tags()
        tag = self.selection.newest(tags, str)
        if tag is None:
            raise RegistryError(self._nothing_eligible(tags))
        if self._known is not None:
            known, listed_at = self._known
            if known.tag == tag and time.monotonic() - listed_at < LISTING_TTL:
                return known
        self._known = None
        release = self._release(tag)
        if self.reuse_listing:
            self._known = (release, time.monotonic())
        return release

    def release_named(self, tag: str) -> Release:
        """The release in directory ``tag`` (``1.2.0`` finds ``v1.2.0/``), newest or not."""
        return self._release(find_tag(str(self.url), tag, self._tags(), self.selection))

    def _tags(self) -> list[str]:
        """The version directories whose names are versions in this registry's scheme."""
        return [name for name in self._names(self.list_versions(), "a version directory") if self.selection.parse(name) is not None]

    def _release(self, tag: str) -> Release:
        listing = self.list_files(tag)
        if listing.created is not None and not isinstance(listing.created, datetime):
            raise RegistryError(f"{self.url}: release {tag}: the store gave {listing.created!r} as its time, not a time")
        names = sorted(n for n in self._names(listing.names, f"a file of {tag}") if not n.startswith(AUDIT_PREFIX))
        files = release_files(str(self.url), tag, self.artifact, names, listing.created)
        return Release(
            tag=tag,
            version=self.selection.parse(tag),
            artifact_name=files.artifact,
            artifact_url=self.file_url(tag, files.artifact),
            created_at=listing.created,
            checksums_url=self.file_url(tag, files.checksums) if files.checksums else None,
            signature_url=self.file_url(tag, files.signature) if files.signature else None,
            id=tag,
        )

    def _names(self, names: Iterable[object], what: str) -> list[str]:
        """The names a backend listed, each checked to be text (a misbehaving store answers anything)."""
        listed = list(names)
        for name in listed:
            if not isinstance(name, str):
                raise RegistryError(f"{self.url}: the store listed {_shown(name)} as {what}, which is not a name")
        return listed  # type: ignore[return-value]

    def _nothing_eligible(self, tags: list[str]) -> str:
        found = f"{len(tags)} version directories" if tags else "no directory named by a semantic version (like v1.2.3/)"
        hints = []
        if self.slot:
            hints.append(f"none for slot {self.slot!r}")
        if not self.prerelease and any(self.selection.parse(t).prerelease for t in tags):
            hints.append("pre-releases are skipped without pre-release=true")
        if self.selection.constraint:
            hints.append(f"none within constraint={self.selection.constraint.text}")
        detail = f" ({'; '.join(hints)})" if hints else ""
        return f"{self.url}: no release directory to deploy: found {found}{detail}"


class BucketRegistry(ObjectStoreRegistry):
    """Releases as keys ``PREFIX<tag>/<name>`` in a bucket. Subclasses set ``prefix`` and ``client``, and adapt their SDK."""

    prefix: str  # "" or ending in "/"
    client: LazyClient[Any]

    @abstractmethod
    def common_prefixes(self, prefix: str) -> Iterable[str]:
        """The common prefixes (``prefix`` + name + ``/``) of a listing of ``prefix`` with delimiter ``/``, every page."""

    @abstractmethod
    def objects(self, prefix: str) -> Iterable[tuple[str, object]]:
        """(key, creation or modification time) of each object directly under ``prefix`` (delimiter ``/``), every page."""

    @abstractmethod
    def key_url(self, key: str) -> str:
        """The artifact URL of the object ``key``."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write the small text object ``key``."""

    @abstractmethod
    def explain(self, exc: Exception) -> str | None:
        """A failure of the SDK as the one line an operator acts on; None for an exception that is a bug."""

    def _call(self, doing: str, work: Callable[[], T]) -> T:
        try:
            return work()
        except Exception as exc:
            explained = self.explain(exc)
            if explained is None:
                raise
            raise RegistryError(f"{self.url}: {doing}: {explained}") from None

    def list_versions(self) -> list[str]:
        def work() -> list[str]:
            names = (relative_name(str(p).removesuffix("/"), self.prefix) for p in self.common_prefixes(self.prefix))
            return [name for name in names if name]

        return self._call("cannot list releases", work)

    def list_files(self, tag: str) -> Listing:
        directory = f"{self.prefix}{tag}/"

        def work() -> Listing:
            names, times = [], []
            for key, when in self.objects(directory):
                if not key.startswith(directory):
                    continue  # not ours: a misbehaving server
                times.append(when)  # the directory marker "tag/" counts too
                name = relative_name(key, directory)
                if name:
                    names.append(name)
            return Listing(names, earliest(times))

        return self._call(f"cannot list release {tag}", work)

    def file_url(self, tag: str, name: str) -> str:
        return self.key_url(f"{self.prefix}{tag}/{name}")

    def write_file(self, tag: str, name: str, data: bytes) -> None:
        self._call(f"cannot write audit record {name}", lambda: self.put(f"{self.prefix}{tag}/{name}", data))

    def close(self) -> None:
        self.client.close()
