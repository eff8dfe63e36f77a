"""A small GitHub REST API v3 client shared by the ghr:// registry and artifact backends.

dewy needs four calls (list releases, get a release by tag, download an asset,
upload an asset), so a full SDK would be weight without benefit. It stands on
:mod:`dewy.http`: conditional requests so that an unchanged poll costs nothing
against the rate limit, rate-limit answers turned into a ``retry_after`` the
daemon honours, and redirects that leave the token behind. Here: GitHub's
shapes, its rate-limit signals and its advice, and a token that never appears
in a message.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import unquote

import httpx

from dewy import log
from dewy.artifacts import expect, room
from dewy.artifacts.deadline import download_deadline, stalled
from dewy.errors import DewyError, RegistryError, UsageError
from dewy.http import Conditional, RateLimited, Session, json_of, network_failure, retry_after
from dewy.http.githubapp import GitHubAppAuth, app_from_env
from dewy.urls import Url, redact

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
JSON_MEDIA_TYPE = "application/vnd.github+json"
BYTES_MEDIA_TYPE = "application/octet-stream"
# A total deadline for one API request, its whole answer included: a server answering a byte every
# few seconds never trips dewy.http.TIMEOUT. Downloads have theirs (dewy.artifacts.deadline).
REQUEST_DEADLINE = 60.0
SECONDARY_LIMIT_WAIT = 60.0  # GitHub's advice when a rate-limit answer carries no timing header
NAME = re.compile(r"[A-Za-z0-9._-]+\Z")


def rate_limited(retry_after: float, anonymous: bool) -> RateLimited:
    """GitHub refused because of a rate limit: the error carrying how long the daemon waits."""
    hint = " (set GITHUB_TOKEN for a higher limit)" if anonymous else ""
    return RateLimited(f"GitHub API rate limit exceeded; retrying after {math.ceil(retry_after)} s{hint}", retry_after)


def split_ghr(url: Url, expected: str) -> tuple[str, str, list[str]]:
    """OWNER, REPO and the remaining path segments of a ghr:// URL; UsageError naming ``expected`` otherwise."""
    segments = [unquote(s) for s in url.path.strip("/").split("/")]
    if not NAME.match(url.netloc) or not NAME.match(segments[0]):
        raise UsageError(f"{url}: expected {expected}")
    return url.netloc, segments[0], segments[1:]


@dataclass(frozen=True)
class Asset:
    """The fields of a release asset dewy uses, checked for their type."""

    id: int
    name: str
    state: str
    url: str


@dataclass(frozen=True)
class GitHubRelease:
    """The fields of a release dewy uses, checked for their type: a wrong shape is one error naming the field."""

    id: int | None
    tag: str
    draft: bool
    prerelease: bool
    published_at: str | None  # ISO 8601, as GitHub sends it
    created_at: str | None
    assets: list[Asset]
    upload_url: str | None


_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _kind(value: Any) -> str:
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    """``obj[key]`` if it has the JSON type dewy needs (or is absent and has a default); ValueError naming it otherwise."""
    if key not in obj and default is not None:
        return default
    value = obj.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:  # JSON true is no number
        raise ValueError(f"{where}.{key} is a boolean, not {_JSON_KINDS[kinds[0]]}")
    if not isinstance(value, kinds):
        raise ValueError(f"{where}.{key} is {'missing' if key not in obj else _kind(value)}, not {_JSON_KINDS[kinds[0]]}")
    return value


def parse_release(item: Any, where: str) -> GitHubRelease:
    """One release object of the REST API; ValueError naming the first field of the wrong shape."""
    if not isinstance(item, dict):
        raise ValueError(f"{where} is {_kind(item)}, not an object")
    assets = []
    for index, raw in enumerate(_field(item, "assets", list, where, default=[])):
        at = f"{where}.assets[{index}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{at} is {_kind(raw)}, not an object")
        assets.append(Asset(_field(raw, "id", int, at), _field(raw, "name", str, at),
                            _field(raw, "state", str, at, default=""), _field(raw, "url", str, at, default="")))
    return GitHubRelease(
        id=_field(item, "id", (int, type(None)), where),
        tag=_field(item, "tag_name", str, where),
        draft=_field(item, "draft", bool, where, default=False),
        prerelease=_field(item, "prerelease", bool, where, default=False),
        published_at=_field(item, "published_at", (str, type(None)), where),
        created_at=_field(item, "created_at", (str, type(None)), where),
        assets=assets,
        upload_url=_field(item, "upload_url", (str, type(None)), where),
    )


@dataclass(frozen=True)
class _Page:
    """One answer of the API: its JSON body and the next page of a listing."""

    body: Any
    next_url: str | None


class GitHub:
    """The API at GITHUB_API_URL (default api.github.com) as a GitHub App installation (GITHUB_APP_ID, ...:
    :mod:`dewy.http.githubapp`), else with the token from GH_TOKEN or GITHUB_TOKEN (GH_TOKEN first, as
    upstream: in GitHub Actions GITHUB_TOKEN is always set, to the workflow's own token).

    Failures are raised as ``error`` (RegistryError for polls, ArtifactError for
    downloads), except rate limits, which are always :class:`RateLimited`.
    """

    def __init__(self, error: type[DewyError] = RegistryError) -> None:
        self.api_url = (os.environ.get("GITHUB_API_URL") or DEFAULT_API_URL).rstrip("/")
        if not re.match(r"https?://[^/]", self.api_url):
            raise UsageError(f"GITHUB_API_URL={redact(self.api_url)!r} is not an http(s) URL (GitHub Enterprise: https://HOST/api/v3)")
        app = app_from_env()  # a GitHub App, when configured, wins over a token (as upstream)
        self._token = "" if app else (os.environ.get("GH_TOKEN") or os.environ.get("GITHUB_TOKEN") or "").strip()
        self._error = error
        self._pages: Conditional[_Page] = Conditional()
        self._app = GitHubAppAuth(app, self.api_url, error) if app else None
        self.http = Session(auth=self._app)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get_json(self, path: str) -> Any:
        """GET an API path conditionally: a 304 costs no rate limit and reuses the stored body."""
        return (await self._get(self.api_url + path)).body

    async def releases(self, path: str) -> list[GitHubRelease]:
        """Every release of a listing, each checked to have the shape dewy needs."""
        items = await self.get_all(path)
        return [self._checked(path, item, f"releases[{index}]") for index, item in enumerate(items)]

    async def release(self, path: str) -> GitHubRelease:
        """One release (by tag), checked to have the shape dewy needs."""
        return self._checked(path, await self.get_json(path), "release")

    def _checked(self, path: str, item: Any, where: str) -> GitHubRelease:
        try:
            return parse_release(item, where)
        except ValueError as exc:
            raise self._err(f"GitHub GET {self._shown(self.api_url + path)}: unexpected answer: {exc}") from None

    async def get_all(self, path: str) -> list[Any]:
        """Every item of a paginated listing, following ``Link: rel="next"``.

        Every page is asked conditionally rather than trusting page 1's 304:
        an older release edited on page 3 leaves page 1's ETag unchanged, and
        a 304 on each page is just as free against the rate limit.
        """
        items: list[Any] = []
        url: str | None = f"{self.api_url}{path}?per_page=100"
        while url:
            page = await self._get(url)
            if not isinstance(page.body, list):
                raise self._err(f"GitHub GET {self._shown(url)}: expected a JSON list")
            items.extend(page.body)
            url = page.next_url
        return items

    async def download(self, url: str, out: BinaryIO) -> None:
        """Stream a release asset (its API ``url``) into ``out`` in chunks.

        The API answers with a redirect to a presigned storage URL, which gets
        no token: a presigned URL rejects it (S3 answers 400) wherever it lives.
        """
        clock = asyncio.get_running_loop().time
        start, received = clock(), 0
        try:
            async with asyncio.timeout_at(download_deadline(start, 0)) as deadline:
                response = await self._send("GET", url, self._headers(accept=BYTES_MEDIA_TYPE), stream=True,
                                            credentials="never")
                url = str(response.request.url)
                try:
                    length = response.headers.get("content-length", "")
                    expect(out, int(length) if length.isdigit() else None)
                    with self._network(response.request.method, response.request.url):
                        async for chunk in response.aiter_bytes():  # as it arrives: counted at once
                            out.write(chunk)
                            await room(out)
                            received += len(chunk)
                            deadline.reschedule(download_deadline(start, received))
                finally:
                    await response.aclose()
        except TimeoutError:
            raise self._err(f"GitHub GET {self._shown(url)}: {stalled(received, clock() - start)}") from None

    async def upload(self, upload_url: str, name: str, data: bytes, content_type: str) -> None:
        """Add an asset to a release through its ``upload_url`` template (uploads.github.com, or the Enterprise host)."""
        url = upload_url.split("{", 1)[0]
        await self._whole("POST", url, self._headers({"Content-Type": content_type}), content=data, params={"name": name})

    def _headers(self, extra: dict[str, str] | None = None, accept: str = JSON_MEDIA_TYPE) -> dict[str, str]:
        headers = {"Accept": accept, "X-GitHub-Api-Version": API_VERSION, **(extra or {})}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _get(self, url: str) -> _Page:
        response = await self._whole("GET", url, self._headers(self._pages.validators(url)))
        return self._pages.answer(url, response, self._read)

    def _read(self, response: httpx.Response) -> _Page:
        try:
            body = json_of(response, "for GitHub Enterprise, GITHUB_API_URL is https://HOST/api/v3")
        except ValueError as exc:
            raise self._err(f"GitHub GET {self._shown(response.request.url)}: {exc}") from None
        return _Page(body, response.links.get("next", {}).get("url"))

    async def _whole(self, method: str, url: str, headers: dict[str, str], **options: Any) -> httpx.Response:
        """A request whose whole answer must arrive within REQUEST_DEADLINE."""
        try:
            async with asyncio.timeout(REQUEST_DEADLINE):
                return await self._send(method, url, headers, **options)
        except TimeoutError:
            raise self._err(f"GitHub {method} {self._shown(url)}: no complete answer within {REQUEST_DEADLINE:g} s"
                            " (the server stalls or trickles); dewy retries") from None

    async def _send(self, method: str, url: str, headers: dict[str, str], **options: Any) -> httpx.Response:
        """One request (redirects followed); network failures and error statuses become one-line errors."""
        with self._network(method, url):
            response = await self.http.send(method, url, headers=headers, **options)
        log.debug("github", f"{method} {self._shown(response.request.url)}: HTTP {response.status_code}",
                  rate_limit_remaining=response.headers.get("X-RateLimit-Remaining"))
        if response.status_code >= 400:
            try:
                with self._network(method, response.request.url):
                    await response.aread()
            finally:
                await response.aclose()
            raise self._failure(response)
        return response

    @contextmanager
    def _network(self, method: str, url: str | httpx.URL) -> Iterator[None]:
        """DNS, connection, TLS, timeout and redirect failures as one line naming the URL."""
        try:
            yield
        except httpx.HTTPError as exc:
            raise self._err(f"GitHub {network_failure(exc, method, url, self._shown)}") from exc

    def _failure(self, response: httpx.Response) -> DewyError:
        """The error for a 4xx/5xx answer, with GitHub's own ``message`` and what to do about it."""
        status, headers = response.status_code, response.headers
        message = _message(response)
        if status in (403, 429) and ("Retry-After" in headers or headers.get("X-RateLimit-Remaining") == "0"
                                     or "rate limit" in message.lower()):
            return rate_limited(retry_after(headers, SECONDARY_LIMIT_WAIT), anonymous=not self._authenticated)
        where = f"GitHub {response.request.method} {self._shown(response.request.url)}: HTTP {status} {message}"
        if status == 401:
            advice = ("GitHub rejected the app's installation token; check the app's installation" if self._app else
                      "GitHub rejected the token; check GITHUB_TOKEN / GH_TOKEN" if self._token else
                      "this GitHub requires a token; set GITHUB_TOKEN")
        elif status == 404:
            advice = "the repository, release or asset does not exist, or the token lacks access to it"
            advice += "" if self._authenticated else " (private repositories need GITHUB_TOKEN)"
        elif status == 403:
            advice = "the token lacks permission for this"
        else:
            return self._err(where)
        return self._err(f"{where}: {advice}")

    @property
    def _authenticated(self) -> bool:
        return bool(self._token) or self._app is not None

    def _err(self, message: str) -> DewyError:
        """The error to raise; tokens are scrubbed in case a server or proxy ever echoes one."""
        for secret in ({self._token} if self._token else set()) | (self._app.secrets if self._app else set()):
            message = message.replace(secret, "***")
        return self._error(message)

    def _shown(self, url: httpx.URL | str) -> str:
        """A URL for messages: API URLs in full, others (presigned storage, uploads) without their query."""
        text = str(url)
        if not text.startswith(self.api_url + "/"):
            text = str(httpx.URL(text).copy_with(query=None))
        return redact(text)


def _message(response: httpx.Response) -> str:
    """GitHub's JSON ``message`` (with validation error codes), else the HTTP reason phrase."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if not isinstance(body, dict) or not body.get("message"):
        return response.reason_phrase
    codes = ", ".join(str(e.get("code")) for e in body.get("errors", []) if isinstance(e, dict) and e.get("code"))
    return f"{body['message']} ({codes})" if codes else str(body["message"])
