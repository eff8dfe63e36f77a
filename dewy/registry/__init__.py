"""The Registry interface: where versions are listed, and where deploys are reported.

A registry answers "what is the newest eligible release?" with a :class:`Release`
naming its artifact by URL; the bytes are fetched by an :mod:`dewy.artifacts`
backend chosen by that URL's scheme, so a registry and its artifact store can
differ (gRPC registries hand out s3:// or ghr:// artifact URLs).
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

import semver

from dewy.archive import SUFFIXES
from dewy.errors import ArtifactNotReady, RegistryError
from dewy.fsutil import bad_file_name
from dewy.urls import Plugins
from dewy.versions import CalVer, Selection, same_tag

REGISTRIES = Plugins("registry", {
    "ghr": "dewy.registry.ghr:GitHubReleases",
    "file": "dewy.registry.file:DirectoryRegistry",
    "s3": "dewy.registry.s3:S3Registry",
    "gs": "dewy.registry.gs:GCSRegistry",
    "grpc": "dewy.registry.grpc:GrpcRegistry",
    "img": "dewy.registry.img:ImageRegistry",
})

CHECKSUM_FILES = ("checksums.txt", "sha256sums", "sha256sums.txt")
UPLOAD_GRACE = timedelta(minutes=30)

OS_WORDS = {"linux": ("linux",), "darwin": ("darwin", "macos"), "win32": ("windows",)}
ARCH_WORDS = {
    "x86_64": ("amd64", "x86_64", "x64"),
    "aarch64": ("arm64", "aarch64"),
    "arm64": ("arm64", "aarch64"),
    "armv7l": ("armv7", "armhf", "arm"),
    "i686": ("386", "i386", "i686", "x86"),
    "ppc64le": ("ppc64le",),
    "s390x": ("s390x",),
    "riscv64": ("riscv64",),
}


@dataclass(frozen=True)
class Release:
    """One deployable release: its version and the artifact to fetch."""

    tag: str
    version: semver.Version | CalVer
    artifact_name: str
    artifact_url: str
    created_at: datetime | None = None
    checksums_url: str | None = None  # goreleaser checksums.txt / SHA256SUMS / <artifact>.sha256
    signature_url: str | None = None  # <artifact>.minisig, when the release has one
    id: str = ""  # the registry's own release id, echoed back in reports

    @property
    def cache_key(self) -> str:
        return f"{self.tag}--{self.artifact_name}"


class Registry(Protocol):
    """Lists versions and records deploys. Implementations are constructed from their URL."""

    async def current(self) -> Release:
        """The newest eligible release; raises RegistryError, or ArtifactNotReady inside the upload grace."""

    async def release(self, tag: str) -> Release:
        """The release ``tag`` names (``1.2.0`` finds ``v1.2.0``), newest or not: ``dewy pin`` deploys it.
        RegistryError in one line when the registry has no such release, its version rules refuse the tag,
        or it cannot look one release up."""

    async def report(self, release: Release, command: str, error: str | None = None) -> None:
        """Record that ``release`` was shipped to this host (or failed with ``error``)."""

    async def aclose(self) -> None:
        """Release connections."""


def host_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Words that name this host's OS and CPU architecture in artifact file names."""
    machine = platform.machine().lower()
    return OS_WORDS.get(sys.platform, (sys.platform,)), ARCH_WORDS.get(machine, (machine,))


def is_archive(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


SHOWN_NAMES = 20  # file names an error lists at most


def _has_word(name: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])", name) for w in words)


def select_artifact(names: list[str], wanted: str | None) -> str | None:
    """``wanted`` if present, else the first archive naming this host's OS and architecture."""
    if wanted:
        return wanted if wanted in names else None
    os_words, arch_words = host_words()
    for name in names:
        lower = name.lower()
        if is_archive(lower) and _has_word(lower, os_words) and _has_word(lower, arch_words):
            return name
    return None


def checksum_file(names: list[str], artifact: str) -> str | None:
    """The name of the release's checksum file covering ``artifact``, if it publishes one."""
    for name in names:
        if name == artifact + ".sha256":
            return name
    for name in names:
        lower = name.lower()
        if lower in CHECKSUM_FILES or lower.endswith(("_checksums.txt", "-checksums.txt", ".sha256sums")):
            return name
    return None


def signature_file(names: list[str], artifact: str) -> str | None:
    """The name of ``artifact``'s minisign signature, if the release has one."""
    name = artifact + ".minisig"
    return name if name in names else None


def missing_artifact(where: str, tag: str, wanted: str | None, names: list[str], created_at: datetime | None) -> RegistryError:
    """The error for a release without a usable artifact: quiet while CI may still be uploading."""
    what = f"artifact {wanted!r}" if wanted else "archive for {}/{}".format(*(w[0] for w in host_words()))
    age = datetime.now(timezone.utc) - created_at if created_at else None
    if age is not None and age < UPLOAD_GRACE:
        return ArtifactNotReady(f"{where}: release {tag} has no {what} yet (published {int(age.total_seconds())}s ago; waiting for the upload)")
    shown = names[:SHOWN_NAMES] + ([f"... {len(names) - SHOWN_NAMES} more"] if len(names) > SHOWN_NAMES else [])
    listing = ", ".join(shown) if names else "no files"
    return RegistryError(f"{where}: release {tag} has no {what} (it has {listing}); set artifact= in the registry URL")


def find_tag(where: str, given: str, tags: Iterable[str], selection: Selection, version_of=lambda tag: tag) -> str:
    """The registry's own tag among ``tags`` for the version ``given`` (``1.2.0`` is ``v1.2.0``): a lookup by tag.
    RegistryError in one line when the version rules (``version_of`` reads a tag's version text) refuse it or
    the registry has no such release."""
    why = selection.refusal(version_of(given))
    if why:
        raise RegistryError(f"{where}: {given} is not deployed from this registry: it is {why}")
    tag = next((t for t in tags if same_tag(t, given)), None)
    if tag is None:
        raise RegistryError(f"{where} has no release {given}")
    return tag


@dataclass(frozen=True)
class ReleaseFiles:
    """The files of a release that dewy uses, by name."""

    artifact: str
    checksums: str | None
    signature: str | None


def release_files(where: str, tag: str, wanted: str | None, names: list[str], created_at: datetime | None,
                  kind: str = "file") -> ReleaseFiles:
    """The artifact among a release's file names (``wanted``, else this host's), its checksum file and signature;
    ArtifactNotReady / RegistryError (one line) when there is none or a name dewy will not write to disk."""
    artifact = select_artifact(names, wanted)
    if artifact is None:
        raise missing_artifact(where, tag, wanted, names, created_at)
    checksums = checksum_file(names, artifact)
    for used in filter(None, (artifact, checksums)):
        problem = bad_file_name(used)
        if problem:
            raise RegistryError(f"{where}: release {tag}: the {kind} name {used[:100]!r} {problem}; nothing deployed")
    return ReleaseFiles(artifact, checksums, signature_file(names, artifact))


def shipped_name(host: str, command: str, when: datetime) -> str:
    """The audit record's file name, ``shipped_to_<host>_<command>_at_<UTC ts with ns>.txt``."""
    when = when.astimezone(timezone.utc)
    stamp = when.strftime("%Y%m%dT%H%M%S") + f".{when.microsecond * 1000:09d}Z"
    return f"shipped_to_{host}_{command}_at_{stamp}.txt"


def shipped_text(host: str, command: str, name: str) -> str:
    stamp = name.rsplit("_at_", 1)[1].removesuffix(".txt")
    return f"shipped to {host} {command} at {stamp}"
