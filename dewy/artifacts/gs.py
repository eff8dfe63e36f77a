"""``gs://BUCKET/OBJECT``: one object in Google Cloud Storage, streamed to disk in chunks.

This module owns what the gs:// registry and artifacts share: the client and
the one-line explanation of a failure.

- Credentials: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS,
  ``gcloud auth application-default login``, or the metadata server on GCP).
- STORAGE_EMULATOR_HOST (e.g. ``http://127.0.0.1:9023``) sends every request
  to that emulator, with anonymous credentials.
- Artifact URLs are gsutil's ``gs://BUCKET/OBJECT`` (what upstream dewy's gRPC
  servers hand out): reading an object needs no project.
- google-cloud-storage is blocking: callers run these calls in a worker thread.

google-cloud-storage is imported here; this module is imported only when a gs:// URL is used.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import BinaryIO
from urllib.parse import quote, unquote

import google.auth.exceptions as ga
import requests
from google.api_core import exceptions as gx
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY

from dewy.artifacts import expect
from dewy.artifacts.deadline import Stalled, Watchdog, stalled
from dewy.errors import ArtifactError, UsageError
from dewy.lazyclient import LazyClient
from dewy.urls import Url

# google-cloud-storage 3.x fetches each bucket's metadata in a background thread for its tracing
# attributes: an extra request per bucket and client, which needs storage.buckets.get (not part of
# roles/storage.objectViewer). dewy does not trace; switch it off unless the operator set it.
os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")

EXPECTED = "gs://BUCKET/OBJECT"
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
TIMEOUT = (10, 60)  # connect, read (seconds)
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
READ_SIZE = 8192  # what google-resumable-media reads from the connection at a time


def _server_busy(exc: Exception) -> bool:
    if isinstance(exc, gx.GoogleAPICallError):
        return exc.code in RETRYABLE_STATUS
    if isinstance(exc, InvalidResponse):
        return getattr(exc.response, "status_code", None) in RETRYABLE_STATUS
    return False


# Listings and audit records: retry what the server calls temporary, briefly; a host that cannot be
# reached fails the poll at once (dewy's backoff retries it). Downloads also resume after a broken connection.
RETRY = Retry(predicate=_server_busy, initial=0.5, maximum=4.0, multiplier=2.0, timeout=15.0)
DOWNLOAD_RETRY = DEFAULT_RETRY.with_timeout(60.0)


def endpoint() -> str:
    return (os.environ.get("STORAGE_EMULATOR_HOST") or os.environ.get("API_ENDPOINT_OVERRIDE")
            or "storage.googleapis.com")


def check_bucket(url: Url, bucket: str, expected: str) -> None:
    if "@" in url.netloc:
        raise UsageError(f"{url}: credentials do not belong in a gs:// URL; dewy uses Application Default Credentials")
    if not bucket:
        raise UsageError(f"{url}: expected {expected}")
    if not BUCKET_NAME.fullmatch(bucket):
        raise UsageError(f"{url}: {bucket!r} is not a bucket name; expected {expected}")


def make_client(project: str | None):
    """A storage client: anonymous against STORAGE_EMULATOR_HOST, else Application Default Credentials."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project=project or "dewy", credentials=AnonymousCredentials())
    return storage.Client(project=project)


def one_line(text: object, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def server_message(exc: gx.GoogleAPICallError) -> str:
    """The server's own words, without the client's "GET https://...: " in front."""
    return one_line(re.sub(r"^[A-Z]+ \S+: ", "", str(exc.message)), 160)


def _unreachable(exc: BaseException) -> str | None:
    text = str(exc).lower()
    for needle, reason in (("refused", "connection refused"), ("timed out", "connection timed out"),
                           ("name or service not known", "unknown host"), ("name resolution", "unknown host"),
                           ("certificate", "TLS certificate not trusted")):
        if needle in text:
            return reason
    return None


def explain(exc: BaseException, bucket: str, *, not_found: str) -> str:
    """What went wrong and what to do, for the operator; ``not_found`` is what a 404 means for the caller."""
    where = endpoint()
    if isinstance(exc, gx.RetryError) and exc.cause is not None:
        return explain(exc.cause, bucket, not_found=not_found)
    if isinstance(exc, ga.InvalidOperation):  # a 401 answered to anonymous credentials
        return (f"{where} demands credentials, but dewy sends none (anonymous: STORAGE_EMULATOR_HOST is set);"
                " unset STORAGE_EMULATOR_HOST to use Application Default Credentials")
    if isinstance(exc, ga.DefaultCredentialsError):
        return ("no Google credentials found; set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, run"
                " `gcloud auth application-default login`, or run on GCP with a service account")
    if isinstance(exc, ga.RefreshError):
        return (f"the Google credentials could not be refreshed ({one_line(exc.args[0] if exc.args else exc, 160)});"
                " they are expired or revoked: renew them (gcloud auth application-default login, or a new key)")
    if isinstance(exc, (ga.TransportError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return f"cannot reach {where}: {_unreachable(exc) or 'connection failed'}; check the network"
    if isinstance(exc, gx.NotFound):
        return not_found
    if isinstance(exc, gx.Unauthorized):
        return ("the Google credentials were rejected (expired or revoked); renew them (gcloud auth"
                " application-default login, or a new service-account key)")
    if isinstance(exc, gx.Forbidden):
        return (f"access denied to bucket {bucket!r} ({server_message(exc)}); grant dewy's account"
                " roles/storage.objectViewer on it (roles/storage.objectCreator for audit records)")
    if isinstance(exc, gx.GoogleAPICallError):
        if exc.code and exc.code >= 500 or exc.code == 429:
            return f"{where} is unavailable (HTTP {exc.code}); dewy retries"
        return f"{where} refused the request: HTTP {exc.code}: {server_message(exc)}"
    if isinstance(exc, DataCorruption):
        return "the download does not match the object's checksum; dewy retries"
    if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError)):
        return f"{where} answered something that is not the Cloud Storage JSON API; is it a GCS endpoint?"
    return f"{where}: {one_line(exc)}"


# Everything a request can raise that is about the store, not a bug in dewy: the malformed-answer
# cases (ValueError for bad JSON, KeyError/TypeError for JSON of the wrong shape) included.
FAILURES = (gx.GoogleAPICallError, gx.RetryError, ga.GoogleAuthError, requests.exceptions.RequestException,
            InvalidResponse, DataCorruption, ValueError, KeyError, TypeError, AttributeError)


class GCSObject:
    """One object, downloaded as stored (no decompressive transcoding) and resumed after a broken connection."""

    def __init__(self, url: Url) -> None:
        url.check_keys(set())
        self.url = url
        self.bucket = url.netloc
        self.key = unquote(url.path.lstrip("/"))
        check_bucket(url, self.bucket, EXPECTED)
        if not self.key or self.key.endswith("/"):
            raise UsageError(f"{url}: names no object; expected {EXPECTED}")
        self.client = LazyClient(lambda: make_client(None))

    def _download(self, out: BinaryIO) -> None:
        """The object within the download's total deadline (see dewy.artifacts.deadline): each response the
        client's session receives is watched, and a request made after the deadline is refused."""
        with Watchdog(time.monotonic(), in_flight=READ_SIZE) as watchdog:
            try:
                client = self.client.get()
                session = client._http  # the client's requests session, where response hooks go

                def hook(response, *args, **kwargs) -> None:
                    watchdog.watch(response.raw)
                    expect(out, object_size(response))

                session.hooks["response"].append(hook)
                try:
                    blob = client.bucket(self.bucket).blob(self.key)
                    blob.download_to_file(_Progress(out, watchdog), raw_download=True, retry=DOWNLOAD_RETRY,
                                          timeout=TIMEOUT)
                finally:
                    session.hooks["response"].remove(hook)
            except (Stalled, *FAILURES) as exc:  # before OSError: requests' errors are OSErrors too
                if watchdog.fired:
                    raise ArtifactError(f"{self.url}: {stalled(watchdog.received, watchdog.elapsed)}") from None
                missing = f"no such object (or bucket {self.bucket!r}); it was deleted or never uploaded"
                raise ArtifactError(f"{self.url}: cannot download: {explain(exc, self.bucket, not_found=missing)}") from None
            except OSError as exc:
                raise ArtifactError(f"{self.url}: cannot store the download: {exc.strerror or exc}") from None
            finally:
                self.client.close()

    async def download(self, out: BinaryIO) -> None:
        await asyncio.to_thread(self._download, out)

    async def aclose(self) -> None:
        self.client.close()


def object_size(response: requests.Response) -> int | None:
    """The object's size, from the answer to its download (all of it, or the rest of it after a broken connection)."""
    if "alt=media" not in response.url:
        return None
    if response.status_code == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length", "")
    return int(length) if response.status_code == 200 and length.isdigit() else None


class _Progress:
    """The output file, telling the watchdog how many bytes have arrived."""

    def __init__(self, out: BinaryIO, watchdog: Watchdog) -> None:
        self.out = out
        self.watchdog = watchdog

    def write(self, data: bytes) -> int:
        written = self.out.write(data)
        self.watchdog.progress(len(data))
        return written


def object_url(bucket: str, key: str) -> str:
    return f"gs://{bucket}/{quote(key, safe='/+')}"
