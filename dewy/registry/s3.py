"""``s3://REGION/BUCKET/PREFIX?endpoint=URL&pre-release=true&artifact=NAME``: releases in S3.

Versions are the "directories" ``PREFIX/<semver>/`` (ListObjectsV2 with
Delimiter="/", every page), the artifact and checksum file are chosen among
the objects directly in the newest one, the upload grace counts from its
oldest object, and each deploy leaves the object
``PREFIX/<tag>/shipped_to_<host>_<command>_at_<UTC>.txt``. Credentials,
endpoint and addressing: see :mod:`dewy.artifacts.s3`.

A poll whose newest version did not change costs one list request (plus one
per further 1000 version directories); see ``LISTING_TTL``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dewy.artifacts.s3 import FAILURES, explain, make_client, parse_s3_url
from dewy.errors import RegistryError
from dewy.lazyclient import LazyClient
from dewy.registry.objectstore import Listing, ObjectStoreRegistry, earliest, relative_name
from dewy.urls import Url

EXPECTED = "s3://REGION/BUCKET/PREFIX?endpoint=URL&pre-release=true&artifact=NAME"
T = TypeVar("T")
# Fields every ListObjectsV2 result carries (AWS and the S3-compatible stores); a page with none of them
# is something else, such as a web server's page at a wrong endpoint=.
LIST_RESULT_FIELDS = ("Name", "KeyCount", "IsTruncated", "MaxKeys")


class NotAListing(Exception):
    pass


def _entries(page: dict, key: str) -> list[dict]:
    """The list ``key`` of a ListObjectsV2 page, checked to be one of objects."""
    entries = page.get(key) or []
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise NotAListing()
    return entries


class S3Registry(ObjectStoreRegistry):
    QUERY_KEYS = frozenset({"pre-release", "artifact", "endpoint"})

    def __init__(self, url: Url, *, slot: str | None = None) -> None:
        super().__init__(url, slot=slot)
        self.place = parse_s3_url(url, EXPECTED)
        self.prefix = self.place.key.strip("/") + "/" if self.place.key.strip("/") else ""
        self.client = LazyClient(lambda: make_client(self.place))

    def _call(self, doing: str, work: Callable[[], T]) -> T:
        try:
            return work()
        except NotAListing:
            raise RegistryError(f"{self.url}: {doing}: {self.place.where} answered something that is not an S3"
                                " ListObjectsV2 result; is the endpoint an S3 service?") from None
        except FAILURES as exc:
            raise RegistryError(f"{self.url}: {doing}: {explain(exc, self.place)}") from None

    def _pages(self, prefix: str):
        """Every page of ListObjectsV2 under ``prefix``, each checked to be one (not a web page or an empty answer)."""
        paginator = self.client.get().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.place.bucket, Prefix=prefix, Delimiter="/"):
            if not any(field in page for field in LIST_RESULT_FIELDS):
                raise NotAListing()
            yield page

    def list_versions(self) -> list[str]:
        def work() -> list[str]:
            names = []
            for page in self._pages(self.prefix):
                for common in _entries(page, "CommonPrefixes"):
                    name = relative_name(str(common.get("Prefix") or "").removesuffix("/"), self.prefix)
                    if name:
                        names.append(name)
            return names

        return self._call("cannot list releases", work)

    def list_files(self, tag: str) -> Listing:
        directory = f"{self.prefix}{tag}/"

        def work() -> Listing:
            names, times = [], []
            for page in self._pages(directory):
                for item in _entries(page, "Contents"):
                    key = str(item.get("Key") or "")
                    if not key.startswith(directory):
                        continue  # not ours: a misbehaving server
                    times.append(item.get("LastModified"))  # the directory marker "tag/" counts too
                    name = relative_name(key, directory)
                    if name:
                        names.append(name)
            return Listing(names, earliest(times))

        return self._call(f"cannot list release {tag}", work)

    def file_url(self, tag: str, name: str) -> str:
        return self.place.object_url(f"{self.prefix}{tag}/{name}")

    def write_file(self, tag: str, name: str, data: bytes) -> None:
        self._call(f"cannot write audit record {name}", lambda: self.client.get().put_object(
            Bucket=self.place.bucket, Key=f"{self.prefix}{tag}/{name}", Body=data, ContentType="text/plain; charset=utf-8"))

    def close(self) -> None:
        self.client.close()
