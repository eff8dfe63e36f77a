"""GitHub release assets: ``ghr://OWNER/REPO/tag/TAG/NAME[?asset=ID]``.

The tag form is the one gRPC registry servers hand out (docs/grpc.md);
the ghr:// registry adds ``asset=ID`` so a download needs no lookup of the
release by tag. This module owns the format: :func:`asset_url` builds it.
"""

from __future__ import annotations

from typing import BinaryIO
from urllib.parse import quote

from dewy.errors import ArtifactError, UsageError
from dewy.registry.github import GitHub, split_ghr
from dewy.urls import Url

EXPECTED = "ghr://OWNER/REPO/tag/TAG/NAME"


def asset_url(owner: str, repo: str, tag: str, name: str, asset_id: int | str | None = None) -> str:
    """The artifact URL of asset ``name`` of release ``tag``, with its id when known."""
    url = f"ghr://{owner}/{repo}/tag/{quote(tag, safe='+')}/{quote(name, safe='')}"
    return f"{url}?asset={asset_id}" if asset_id is not None else url


class GitHubAsset:
    """One release asset, streamed through the API (works for private repositories and GitHub Enterprise)."""

    def __init__(self, url: Url) -> None:
        self.owner, self.repo, rest = split_ghr(url, EXPECTED)
        url.check_keys({"asset"})
        if len(rest) != 3 or rest[0] != "tag" or not rest[1] or not rest[2]:
            raise UsageError(f"{url}: expected {EXPECTED}")
        self.tag, self.name = rest[1], rest[2]
        self.asset_id = url.query.get("asset")
        if self.asset_id is not None and not self.asset_id.isdigit():
            raise UsageError(f"{url}: asset={self.asset_id!r} is not a numeric asset id")
        self.url = url
        self.github = GitHub(error=ArtifactError)

    async def download(self, out: BinaryIO) -> None:
        """Write the asset's bytes to ``out``; the connection is closed afterwards, as callers use each asset once."""
        try:
            await self.github.download(await self._api_url(), out)
        finally:
            await self.github.aclose()

    async def _api_url(self) -> str:
        """The asset's API URL: straight from its id, else found in the release looked up by tag."""
        repo = f"/repos/{self.owner}/{self.repo}"
        if self.asset_id is not None:
            return f"{self.github.api_url}{repo}/releases/assets/{self.asset_id}"
        release = await self.github.release(f"{repo}/releases/tags/{quote(self.tag, safe='+')}")
        for asset in release.assets:
            if asset.name == self.name and asset.state == "uploaded" and asset.url:
                return asset.url
        raise ArtifactError(f"{self.url}: release {self.tag} has no asset {self.name!r}")

    async def aclose(self) -> None:
        await self.github.aclose()
