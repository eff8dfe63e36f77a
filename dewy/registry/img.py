"""OCI image registry: ``img://HOST[:PORT]/REPO?pre-release=true&insecure=true`` (container mode).

Versions are the repository's tags, listed with the Distribution API
(``GET /v2/<repo>/tags/list?n=...``, following ``Link: <...>; rel="next"``);
the newest semver tag wins and every other tag (``latest``, ``main``,
``sha-1234``) is ignored. The chosen tag's manifest digest is read with a
``HEAD`` (Docker Hub does not count a HEAD as a pull), so the deploy records
exactly which image it ran.

Image tags cannot contain ``+`` (the OCI tag grammar is ``[A-Za-z0-9_][A-Za-z0-9_.-]*``),
so a deployment slot is written with ``_`` as Helm does for charts in OCI
registries: the tag ``v1.2.3_blue`` is version ``1.2.3+blue``.

Authentication follows the registry's ``WWW-Authenticate`` challenge, anonymous
first (:mod:`dewy.http.bearer`): ``Bearer`` gets a token from the challenge's
realm (with the credentials, if any, as HTTP Basic), kept per scope until it
expires; ``Basic`` sends the credentials with each request. This module says
where credentials come from and which realms may be asked.

Credentials come from ``DEWY_REGISTRY_USERNAME`` and ``DEWY_REGISTRY_PASSWORD``,
else from the container runtime's auth file (``$REGISTRY_AUTH_FILE``, else
``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.config/containers/auth.json``,
``~/.docker/config.json``), read when the registry asks for them, so a
``podman login`` needs no dewy restart. A token
realm on a loopback, private or link-local address is refused unless the
registry is on such an address itself: a public registry cannot make dewy
send credentials into the host's own network.

Plain HTTP is used for a registry on loopback (``localhost``, ``127.0.0.0/8``,
``::1``) and with ``insecure=true``; everything else is HTTPS, verified against
the system CA store plus ``/etc/containers/certs.d/HOST[:PORT]/*.crt`` and
``/etc/docker/certs.d/HOST[:PORT]/*.crt`` (where Podman and Docker look).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import json
import math
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx

from dewy import log
from dewy.errors import RegistryError, UsageError
from dewy.http import Conditional, RateLimited, Session, json_of, network_failure, retry_after, tls_context
from dewy.http.bearer import Credentials, RegistryAuth
from dewy.registry import Release, find_tag
from dewy.urls import Url, redact
from dewy.versions import QUERY_KEYS as VERSION_KEYS, Selection

EXPECTED = "img://HOST[:PORT]/REPO?pre-release=true"
PAGE_SIZE = 1000  # tags per page asked for (n=); registries may answer fewer and link the next page
MAX_PAGES = 1000
USERNAME_ENV, PASSWORD_ENV = "DEWY_REGISTRY_USERNAME", "DEWY_REGISTRY_PASSWORD"
CERT_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
# A repository path component, from the Distribution reference grammar.
COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")


@dataclass(frozen=True)
class _Page:
    """One page of a tags list."""

    tags: list[str]
    next_url: str | None


def split_image_url(url: Url) -> tuple[str, str, str]:
    """(host as written in image references, host the API is served from, repository) of an img:// URL.

    Docker Hub is normalised as the container runtimes do: ``docker.io/x`` is
    ``docker.io/library/x``, served from ``registry-1.docker.io``.
    """
    if "@" in url.netloc:
        raise UsageError(f"{url}: credentials do not go in the URL; use {USERNAME_ENV}/{PASSWORD_ENV} or the "
                         f"container runtime's auth file (podman login / docker login)")
    host = url.host
    if not host:
        raise UsageError(f"{url}: expected {EXPECTED}")
    port = url.port
    repository = unquote(url.path).strip("/")
    if ":" in repository or "@" in repository:
        raise UsageError(f"{url}: name the repository without a tag or digest (dewy picks the newest semver tag): "
                         f"expected {EXPECTED}")
    components = repository.split("/") if repository else []
    if not components or not all(COMPONENT.match(c) for c in components):
        raise UsageError(f"{url}: {repository!r} is not a repository name (lower-case letters, digits and . _ - "
                         f"separated by /): expected {EXPECTED}")
    shown_host = f"[{host}]" if ":" in host else host
    if host in DOCKER_HUB_ALIASES and port is None:
        if len(components) == 1:
            components.insert(0, "library")
        return DOCKER_HUB, DOCKER_HUB_API, "/".join(components)
    hostport = f"{shown_host}:{port}" if port is not None else shown_host
    return hostport, hostport, "/".join(components)


def is_loopback_name(host: str) -> bool:
    """Whether ``host`` is loopback by its name alone (no DNS): localhost, 127.0.0.0/8, ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` resolves to (an IP literal is itself). Tests replace this to simulate DNS."""
    literal = _ip(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    return [a for a in (_ip(str(info[4][0])) for info in infos) if a is not None]


async def _internal_address(host: str) -> str | None:
    """The first loopback/private/link-local (any non-global) address of ``host``, or None if it has none."""
    if is_loopback_name(host):
        return host
    for address in await _addresses(host):
        if not address.is_global:
            return str(address)
    return None


def auth_files() -> list[tuple[str, Path]]:
    """The auth files searched for credentials, in order, each with how it is named in messages.

    With ``REGISTRY_AUTH_FILE`` set, only that file (as ``podman --authfile``).
    """
    explicit = os.environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        return [(f"REGISTRY_AUTH_FILE={explicit}", Path(explicit))]
    files: list[tuple[str, Path]] = []
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        path = Path(runtime_dir, "containers", "auth.json")
        files.append((str(path), path))
    home = Path(os.path.expanduser("~"))
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    for path in (config_home / "containers" / "auth.json", home / ".docker" / "config.json"):
        files.append((str(path), path))
    return files


def _auth_key(key: str) -> str:
    """An ``auths`` key as ``host[/path]``: ``https://index.docker.io/v1/`` is ``docker.io``."""
    key = re.sub(r"^[a-z]+://", "", key.strip().lower()).rstrip("/")
    key = re.sub(r"/v[12]$", "", key)
    host, _, rest = key.partition("/")
    if host in DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
    return f"{host}/{rest}" if rest else host


def _decode_entry(entry: Any) -> tuple[str, str] | None:
    """(user, password) from an ``auths`` entry: base64 ``auth`` of ``user:pass``, or username/password fields."""
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(str(entry["auth"]), validate=False).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep and user else None
    if entry.get("username") and entry.get("password"):
        return str(entry["username"]), str(entry["password"])
    return None


def find_credentials(host: str, repository: str) -> tuple[Credentials | None, list[str]]:
    """Credentials for ``host/repository`` and the places looked in (for a "none found" message).

    The environment wins; then the first auth file with an entry for the
    repository or a parent namespace or the host, most specific first
    (containers-auth.json(5)). Unreadable files are skipped with a warning.
    """
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if user and password:
        return Credentials(user, password, f"{USERNAME_ENV}/{PASSWORD_ENV}"), []
    looked = [f"{USERNAME_ENV}/{PASSWORD_ENV}"]
    parts = repository.split("/")
    wanted = [f"{host}/{'/'.join(parts[:i])}" for i in range(len(parts), 0, -1)] + [host]
    for name, path in auth_files():
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            looked.append(f"{name} (missing)")
            continue
        except (OSError, ValueError) as exc:
            log.warning("registry-auth-file", f"ignoring {name}: {type(exc).__name__}: unreadable or not JSON")
            looked.append(f"{name} (unreadable)")
            continue
        looked.append(name)
        auths = data.get("auths") if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            continue
        entries = {_auth_key(k): v for k, v in auths.items() if isinstance(k, str)}
        for key in wanted:
            if key in entries:
                decoded = _decode_entry(entries[key])
                if decoded:
                    return Credentials(*decoded, source=name), looked
    return None, looked


class ImageRegistry:
    """The newest eligible tag of one image repository, with its manifest digest.

    Release fields: ``tag`` the image tag, ``artifact_name`` the image
    reference to pull (``HOST[:PORT]/REPO:TAG``, ``docker.io/library/x:TAG``
    for Docker Hub), ``artifact_url`` the same image pinned by digest
    (``img://HOST[:PORT]/REPO@sha256:...``), ``id`` the manifest digest,
    ``created_at`` None (images are pushed atomically: no upload grace).
    """

    def __init__(self, url: Url, *, slot: str | None = None) -> None:
        url.check_keys({"pre-release", "insecure", *VERSION_KEYS})
        self.host, self.api_host, self.repository = split_image_url(url)
        self.prerelease = url.flag("pre-release")
        self.selection = Selection.of(url, prerelease=self.prerelease, slot=slot)
        insecure = url.flag("insecure") if "insecure" in url.query else None
        self.slot = slot
        #: plain HTTP: on loopback unless insecure=false, or anywhere with insecure=true
        self.plain_http = insecure if insecure is not None else is_loopback_name(url.host)
        self.base = f"{'http' if self.plain_http else 'https'}://{self.api_host}"
        #: the image name without tag, as container runtimes write it
        self.reference = f"{self.host}/{self.repository}"
        self.where = f"img://{self.reference}"
        if bool(os.environ.get(USERNAME_ENV)) != bool(os.environ.get(PASSWORD_ENV)):
            missing, present = (PASSWORD_ENV, USERNAME_ENV) if os.environ.get(USERNAME_ENV) else (USERNAME_ENV, PASSWORD_ENV)
            raise UsageError(f"{self.where}: {present} is set but {missing} is not; set both or neither")
        self.auth = RegistryAuth(self)
        self.http = Session(auth=self.auth, verify=self._tls_context)
        self._pages: Conditional[_Page] = Conditional()
        self._looked: list[str] = []
        self._registry_internal: bool | None = None

    # -- the Registry interface -------------------------------------------------

    async def current(self) -> Release:
        tags = await self._tags()
        chosen = self.selection.newest(tags, _semver_text)
        if chosen is None:
            skipped = "non-semver tags" + ("" if self.prerelease else " and pre-releases (add pre-release=true)")
            slot = f" for slot {self.slot!r} (tag v1.2.3_{self.slot})" if self.slot else ""
            raise RegistryError(f"{self.where}: no eligible tag{slot} among {len(tags)} ({skipped} are skipped)")
        return await self._release(chosen)

    async def release(self, tag: str) -> Release:
        """A tag of the (conditional) tags list, with its manifest digest."""
        return await self._release(find_tag(self.where, tag, await self._tags(), self.selection, _semver_text))

    async def _release(self, tag: str) -> Release:
        digest = await self._digest(tag)
        return Release(
            tag=tag,
            version=self.selection.parse(_semver_text(tag)),
            artifact_name=f"{self.reference}:{tag}",
            artifact_url=f"img://{self.reference}@{digest}",
            created_at=None,
            id=digest,
        )

    async def report(self, release: Release, command: str, error: str | None = None) -> None:
        """OCI registries have no place for an audit record: the journal is the record."""

    async def aclose(self) -> None:
        await self.http.aclose()

    def credentials(self) -> Credentials | None:
        """The credentials dewy would use for this registry (for the container runtime's pull), or None."""
        return find_credentials(self.host, self.repository)[0]

    # -- Distribution API -------------------------------------------------------

    async def _tags(self) -> list[str]:
        """Every tag, following Link pagination; each page asked conditionally when the registry gives ETags."""
        tags: list[str] = []
        url: str | None = f"{self.base}/v2/{self.repository}/tags/list?n={PAGE_SIZE}"
        seen: set[str] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise RegistryError(f"{self.where}: GET {redact(url)}: the tags list pagination "
                                    f"{'loops' if url in seen else f'exceeds {MAX_PAGES} pages'}")
            seen.add(url)
            page = await self._tags_page(url)
            tags.extend(page.tags)
            url = page.next_url
        return tags

    async def _tags_page(self, url: str) -> _Page:
        response = await self._send("GET", url, {"Accept": "application/json", **self._pages.validators(url)})
        return self._pages.answer(url, response, self._read_page)

    def _read_page(self, response: httpx.Response) -> _Page:
        where = f"{self.where}: GET {redact(str(response.request.url))}"
        try:
            body = json_of(response, f"is {self.api_host} an OCI registry?")
        except ValueError as exc:
            raise self._err(f"{where}: {exc}") from None
        if not isinstance(body, dict) or "tags" not in body or not isinstance(body["tags"], (list, type(None))):
            raise self._err(f"{where}: the answer is not a tags list (expected {{\"name\": ..., \"tags\": [...]}})")
        return _Page([t for t in body.get("tags") or [] if isinstance(t, str)], self._next_page(response))

    def _next_page(self, response: httpx.Response) -> str | None:
        """The ``Link: <...>; rel="next"`` target, which must stay on the registry (it gets our credentials)."""
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        target = response.request.url.join(link)
        base = httpx.URL(self.base)
        if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
            raise self._err(f"{self.where}: GET {redact(str(response.request.url))}: the next page link "
                            f"{redact(str(target))} leaves the registry")
        return str(target)

    async def _digest(self, tag: str) -> str:
        """The manifest digest of ``tag``: HEAD's Docker-Content-Digest, else the sha256 of the GET body."""
        url = f"{self.base}/v2/{self.repository}/manifests/{tag}"
        headers = {"Accept": MANIFEST_TYPES}
        response = await self._send("HEAD", url, headers)
        digest = response.headers.get("Docker-Content-Digest", "").strip()
        if not digest:
            response = await self._send("GET", url, headers)
            digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if not DIGEST.match(digest):
            raise self._err(f"{self.where}: HEAD {redact(url)}: {digest!r} is not a digest")
        return digest

    # -- what dewy.cosign reads: signatures stored beside the image ------------

    async def has_tag(self, tag: str) -> bool:
        return tag in await self._tags()

    async def manifest(self, reference: str) -> bytes:
        """The manifest that ``reference`` (a tag or a digest) names, as the registry stores it."""
        url = f"{self.base}/v2/{self.repository}/manifests/{reference}"
        return (await self._send("GET", url, {"Accept": MANIFEST_TYPES})).content

    async def blob(self, digest: str) -> bytes:
        """A small blob of the repository (a signature payload), whole."""
        if not DIGEST.match(digest):
            raise self._err(f"{self.where}: {digest[:80]!r} is not a blob digest")
        return (await self._send("GET", f"{self.base}/v2/{self.repository}/blobs/{digest}", {})).content

    # -- HTTP, authentication and errors ---------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        """The system CA store plus the registry's CA certificates where Podman and Docker keep them."""
        return tls_context((cert for directory in CERT_DIRS for cert in sorted((directory / self.api_host).glob("*.crt"))),
                           self.where)

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        """One registry request, authenticated as the registry asks (anonymous first); errors raised as one line."""
        try:
            response = await self.http.send(method, url, headers=headers)
        except httpx.HTTPError as exc:
            raise self._err(f"{self.where}: {network_failure(exc, method, url)}") from exc
        log.debug("registry", f"{method} {redact(url)}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise self._failure(response)
        return response

    # -- what the authentication flow asks (dewy.http.bearer.Registry) ------------

    def find_credentials(self) -> Credentials | None:
        credentials, self._looked = find_credentials(self.host, self.repository)
        return credentials

    async def check_realm(self, realm: str) -> str | None:
        """Refuse a realm that would leak credentials: plain HTTP from an HTTPS registry, or an internal address.

        A realm on a loopback, private or link-local address is accepted only
        when the registry itself is on such an address (a registry on the LAN
        with its token server next to it); otherwise a registry could point
        dewy at the host's own services or a cloud metadata endpoint. Returns the
        checked address the token request must go to (a name resolved again could
        answer an internal address: DNS rebinding), None when any address may be used.
        """
        try:
            target = httpx.URL(realm)
        except (httpx.InvalidURL, TypeError):
            raise self._err(f"{self.where}: the registry's token realm {redact(realm)!r} is not a URL") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise self._err(f"{self.where}: the registry's token realm {redact(realm)!r} is not an http(s) URL")
        if target.scheme == "http" and not self.plain_http:
            raise self._err(f"{self.where}: refusing token realm {redact(realm)}: plain HTTP, "
                            f"while the registry is reached over HTTPS")
        if self._registry_internal is None:
            registry_host = httpx.URL(self.base).host
            try:
                self._registry_internal = await _internal_address(registry_host) is not None
            except OSError:
                self._registry_internal = False
        if self._registry_internal:
            return None
        try:
            addresses = [] if is_loopback_name(target.host) else await _addresses(target.host)
        except OSError as exc:
            raise self._err(f"{self.where}: token realm {redact(realm)}: cannot resolve {target.host}: {exc}") from None
        internal = target.host if not addresses else next((str(a) for a in addresses if not a.is_global), None)
        if internal is not None:
            raise self._err(f"{self.where}: refusing token realm {redact(realm)}: {target.host} is a loopback, "
                            f"private or link-local address ({internal}) and the registry {self.api_host} is not")
        return str(addresses[0])

    def auth_error(self, problem: str, response: httpx.Response | None = None, *, advice: bool = False) -> RegistryError:
        where = f"{self.where}: {problem}"
        if response is not None and response.status_code not in (401, 403):
            return self._failure(response, shown=where)
        line = f"{where}: HTTP {response.status_code} {_registry_message(response)}" if response is not None else where
        return self._err(f"{line}: {self._credentials_advice()}" if advice else line)

    # -- errors ---------------------------------------------------------------------

    def _credentials_advice(self) -> str:
        credentials = self.auth.credentials
        if credentials is not None:
            return f"the registry rejected the credentials for {self.host} from {credentials.source}"
        return (f"{self.api_host} requires credentials; none found for {self.host} (looked in {', '.join(self._looked)})"
                if self._looked else f"{self.api_host} requires credentials")

    def _failure(self, response: httpx.Response, shown: str | None = None) -> RegistryError:
        """The one-line error for a 4xx/5xx answer, with the registry's own error code and what to do."""
        status = response.status_code
        where = shown or f"{self.where}: {response.request.method} {redact(str(response.request.url))}"
        message = _registry_message(response)
        if status == 429:
            wait = retry_after(response.headers)
            return RateLimited(self._scrub(f"{where}: HTTP 429 {message}: rate limited; retrying after "
                                           f"{math.ceil(wait)} s"), wait)
        line = f"{where}: HTTP {status} {message}"
        credentials = self.auth.credentials
        if status == 401:
            missing = "" if credentials else f"; or repository {self.repository} does not exist"
            return self._err(f"{line}: {self._credentials_advice()}{missing}")
        if status == 403:
            who = f"the credentials for {self.host} from {credentials.source}" if credentials else "anonymous access"
            return self._err(f"{line}: {who} may not pull {self.repository}")
        if status == 404:
            if "/manifests/" in response.request.url.path:
                return self._err(f"{line}: the tag's manifest is gone (deleted since the tags were listed?)")
            hint = "" if credentials else " (or it is private and needs credentials)"
            return self._err(f"{line}: repository {self.repository} not found on {self.api_host}{hint}")
        return self._err(line)

    def _scrub(self, message: str) -> str:
        """Never a password or token in a message, even if a server echoes one back."""
        for secret in self.auth.secrets:
            if secret:
                message = message.replace(secret, "***")
        return message

    def _err(self, message: str) -> RegistryError:
        return RegistryError(self._scrub(message))


def _semver_text(tag: str) -> str:
    """The version a tag stands for: ``_`` is the build-metadata ``+``, which image tags cannot contain."""
    return tag.replace("_", "+", 1)


def _registry_message(response: httpx.Response) -> str:
    """The reason phrase with the registry's first ``errors`` entry (``NAME_UNKNOWN: ...``), on one short line."""
    text = response.reason_phrase or ""
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code, message = errors[0].get("code"), errors[0].get("message")
        detail = ": ".join(str(x) for x in (code, message) if x)
        if detail:
            text = f"{text} ({detail})" if text else detail
    elif isinstance(body, dict) and isinstance(body.get("details") or body.get("error"), str):
        text = f"{text} ({body.get('details') or body.get('error')})"
    return " ".join(text.split())[:300]
