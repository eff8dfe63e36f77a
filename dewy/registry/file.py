"""``file:///DIR``: releases in a local or shared directory laid out as ``DIR/<semver>/<artifact>``.

The embedded default registry: works with no network, and is the same layout
as the s3:// and gs:// object stores (see :mod:`dewy.registry.objectstore`).
The upload grace counts from the version directory's mtime.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

from dewy.errors import RegistryError, UsageError
from dewy.fsutil import write_atomic
from dewy.registry.objectstore import Listing, ObjectStoreRegistry
from dewy.urls import Url


class DirectoryRegistry(ObjectStoreRegistry):
    reuse_listing = False  # a local listing is cheap: always read it fresh

    def __init__(self, url: Url, *, slot: str | None = None) -> None:
        super().__init__(url, slot=slot)
        if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
            raise UsageError(f"{url}: expected file:///ABSOLUTE/DIR")
        self.root = Path(unquote(url.path))

    def list_versions(self) -> list[str]:
        try:
            return [entry.name for entry in self.root.iterdir() if entry.is_dir()]
        except OSError as exc:
            raise RegistryError(f"{self.url}: cannot list releases: {exc.strerror}") from None

    def list_files(self, tag: str) -> Listing:
        directory = self.root / tag
        try:
            names = [p.name for p in directory.iterdir() if p.is_file()]
            created = datetime.fromtimestamp(directory.stat().st_mtime, timezone.utc)
        except OSError as exc:
            raise RegistryError(f"{self.url}: cannot list release {tag}: {exc.strerror}") from None
        return Listing(names, created)

    def file_url(self, tag: str, name: str) -> str:
        return (self.root / tag / name).as_uri()

    def write_file(self, tag: str, name: str, data: bytes) -> None:
        try:
            write_atomic(self.root / tag / name, data)
        except OSError as exc:
            raise RegistryError(f"{self.url}: cannot write audit record {name}: {exc.strerror}") from None
