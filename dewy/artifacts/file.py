"""``file:///PATH``: an artifact on a local or mounted filesystem, read where it lies, or copied in the kernel."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from dewy.artifacts import expect
from dewy.errors import ArtifactError
from dewy.urls import Url

CHUNK = 1 << 20
SPLICE = 16 << 20  # one copy_file_range call


class LocalFile:
    def __init__(self, url: Url) -> None:
        self.url = url
        self.path = Path(unquote(url.path))

    def open(self) -> int:
        """A descriptor of the file, for reading it where it lies."""
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ArtifactError(f"{self.url}: cannot read artifact: {exc.strerror}") from None

    def _copy(self, out: BinaryIO) -> None:
        try:
            with self.path.open("rb") as src:
                expect(out, os.fstat(src.fileno()).st_size)
                splice = getattr(out, "splice", None)  # a spool copies in the kernel
                if splice is None:
                    shutil.copyfileobj(src, out, CHUNK)
                while splice and splice(src.fileno(), SPLICE):
                    pass
        except OSError as exc:
            raise ArtifactError(f"{self.url}: cannot read artifact: {exc.strerror}") from None

    async def download(self, out: BinaryIO) -> None:
        await asyncio.to_thread(self._copy, out)

    async def aclose(self) -> None:
        pass
