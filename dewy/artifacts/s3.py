"""``s3://REGION/BUCKET/KEY?endpoint=URL``: one object in Amazon S3 or an S3-compatible store, streamed in chunks.

This module owns what the s3:// registry and artifacts share: the URL shape,
the boto3 client, and the one-line explanation of a failure.

- Credentials: the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/
  AWS_SESSION_TOKEN, AWS_PROFILE and the shared files, SSO, web identity, ECS
  and EC2 instance roles), resolved by boto3; never part of the URL.
- Endpoint: ``endpoint=`` in the URL, else AWS_ENDPOINT_URL_S3, else
  AWS_ENDPOINT_URL (unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true). With an
  endpoint, requests use path-style addressing (``ENDPOINT/BUCKET/KEY``), which
  S3-compatible stores expect; without one, AWS's own endpoint for REGION.
- boto3 is blocking: callers run these calls in a worker thread.

boto3 is imported here; this module is imported only when an s3:// URL is used.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote, unquote, urlsplit

import boto3
import botocore.exceptions as bx
from botocore.config import Config
from botocore.parsers import ResponseParserError

from dewy import __version__
from dewy.artifacts import expect
from dewy.artifacts.deadline import Stalled, Watchdog, stalled
from dewy.errors import ArtifactError, UsageError
from dewy.lazyclient import LazyClient
from dewy.urls import Url, has_credentials, redact

EXPECTED = "s3://REGION/BUCKET/KEY?endpoint=URL"
CHUNK = 1 << 20
REGION_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # botocore's own rule
AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")  # us-east-1, us-gov-west-1, ap-southeast-2...
BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")  # loose: legacy us-east-1 names allow more than today's rules
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired", "RequestExpired"}
UNAVAILABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed"}
NO_CREDENTIALS = ("credentials do not belong in an s3:// URL; dewy uses the AWS credential chain"
                  " (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role)")


@dataclass(frozen=True)
class S3Place:
    """Where an s3:// URL points: ``key`` is an object key, or a registry's prefix ("" or ending in "/")."""

    region: str
    bucket: str
    key: str
    endpoint: str | None  # the URL's endpoint=, carried into the artifact URLs a registry builds
    effective_endpoint: str | None  # endpoint= or the environment's; None means AWS itself

    @property
    def where(self) -> str:
        return self.effective_endpoint or f"AWS S3 ({self.region})"

    def object_url(self, key: str) -> str:
        url = f"s3://{self.region}/{self.bucket}/{quote(key, safe='/+')}"
        return f"{url}?endpoint={quote(self.endpoint, safe=':/')}" if self.endpoint else url


def environment_endpoint() -> str | None:
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return None
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            if has_credentials(os.environ[name]):
                raise UsageError(f"{name}={redact(os.environ[name])}: {NO_CREDENTIALS}")
            return os.environ[name]
    return None


def parse_s3_url(url: Url, expected: str = EXPECTED) -> S3Place:
    """Check the shape of ``s3://REGION/BUCKET/REST``; raise UsageError naming the problem."""
    if "@" in url.netloc:
        raise UsageError(f"{url}: {NO_CREDENTIALS}")
    region = url.netloc
    bucket, _, rest = url.path.lstrip("/").partition("/")
    if not region or not bucket:
        raise UsageError(f"{url}: expected {expected}")
    if not REGION_NAME.fullmatch(region):
        raise UsageError(f"{url}: {region!r} is not a region name; expected {expected}")
    if not BUCKET_NAME.fullmatch(bucket):
        raise UsageError(f"{url}: {bucket!r} is not a bucket name; expected {expected}")
    endpoint = url.query.get("endpoint") or None
    if endpoint is not None:
        if has_credentials(endpoint):
            raise UsageError(f"{url}: endpoint= holds credentials; {NO_CREDENTIALS}")
        try:
            parts = urlsplit(endpoint)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            usable = False
        if not usable:
            raise UsageError(f"{url}: endpoint={redact(endpoint)!r} is not an http(s):// URL")
    effective = endpoint or environment_endpoint()
    if effective is None and not AWS_REGION.fullmatch(region):
        raise UsageError(f"{url}: {region!r} is not an AWS region (like us-east-1); expected {expected},"
                         " or set endpoint= for an S3-compatible store")
    return S3Place(region, bucket, unquote(rest), endpoint, effective)


def make_client(place: S3Place):
    """A boto3 S3 client for ``place`` with bounded timeouts and retries (dewy's own backoff does the rest)."""
    config = Config(
        region_name=place.region,
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        user_agent_extra=f"dewy/{__version__}",
        s3={"addressing_style": "path"} if place.effective_endpoint else {},
    )
    return boto3.session.Session().client("s3", endpoint_url=place.effective_endpoint, config=config)


def scrub(text: str) -> str:
    """One line, bounded, with any secret from the environment blanked (AWS messages should not echo them)."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def explain(exc: BaseException, place: S3Place) -> str:
    """What went wrong and what to do, in words for the operator; never credentials."""
    where = place.where
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        message = scrub(str(error.get("Message") or ""))
        if code == "NoSuchBucket":
            return f"bucket {place.bucket!r} does not exist at {where}; check the bucket name in the URL"
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return f"no such object in bucket {place.bucket!r} (it was deleted or never uploaded)"
        if code == "InvalidAccessKeyId":
            return ("the AWS access key id is not known to the server; check AWS_ACCESS_KEY_ID or the profile"
                    " dewy runs with")
        if code == "SignatureDoesNotMatch":
            return "the AWS secret key does not match the access key id; check AWS_SECRET_ACCESS_KEY or the profile"
        if code in EXPIRED_CODES:
            return ("the AWS credentials have expired; refresh them (a new AWS_SESSION_TOKEN, or a profile or"
                    " instance role that renews itself)")
        if code == "InvalidToken":
            return "the AWS session token is invalid; check AWS_SESSION_TOKEN"
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed") or status == 301:
            return f"bucket {place.bucket!r} is not in region {place.region!r}; put the bucket's region in the URL"
        if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem") or status == 403:
            return (f"access denied to bucket {place.bucket!r} ({code or 'HTTP 403'}); give dewy's credentials"
                    " s3:ListBucket and s3:GetObject on it (s3:PutObject for audit records)")
        if code in UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
            return f"{where} is unavailable ({code or f'HTTP {status}'}{': ' + message if message else ''}); dewy retries"
        return f"{where} refused the request: {code or 'error'} (HTTP {status}){': ' + message if message else ''}"
    if isinstance(exc, bx.NoCredentialsError):
        return ("no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE,"
                " or give the host an instance role")
    if isinstance(exc, (bx.PartialCredentialsError, bx.ProfileNotFound, bx.CredentialRetrievalError,
                        bx.TokenRetrievalError, bx.SSOError)):
        return f"cannot get AWS credentials: {scrub(str(exc))}"
    if isinstance(exc, bx.ConnectTimeoutError):
        return f"cannot reach {where}: connection timed out; check the network and the endpoint"
    if isinstance(exc, bx.EndpointConnectionError):
        return f"cannot reach {where}: connection failed; check the network and the endpoint"
    if isinstance(exc, bx.ReadTimeoutError):
        return f"{where} did not answer in time; dewy retries"
    if isinstance(exc, (bx.ConnectionClosedError, bx.IncompleteReadError, bx.ResponseStreamingError)):
        return f"the connection to {where} broke off mid-answer; dewy retries"
    if isinstance(exc, ResponseParserError):
        return f"{where} answered something that is not S3's XML; is the endpoint an S3 service?"
    return f"{where}: {scrub(str(exc))}"


# What boto3 raises for a failed request: its own errors, plus the occasional malformed answer
# that the paginator or response handling does not turn into one.
FAILURES = (bx.BotoCoreError, bx.ClientError, ResponseParserError)


class S3Object:
    """One object, downloaded with GetObject and written to ``out`` a chunk at a time."""

    def __init__(self, url: Url) -> None:
        url.check_keys({"endpoint"})
        self.url = url
        self.place = parse_s3_url(url)
        if not self.place.key or self.place.key.endswith("/"):
            raise UsageError(f"{url}: names no object; expected {EXPECTED}")
        self.client = LazyClient(lambda: make_client(self.place))

    def _download(self, out: BinaryIO) -> None:
        try:
            client = self.client.get()
            start = time.monotonic()  # the deadline is the transfer's: making a client (cold, up to a second) is not
            answer = client.get_object(Bucket=self.place.bucket, Key=self.place.key)
            expect(out, answer.get("ContentLength"))
            body = answer["Body"]
            try:
                self._copy(body, out, start)
            finally:
                body.close()
        except FAILURES as exc:
            raise ArtifactError(f"{self.url}: cannot download: {explain(exc, self.place)}") from None
        finally:
            self.client.close()

    def _copy(self, body, out: BinaryIO, start: float) -> None:
        """Copy the body in chunks within the download's total deadline (see dewy.artifacts.deadline);
        botocore still reads and verifies it (length, checksums)."""
        with Watchdog(start, in_flight=CHUNK) as watchdog:
            try:
                watchdog.watch(body._raw_stream)  # urllib3's response, under botocore's StreamingBody
                for chunk in body.iter_chunks(CHUNK):
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise ArtifactError(f"{self.url}: cannot store the download: {exc.strerror or exc}") from None
                    watchdog.progress(len(chunk))
            except (Stalled, *FAILURES):
                if watchdog.fired:
                    raise ArtifactError(f"{self.url}: {stalled(watchdog.received, watchdog.elapsed)}") from None
                raise

    async def download(self, out: BinaryIO) -> None:
        await asyncio.to_thread(self._download, out)

    async def aclose(self) -> None:
        self.client.close()

