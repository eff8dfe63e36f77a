"""The Artifact interface: fetching a release's bytes by URL scheme, streamed to a file."""

from __future__ import annotations

from typing import BinaryIO, Protocol

from dewy.urls import Plugins

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


async def room(out: BinaryIO) -> None:
    """After a write on the event loop: let a sink that holds the bytes in memory (a MemorySpool) catch up,
    as its write never blocks the loop. A write from a thread waits inside ``write`` instead."""
    wait = getattr(out, "room", None)
    if wait is not None:
        await wait()


def expect(out: BinaryIO, size: int | None) -> None:
    """Tell a sink that shows progress (a spool) how many bytes are coming; a plain file needs not know."""
    if size is not None and hasattr(out, "expect"):
        out.expect(size)
