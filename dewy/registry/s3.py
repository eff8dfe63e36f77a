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

from collections.abc import Iterable, Iterator

from dewy.artifacts.s3 import FAILURES, explain, make_client, parse_s3_url
from dewy.lazyclient import LazyClient
from dewy.registry.objectstore import BucketRegistry
from dewy.urls import Url

EXPECTED = "s3://REGION/BUCKET/PREFIX?endpoint=URL&pre-release=true&artifact=NAME"
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


class S3Registry(BucketRegistry):
    QUERY_KEYS = BucketRegistry.QUERY_KEYS | {"endpoint"}

    def __init__(self, url: Url, *, slot: str | None = None) -> None:
        super().__init__(url, slot=slot)
        self.place = parse_s3_url(url, EXPECTED)
        self.prefix = self.place.key.strip("/") + "/" if self.place.key.strip("/") else ""
        self.client = LazyClient(lambda: make_client(self.place))

    def explain(self, exc: Exception) -> str | None:
        if isinstance(exc, NotAListing):
            return (f"{self.place.where} answered something that is not an S3 ListObjectsV2 result;"
                    " is the endpoint an S3 service?")
        return explain(exc, self.place) if isinstance(exc, FAILURES) else None

    def _pages(self, prefix: str) -> Iterator[dict]:
        """Every page of ListObjectsV2 under ``prefix``, each checked to be one (not a web page or an empty answer)."""
        paginator = self.client.get().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.place.bucket, Prefix=prefix, Delimiter="/"):
            if not any(field in page for field in LIST_RESULT_FIELDS):
                raise NotAListing()
            yield page

    def common_prefixes(self, prefix: str) -> Iterable[str]:
        return [str(common.get("Prefix") or "") for page in self._pages(prefix) for common in _entries(page, "CommonPrefixes")]

    def objects(self, prefix: str) -> Iterable[tuple[str, object]]:
        return [(str(item.get("Key") or ""), item.get("LastModified"))
                for page in self._pages(prefix) for item in _entries(page, "Contents")]

    def key_url(self, key: str) -> str:
        return self.place.object_url(key)

    def put(self, key: str, data: bytes) -> None:
        self.client.get().put_object(Bucket=self.place.bucket, Key=key, Body=data, ContentType="text/plain; charset=utf-8")
