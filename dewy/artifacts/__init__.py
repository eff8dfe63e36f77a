"""The Artifact interface: fetching a release's bytes by URL scheme, streamed to a file."""

from __future__ import annotations

from typing import BinaryIO, Protocol

from dewy.urls import Plugins

# Every download has a total deadline, which a server sending a byte every few seconds cannot
# stretch (per-read timeouts never trip for it): this long, plus the bytes received at the rate.
DOWNLOAD_FLOOR = 120.0
MIN_DOWNLOAD_RATE = 256 * 1024  # bytes per second on average: slower is a stalled transfer, not a slow link

ARTIFACTS = Plugins("artifact", {
    "ghr": "dewy.artifacts.ghr:GitHubAsset",
    "file": "dewy.artifacts.file:LocalFile",
    "s3": "dewy.artifacts.s3:S3Object",
    "gs": "dewy.artifacts.gs:GCSObject",
})


class Artifact(Protocol):
    """One artifact, constructed from its URL, streamed into an open binary file without holding it in memory."""

    async def download(self, out: BinaryIO) -> None:
        """Write the artifact's bytes to ``out``; raise ArtifactError on failure."""

    async def aclose(self) -> None:
        """Release connections."""


def download_deadline(start: float, received: int) -> float:
    """When a download begun at ``start`` (a monotonic time) that has ``received`` bytes so far must be done."""
    return start + DOWNLOAD_FLOOR + received / MIN_DOWNLOAD_RATE


def stalled(received: int, seconds: float) -> str:
    """The reason given when a download missed its deadline."""
    return (f"the download stalled ({received} bytes in {seconds:.0f} s, under {MIN_DOWNLOAD_RATE // 1024} KiB/s after"
            f" the first {DOWNLOAD_FLOOR:g} s); dewy retries")
