"""GitHub Releases registry: ``ghr://OWNER/REPO?pre-release=true&artifact=NAME``."""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from urllib.parse import quote

from dewy.artifacts.ghr import asset_url
from dewy.errors import RegistryError, UsageError
from dewy.registry import Release, find_tag, release_files, shipped_name, shipped_text
from dewy.registry.github import GitHub, GitHubRelease, split_ghr
from dewy.urls import Url
from dewy.versions import QUERY_KEYS as VERSION_KEYS, Selection

EXPECTED = "ghr://OWNER/REPO?pre-release=true&artifact=NAME"


class GitHubReleases:
    """The newest eligible release of one repository; deploys are recorded as release assets."""

    def __init__(self, url: Url, *, slot: str | None = None) -> None:
        self.owner, self.repo, rest = split_ghr(url, EXPECTED)
        if rest:
            raise UsageError(f"{url}: expected {EXPECTED}")
        url.check_keys({"pre-release", "artifact", *VERSION_KEYS})
        self.prerelease = url.flag("pre-release")
        self.selection = Selection.of(url, prerelease=self.prerelease, slot=slot)
        self.artifact = url.query.get("artifact") or None
        self.slot = slot
        self.where = f"ghr://{self.owner}/{self.repo}"
        self.github = GitHub()

    @property
    def _api_path(self) -> str:
        return f"/repos/{self.owner}/{self.repo}"

    async def current(self) -> Release:
        releases = await self.github.releases(f"{self._api_path}/releases")
        chosen = self.selection.newest(self._published(releases), lambda r: r.tag)
        if chosen is None:
            raise RegistryError(self._nothing_eligible(len(releases)))
        return self._release(chosen)

    async def release(self, tag: str) -> Release:
        """From the same (conditional) listing as :meth:`current`: a 304 costs no rate limit."""
        published = self._published(await self.github.releases(f"{self._api_path}/releases"))
        found = find_tag(self.where, tag, (r.tag for r in published), self.selection)
        return self._release(next(r for r in published if r.tag == found))

    def _published(self, releases: list[GitHubRelease]) -> list[GitHubRelease]:
        return [r for r in releases if not r.draft and (self.prerelease or not r.prerelease)]

    def _release(self, chosen: GitHubRelease) -> Release:
        tag = chosen.tag
        # An asset whose state is not "uploaded" is still being uploaded: not usable yet.
        assets = {a.name: a for a in chosen.assets if a.state == "uploaded"}
        names = list(assets)
        created_at = _timestamp(chosen.published_at or chosen.created_at)
        files = release_files(self.where, tag, self.artifact, names, created_at, kind="asset")

        def url(name: str | None) -> str | None:
            return asset_url(self.owner, self.repo, tag, name, assets[name].id) if name else None

        return Release(
            tag=tag,
            version=self.selection.parse(tag),
            artifact_name=files.artifact,
            artifact_url=url(files.artifact),
            created_at=created_at,
            checksums_url=url(files.checksums),
            signature_url=url(files.signature),
            id="" if chosen.id is None else str(chosen.id),
        )

    def _nothing_eligible(self, count: int) -> str:
        skipped = "drafts, non-semver tags" + ("" if self.prerelease else " and pre-releases (add pre-release=true)")
        slot = f" for slot {self.slot!r}" if self.slot else ""
        return f"{self.where}: no eligible release{slot} among {count} ({skipped} are skipped)"

    async def report(self, release: Release, command: str, error: str | None = None) -> None:
        """Attach the audit record ``shipped_to_<host>_<command>_at_<UTC>.txt`` to the release.

        Failures are not recorded: a release has no place for them, and an
        asset per failed attempt would bury the real artifacts.
        """
        if error is not None:
            return
        host = socket.gethostname()
        name = shipped_name(host, command, datetime.now(timezone.utc))
        data = await self.github.release(f"{self._api_path}/releases/tags/{quote(release.tag, safe='+')}")
        if not data.upload_url:
            raise RegistryError(f"{self.where}: release {release.tag} has no upload_url to record the deploy at")
        await self.github.upload(data.upload_url, name, shipped_text(host, command, name).encode(), "text/plain")

    async def aclose(self) -> None:
        await self.github.aclose()


def _timestamp(text: str | None) -> datetime | None:
    """GitHub's ``2024-05-01T12:00:00Z``; None when absent or unreadable (then no upload grace applies)."""
    try:
        when = datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
    return when.replace(tzinfo=timezone.utc) if when and when.tzinfo is None else when
