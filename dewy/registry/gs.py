"""``gs://PROJECT/BUCKET/PREFIX?pre-release=true&artifact=NAME``: releases in Google Cloud Storage.

Upstream dewy writes ``gs://BUCKET/PREFIX`` (no project). The ``project=`` query key selects
that short form: ``gs://BUCKET/PREFIX?project=PROJECT`` (``project=`` left empty: the
project of the Application Default Credentials). Without it, the first part is the project.

Versions are the "directories" ``PREFIX/<semver>/`` (objects.list with
delimiter "/", every page), the artifact and checksum file are chosen among
the objects directly in the newest one, the upload grace counts from its
oldest object's creation time, and each deploy leaves the object
``PREFIX/<tag>/shipped_to_<host>_<command>_at_<UTC>.txt``. Artifacts are
handed on as ``gs://BUCKET/OBJECT``. Credentials and the emulator: see
:mod:`dewy.artifacts.gs`.

A poll whose newest version did not change costs one list request (plus one
per further page of version directories); see ``LISTING_TTL``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from dewy.artifacts.gs import FAILURES, RETRY, TIMEOUT, check_bucket, explain, make_client, object_url
from dewy.errors import UsageError
from dewy.lazyclient import LazyClient
from dewy.registry.objectstore import BucketRegistry
from dewy.urls import Url

EXPECTED = "gs://PROJECT/BUCKET/PREFIX?pre-release=true&artifact=NAME (or upstream's gs://BUCKET/PREFIX?project=PROJECT)"
SHORT = "gs://BUCKET/PREFIX?project=PROJECT"
PROJECT_ID = re.compile(r"[a-z][a-z0-9.:-]{1,61}[a-z0-9]")  # includes legacy domain-scoped ids


class GCSRegistry(BucketRegistry):
    QUERY_KEYS = BucketRegistry.QUERY_KEYS | {"project"}

    def __init__(self, url: Url, *, slot: str | None = None) -> None:
        super().__init__(url, slot=slot)
        if "project" in url.query:  # upstream's gs://BUCKET/PREFIX
            self.project, self.bucket, rest = url.query["project"] or None, url.netloc, url.path.lstrip("/")
            check_bucket(url, self.bucket, SHORT)
        else:
            self.project = url.netloc
            self.bucket, _, rest = url.path.lstrip("/").partition("/")
            check_bucket(url, self.bucket, EXPECTED)
        if self.project is not None and not PROJECT_ID.fullmatch(self.project):
            raise UsageError(f"{url}: {self.project!r} is not a project id; expected {EXPECTED}")
        rest = unquote(rest).strip("/")
        self.prefix = rest + "/" if rest else ""
        self.client = LazyClient(lambda: make_client(self.project))
        self._bucket_missing = f"bucket {self.bucket!r} does not exist; check the bucket name in the URL"

    def explain(self, exc: Exception) -> str | None:
        return explain(exc, self.bucket, not_found=self._bucket_missing) if isinstance(exc, FAILURES) else None

    def _list(self, prefix: str):
        return self.client.get().list_blobs(self.bucket, prefix=prefix, delimiter="/", retry=RETRY, timeout=TIMEOUT)

    def common_prefixes(self, prefix: str) -> Iterable[str]:
        return [str(p) for page in self._list(prefix).pages for p in page.prefixes]

    def objects(self, prefix: str) -> Iterable[tuple[str, object]]:
        return [(blob.name, blob.time_created or blob.updated) for blob in self._list(prefix)]

    def key_url(self, key: str) -> str:
        return object_url(self.bucket, key)

    def put(self, key: str, data: bytes) -> None:
        blob = self.client.get().bucket(self.bucket).blob(key)
        blob.upload_from_string(data, content_type="text/plain; charset=utf-8", retry=RETRY, timeout=TIMEOUT)
