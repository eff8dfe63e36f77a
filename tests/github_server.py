"""A GitHub REST API v3 test server, written from GitHub's public API documentation.

Faithful where dewy depends on the protocol: release listings sorted newest
first with ``per_page``/``page`` and a ``Link`` header; weak ETags that change
with the content (and the caller's credentials) and 304 answers to
``If-None-Match``/``If-Modified-Since``; the primary rate limit with its
``X-RateLimit-*`` headers, where a 304 is free only for a request "correctly
authorized with an Authorization header" (GitHub's best-practices page);
drafts visible only to authenticated callers; asset downloads answered with a
302 to presigned storage that, like S3, rejects a request carrying
Authorization (on ``storage_host``: another host name for the same server, as
GitHub's storage is another host than its API); uploads at the release's
``upload_url``.

Usage::

    with GitHubServer(token="t") as github:
        monkeypatch.setenv("GITHUB_API_URL", github.url)
        github.add_release("owner", "repo", "v1.0.0", {"app_linux_amd64.tar.gz": b"..."})
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.loopback import LoopbackServer

CHUNK_SIZE = 1 << 16
DOCS = "https://docs.github.com/rest"
NOT_FOUND = {"message": "Not Found", "documentation_url": DOCS}


class Logged(NamedTuple):
    """One request as the server saw it; header names are lower-case."""

    method: str
    path: str
    status: int
    headers: dict[str, str]


@dataclass
class StoredAsset:
    id: int
    name: str
    data: bytes
    content_type: str
    state: str
    created_at: datetime


@dataclass
class StoredRelease:
    id: int
    tag: str
    draft: bool
    prerelease: bool
    created_at: datetime
    published_at: datetime | None
    updated_at: datetime
    assets: list[StoredAsset] = field(default_factory=list)

    def asset(self, name: str) -> StoredAsset | None:
        return next((a for a in self.assets if a.name == name), None)


class _Reply(Exception):
    """Ends request handling with this answer (raised from deep inside a route)."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


@dataclass
class _Call:
    """The parsed request being handled."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def authorized(self) -> bool:
        return "authorization" in self.headers


@dataclass
class AppInstallation:
    """A GitHub App installed on the server's repositories: its JWTs are checked as GitHub checks them.

    ``public_key``: the app's (cryptography) RSA public key; a JWT must be RS256, signed by its private
    key, with ``iss`` the app id, ``iat`` not in the future and ``exp`` in the future but at most 10
    minutes away. ``lifetime``: seconds an installation token lives. ``clock``: the server's wall clock
    (a test's fake clock, shared with dewy's).
    """

    app_id: int
    installation_id: int
    public_key: Any
    lifetime: float = 3600.0
    clock: Any = time.time
    exchanges: list[dict[str, Any]] = field(default_factory=list)  # the claims of each accepted JWT
    tokens: dict[str, float] = field(default_factory=dict)  # installation token -> expiry (clock)

    def revoke(self) -> None:
        """Every installation token given so far stops working (as ``DELETE /installation/token`` does)."""
        self.tokens.clear()

    def check_jwt(self, jwt: str) -> dict[str, Any]:
        """The JWT's claims, or _Reply 401 with GitHub's message for what is wrong with it."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def refused(message: str) -> _Reply:
            return _Reply(401, {"message": message, "documentation_url": DOCS})

        try:
            header_b64, claims_b64, signature_b64 = jwt.split(".")
            header, claims = (json.loads(_unb64(part)) for part in (header_b64, claims_b64))
            signature = _unb64(signature_b64)
        except ValueError:
            raise refused("A JSON web token could not be decoded") from None
        if header.get("alg") != "RS256":
            raise refused("A JSON web token could not be decoded")
        try:
            self.public_key.verify(signature, f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise refused("A JSON web token could not be decoded") from None
        now = self.clock()
        if str(claims.get("iss")) != str(self.app_id):
            raise refused("Integration not found")
        if not isinstance(claims.get("exp"), int) or not now < claims["exp"] <= now + 600:
            raise refused("'Expiration time' claim ('exp') is too far in the future" if isinstance(claims.get("exp"), int)
                          and claims["exp"] > now else "'Expiration time' claim ('exp') must be a numeric value "
                          "representing the future time at which the assertion expires")
        if not isinstance(claims.get("iat"), int) or claims["iat"] > now:
            raise refused("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued")
        return claims

    def exchange(self, call: _Call, installation: str) -> _Reply:
        scheme, _, jwt = call.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not jwt:
            raise _Reply(401, {"message": "A JSON web token could not be decoded", "documentation_url": DOCS})
        claims = self.check_jwt(jwt)
        if installation != str(self.installation_id):
            raise _Reply(404, NOT_FOUND)
        token = "ghs_" + secrets.token_hex(18)
        expires = self.clock() + self.lifetime
        self.tokens[token] = expires
        self.exchanges.append(claims)
        return _Reply(201, {"token": token, "expires_at": _iso(datetime.fromtimestamp(expires, timezone.utc)),
                            "permissions": {"contents": "read"}, "repository_selection": "all"})

    def valid(self, token: str) -> bool:
        return self.tokens.get(token, float("-inf")) > self.clock()


class GitHubServer(LoopbackServer):
    """GitHub's API on 127.0.0.1 (ephemeral port) in a background thread.

    ``token``: when set, a request with any other token gets 401 Bad credentials
    (anonymous requests stay allowed); when None, any Authorization is accepted.
    ``prefix``: mount the API under a path, e.g. ``/api/v3`` like GitHub
    Enterprise (uploads then live under ``/api/uploads``).
    ``storage_host``: the host name presigned storage URLs use instead of the
    one in ``root`` (``localhost``: another origin than the API's 127.0.0.1).
    ``app``: a GitHub App installation; its installation tokens are then the only ones accepted.
    """

    def __init__(self, token: str | None = None, prefix: str = "", storage_host: str | None = None,
                 app: AppInstallation | None = None) -> None:
        self.token = token
        self.app = app
        self.storage_host = storage_host
        self.prefix = prefix.rstrip("/")
        self.upload_prefix = self.prefix.removesuffix("/v3") + "/uploads"
        self.requests: list[Logged] = []
        self.rate_limit = 5000
        self.rate_limit_remaining = self.rate_limit  # set to 0 to get 403 "API rate limit exceeded"
        self.rate_limit_reset = int(time.time()) + 3600
        self.rate_limit_used = 0  # requests counted against the rate limit
        self._failures: list[tuple[int, dict[str, str]]] = []
        self._repos: dict[tuple[str, str], list[StoredRelease]] = {}
        self._presigned: dict[str, StoredAsset] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._serve(_Handler, "github-server")
        self.root = self.origin
        self.url = self.root + self.prefix  # what GITHUB_API_URL points at


    # Test controls -----------------------------------------------------------------

    def add_release(self, owner: str, repo: str, tag: str, assets: dict[str, bytes] | None = None, *,
                    draft: bool = False, prerelease: bool = False, published_at: datetime | None = None) -> StoredRelease:
        """Publish a release (a draft has no published_at); later releases list first, as on GitHub."""
        now = datetime.now(timezone.utc)
        with self._lock:
            release = StoredRelease(next(self._ids), tag, draft, prerelease, published_at or now,
                                    None if draft else (published_at or now), now)
            self._repos.setdefault((owner, repo), []).append(release)
            for name, data in (assets or {}).items():
                self.add_asset(owner, repo, tag, name, data)
            return release

    def delete_release(self, owner: str, repo: str, tag: str) -> None:
        with self._lock:
            releases = self._repos[(owner, repo)]
            releases.remove(self.release(owner, repo, tag))

    def add_asset(self, owner: str, repo: str, tag: str, name: str, data: bytes, *,
                  state: str = "uploaded", content_type: str = "application/octet-stream") -> StoredAsset:
        """Attach an asset; ``state="starter"`` is an upload still in progress."""
        with self._lock:
            release = self.release(owner, repo, tag)
            asset = StoredAsset(next(self._ids), name, data, content_type, state, datetime.now(timezone.utc))
            release.assets.append(asset)
            release.updated_at = asset.created_at
            return asset

    def release(self, owner: str, repo: str, tag: str) -> StoredRelease:
        """The release with ``tag`` (drafts included); KeyError if absent."""
        with self._lock:
            for release in self._repos.get((owner, repo), []):
                if release.tag == tag:
                    return release
        raise KeyError(f"{owner}/{repo} has no release {tag}")

    def fail_next(self, status: int, times: int = 1, retry_after: int | str | None = None) -> None:
        """Answer the next ``times`` API requests with ``status`` (429/403 with Retry-After: a secondary rate limit).

        ``retry_after``: seconds, or the header's text as it is (an HTTP date).
        """
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        with self._lock:
            self._failures.extend([(status, headers)] * times)

    # Request handling --------------------------------------------------------------

    def _handle(self, call: _Call) -> tuple[int, bytes, dict[str, str]]:
        """Route one request; returns status, body and headers."""
        if call.path.startswith("/storage/"):
            return self._storage(call)
        try:
            with self._lock:
                self._authenticate(call)
                self._limit(call)
                reply = self._route(call)
        except _Reply as exc:
            reply = exc
        body = b"" if reply.body is None else json.dumps(reply.body, indent=1).encode()
        headers = {**self._rate_headers(), **reply.headers}
        if body:
            headers["Content-Type"] = "application/json; charset=utf-8"
        if reply.status == 200 and reply.body is not None and call.method == "GET":
            return self._conditional(call, body, headers)
        return reply.status, body, headers

    def _authenticate(self, call: _Call) -> None:
        exchange = re.fullmatch(re.escape(self.prefix) + r"/app/installations/([^/]+)/access_tokens", call.path)
        if self.app is not None and exchange and call.method == "POST":
            raise self.app.exchange(call, exchange.group(1))  # the JWT is its credential, not a token
        if not call.authorized or (self.token is None and self.app is None):
            return
        scheme, _, token = call.headers["authorization"].partition(" ")
        accepted = self.app.valid(token) if self.app is not None else token == self.token
        if scheme.lower() not in ("bearer", "token") or not accepted:
            raise _Reply(401, {"message": "Bad credentials", "documentation_url": DOCS})

    def _limit(self, call: _Call) -> None:
        """Injected failures, then the primary rate limit; each request past them counts (a 304 may be refunded)."""
        if self.rate_limit_remaining <= 0:
            raise _Reply(403, {"message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: "
                               "Authenticated requests get a higher rate limit.)", "documentation_url": DOCS})
        self.rate_limit_remaining -= 1
        self.rate_limit_used += 1
        if self._failures:
            status, headers = self._failures.pop(0)
            message = "You have exceeded a secondary rate limit." if status in (403, 429) else "Server Error"
            raise _Reply(status, {"message": message, "documentation_url": DOCS}, headers)

    def _rate_headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(self.rate_limit_remaining, 0)),
            "X-RateLimit-Reset": str(self.rate_limit_reset),
            "X-RateLimit-Used": str(self.rate_limit_used),
            "X-RateLimit-Resource": "core",
            "X-GitHub-Media-Type": "github.v3; format=json",
        }

    def _conditional(self, call: _Call, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        """ETag (and Last-Modified when the route set it); a matching validator gets 304, free only when authorized."""
        digest = hashlib.sha256(body + call.headers.get("authorization", "").encode()).hexdigest()
        headers = {**headers, "ETag": f'W/"{digest[:32]}"', "Vary": "Accept, Authorization, Cookie"}
        if "if-none-match" in call.headers:
            fresh = headers["ETag"] in [t.strip() for t in call.headers["if-none-match"].split(",")]
        elif "if-modified-since" in call.headers and "Last-Modified" in headers:
            fresh = parsedate_to_datetime(headers["Last-Modified"]) <= parsedate_to_datetime(call.headers["if-modified-since"])
        else:
            fresh = False
        if not fresh:
            return 200, body, headers
        if call.authorized:
            with self._lock:
                self.rate_limit_used -= 1
                self.rate_limit_remaining += 1
            headers.update(self._rate_headers())
        del headers["Content-Type"]
        return 304, b"", headers

    def _route(self, call: _Call) -> _Reply:
        api = re.fullmatch(re.escape(self.prefix) + r"/repos/([^/]+)/([^/]+)/releases(?:/(tags|assets)/(.+))?", call.path)
        upload = re.fullmatch(re.escape(self.upload_prefix) + r"/repos/([^/]+)/([^/]+)/releases/(\d+)/assets", call.path)
        if call.method == "GET" and api:
            owner, repo, kind, key = api.groups()
            if kind is None:
                return self._list(call, owner, repo)
            if kind == "tags":
                release = self._published(owner, repo, key)
                return _Reply(200, self._release_json(owner, repo, release), {"Last-Modified": _http_date(release.updated_at)})
            return self._asset(call, owner, repo, key)
        if call.method == "POST" and upload:
            return self._upload(call, *upload.groups())
        raise _Reply(404, NOT_FOUND)

    def _releases(self, call: _Call, owner: str, repo: str) -> list[StoredRelease]:
        """The releases this caller may see, newest first; drafts need authentication (push access)."""
        if (owner, repo) not in self._repos:
            raise _Reply(404, NOT_FOUND)
        visible = [r for r in self._repos[(owner, repo)] if call.authorized or not r.draft]
        return sorted(visible, key=lambda r: (r.created_at, r.id), reverse=True)

    def _published(self, owner: str, repo: str, tag: str) -> StoredRelease:
        for release in self._repos.get((owner, repo), []):
            if release.tag == tag and not release.draft:
                return release
        raise _Reply(404, NOT_FOUND)

    def _list(self, call: _Call, owner: str, repo: str) -> _Reply:
        releases = self._releases(call, owner, repo)
        try:
            per_page = min(max(int(call.query.get("per_page", 30)), 1), 100)
            page = max(int(call.query.get("page", 1)), 1)
        except ValueError:
            raise _Reply(422, {"message": "Validation Failed", "documentation_url": DOCS}) from None
        last = max((len(releases) + per_page - 1) // per_page, 1)
        body = [self._release_json(owner, repo, r) for r in releases[(page - 1) * per_page:page * per_page]]
        link = f"{self.root}{self.prefix}/repos/{owner}/{repo}/releases?per_page={per_page}&page="
        rels = {"prev": page - 1, "first": 1} if page > 1 else {}
        rels |= {"next": page + 1, "last": last} if page < last else {}
        headers = {"Link": ", ".join(f'<{link}{n}>; rel="{rel}"' for rel, n in rels.items())} if rels else {}
        return _Reply(200, body, headers)

    def _asset(self, call: _Call, owner: str, repo: str, key: str) -> _Reply:
        """Asset JSON, or with Accept: application/octet-stream a 302 to a presigned storage URL."""
        found = [(r, a) for r in self._releases(call, owner, repo) for a in r.assets if str(a.id) == key]
        if not found:
            raise _Reply(404, NOT_FOUND)
        release, asset = found[0]
        if "application/octet-stream" in call.headers.get("accept", ""):
            signature = secrets.token_hex(16)
            self._presigned[signature] = asset
            storage = urlsplit(self.root)
            if self.storage_host:
                storage = storage._replace(netloc=f"{self.storage_host}:{storage.port}")
            location = f"{storage.geturl()}/storage/releases/{asset.id}/{quote(asset.name)}?X-Amz-Expires=300&X-Amz-Signature={signature}"
            return _Reply(302, None, {"Location": location})
        return _Reply(200, self._asset_json(owner, repo, release, asset), {"Last-Modified": _http_date(asset.created_at)})

    def _upload(self, call: _Call, owner: str, repo: str, release_id: str) -> _Reply:
        if not call.authorized:
            raise _Reply(401, {"message": "Requires authentication", "documentation_url": DOCS})
        release = next((r for r in self._repos.get((owner, repo), []) if str(r.id) == release_id), None)
        if release is None:
            raise _Reply(404, NOT_FOUND)
        name = call.query.get("name", "")
        problem = "missing_field" if not name else "already_exists" if release.asset(name) else None
        if problem:
            raise _Reply(422, {"message": "Validation Failed", "documentation_url": DOCS,
                               "errors": [{"resource": "ReleaseAsset", "code": problem, "field": "name"}]})
        asset = StoredAsset(next(self._ids), name, call.body, call.headers.get("content-type", "application/octet-stream"),
                            "uploaded", datetime.now(timezone.utc))
        release.assets.append(asset)
        release.updated_at = asset.created_at
        return _Reply(201, self._asset_json(owner, repo, release, asset))

    def _storage(self, call: _Call) -> tuple[int, bytes, dict[str, str]]:
        """The storage host: presigned URLs only, and (like S3) a request with Authorization is refused."""
        if "authorization" in call.headers:
            return _s3_error(400, "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                             "Signature query string parameter or the Authorization header should be specified")
        with self._lock:
            asset = self._presigned.get(call.query.get("X-Amz-Signature", ""))
        if asset is None:
            return _s3_error(403, "AccessDenied", "Request has expired or the signature does not match")
        return 200, asset.data, {"Content-Type": "application/octet-stream", "Content-Disposition": f"attachment; filename={asset.name}"}

    def _release_json(self, owner: str, repo: str, release: StoredRelease) -> dict[str, Any]:
        api = f"{self.url}/repos/{owner}/{repo}/releases/{release.id}"
        return {
            "url": api,
            "assets_url": f"{api}/assets",
            "upload_url": f"{self.root}{self.upload_prefix}/repos/{owner}/{repo}/releases/{release.id}/assets{{?name,label}}",
            "html_url": f"{self.root}/{owner}/{repo}/releases/tag/{quote(release.tag)}",
            "id": release.id,
            "node_id": f"RE_{release.id}",
            "tag_name": release.tag,
            "target_commitish": "main",
            "name": release.tag,
            "draft": release.draft,
            "prerelease": release.prerelease,
            "created_at": _iso(release.created_at),
            "published_at": _iso(release.published_at),
            "assets": [self._asset_json(owner, repo, release, a) for a in release.assets],
            "tarball_url": f"{self.url}/repos/{owner}/{repo}/tarball/{quote(release.tag)}",
            "zipball_url": f"{self.url}/repos/{owner}/{repo}/zipball/{quote(release.tag)}",
            "body": "",
        }

    def _asset_json(self, owner: str, repo: str, release: StoredRelease, asset: StoredAsset) -> dict[str, Any]:
        return {
            "url": f"{self.url}/repos/{owner}/{repo}/releases/assets/{asset.id}",
            "id": asset.id,
            "node_id": f"RA_{asset.id}",
            "name": asset.name,
            "label": "",
            "content_type": asset.content_type,
            "state": asset.state,
            "size": len(asset.data),
            "download_count": 0,
            "created_at": _iso(asset.created_at),
            "updated_at": _iso(asset.created_at),
            "browser_download_url": f"{self.root}/{owner}/{repo}/releases/download/{quote(release.tag)}/{quote(asset.name)}",
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections

    def _serve(self) -> None:
        github: GitHubServer = self.server.owner  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        call = _Call(self.command, unquote(parts.path), {k: v[0] for k, v in parse_qs(parts.query).items()},
                     {k.lower(): v for k, v in self.headers.items()}, body)
        status, content, headers = github._handle(call)
        with github._lock:
            github.requests.append(Logged(self.command, self.path, status, call.headers))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        for start in range(0, len(content), CHUNK_SIZE):
            self.wfile.write(content[start:start + CHUNK_SIZE])

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is ``GitHubServer.requests``."""


def _s3_error(status: int, code: str, message: str) -> tuple[int, bytes, dict[str, str]]:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return status, body.encode(), {"Content-Type": "application/xml"}


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _iso(when: datetime | None) -> str | None:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _http_date(when: datetime) -> str:
    return format_datetime(when.astimezone(timezone.utc), usegmt=True)
