"""Registry authentication as an ``httpx.Auth``: Distribution token authentication, and HTTP Basic.

Anonymous first. A 401's ``WWW-Authenticate`` says how to go on: ``Bearer
realm=...,service=...,scope=...`` gets a token from the realm (with the
credentials, if any, as HTTP Basic) and the request is sent again with it;
``Basic`` sends the credentials with this and every later request. Tokens are
kept per scope until they expire, so a poll costs no token request; a 401 for a
scope not seen yet, or for a token the registry no longer takes, negotiates
again. The credentials are asked for at each challenge, so a ``podman login``
needs no dewy restart.

What the flow cannot decide alone comes from the :class:`Registry` it works for:
where credentials are found, whether a realm may be asked (a public registry
must not make dewy send credentials into the host's own network), and how a
failure is told to the operator.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from dewy import log
from dewy.errors import DewyError
from dewy.urls import redact

DEFAULT_TOKEN_LIFETIME = 60  # seconds, the token spec's default and minimum for expires_in
TOKEN_MARGIN = 10  # seconds before a token's expiry that it is replaced
AUTH_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')
REPOSITORY_PATH = re.compile(r"/v2/(.+?)/(?:tags|manifests|blobs)/")


@dataclass(frozen=True)
class Credentials:
    """A username and password for one registry, and where they were found (named in errors, never the secret)."""

    username: str
    password: str = field(repr=False)
    source: str

    @property
    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


class Registry(Protocol):
    """What the flow asks of the registry it authenticates to."""

    def find_credentials(self) -> Credentials | None:
        """The credentials to use now (read afresh: they may have changed since the last challenge)."""

    async def check_realm(self, realm: str) -> str | None:
        """Raise if ``realm`` must not be asked; else the address to connect to (None: any)."""

    def auth_error(self, problem: str, response: httpx.Response | None = None, *, advice: bool = False) -> DewyError:
        """The error for ``problem`` (with the answer's status and message, and credentials advice)."""


def parse_challenges(values: list[str]) -> list[tuple[str, dict[str, str]]]:
    """``WWW-Authenticate`` values as (scheme in lower case, parameters)."""
    challenges = []
    for value in values:
        # A header may hold several challenges: split before each "Scheme " that starts one.
        for part in re.split(r",\s*(?=[A-Za-z][A-Za-z0-9_-]*\s+[A-Za-z][A-Za-z0-9_-]*\s*=)", value.strip()):
            scheme, _, rest = part.strip().partition(" ")
            if not scheme:
                continue
            params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
                      for m in AUTH_PARAM.finditer(rest)}
            challenges.append((scheme.lower(), params))
    return challenges


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic()


class RegistryAuth(httpx.Auth):
    """The authentication a registry asks for, answered per request (see the module docstring)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.secrets: set[str] = set()  # every password and token used: scrubbed from messages
        self.credentials: Credentials | None = None
        self._scheme: str | None = None  # "bearer" or "basic", as the registry last asked
        self._bearer: dict[str, str] = {}  # the last Bearer challenge's parameters (realm, service)
        self._scopes: dict[str, str] = {}  # repository -> the scope its challenge named
        self._tokens: dict[str, _Token] = {}  # scope -> token

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        scope = self._scope(request)
        if self._scheme == "bearer" and self._fresh(scope) is None:
            answer = yield await self._token_request(scope)
            await self._take_token(scope, answer)
        sent = self._authorize(request, scope)
        response = yield request
        if response.status_code != 401:
            return
        scheme, params = self._challenge(request, response)
        self.credentials = self.registry.find_credentials()
        if self.credentials is not None:
            self.secrets.add(self.credentials.password)
        self._scheme = scheme
        if scheme == "basic":
            if self.credentials is None:
                return  # the 401 stands; the registry's error says what is missing
        else:
            self._bearer = params
            repository = _repository(request)
            scope = params.get("scope") or scope
            if repository:
                self._scopes[repository] = scope
            kept = self._tokens.get(scope)
            if kept is not None and kept.value == sent:
                del self._tokens[scope]  # refused: expired early, revoked, or the server restarted
            if self._fresh(scope) is None:
                answer = yield await self._token_request(scope)
                await self._take_token(scope, answer)
        self._authorize(request, scope)
        yield request

    def _scope(self, request: httpx.Request) -> str:
        repository = _repository(request)
        return self._scopes.get(repository) or (f"repository:{repository}:pull" if repository else "")

    def _fresh(self, scope: str) -> _Token | None:
        token = self._tokens.get(scope)
        return token if token is not None and time.monotonic() < token.expires else None

    def _authorize(self, request: httpx.Request, scope: str) -> str | None:
        """Put the credentials the registry asked for on ``request``; the bearer token sent, if any."""
        request.headers.pop("Authorization", None)
        if self._scheme == "basic" and self.credentials is not None:
            request.headers["Authorization"] = self.credentials.basic
        token = self._fresh(scope) if self._scheme == "bearer" else None
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token.value}"
            return token.value
        return None

    def _challenge(self, request: httpx.Request, response: httpx.Response) -> tuple[str, dict[str, str]]:
        """The scheme to answer a 401 with, Bearer preferred, and its parameters."""
        challenges = parse_challenges(response.headers.get_list("WWW-Authenticate"))
        by_scheme = {scheme: params for scheme, params in reversed(challenges)}
        if "bearer" in by_scheme:
            if not by_scheme["bearer"].get("realm"):
                raise self.registry.auth_error("the registry's Bearer challenge has no realm")
            return "bearer", by_scheme["bearer"]
        if "basic" in by_scheme:
            return "basic", by_scheme["basic"]
        offered = ", ".join(s for s, _ in challenges) or "none"
        raise self.registry.auth_error(f"{request.method} {redact(str(request.url))}: HTTP 401 with no usable authentication "
                                       f"challenge (offered: {offered})")

    async def _token_request(self, scope: str) -> httpx.Request:
        """The token request for ``scope`` to the challenge's realm, sent to the address the registry checked."""
        realm = self._bearer["realm"]
        address = await self.registry.check_realm(realm)
        query = {"scope": scope} if scope else {}
        if self._bearer.get("service"):
            query["service"] = self._bearer["service"]
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            query["account"] = self.credentials.username
            headers["Authorization"] = self.credentials.basic
        url, extensions = httpx.URL(realm).copy_merge_params(query), {}
        if address is not None:  # connect to the address that was checked, not to what a second lookup says
            headers["Host"] = url.netloc.decode("ascii")
            extensions["sni_hostname"] = url.host  # TLS: SNI and the certificate check still use the name
            url = url.copy_with(host=address)
        return httpx.Request("GET", url, headers=headers, extensions=extensions)

    async def _take_token(self, scope: str, response: httpx.Response) -> None:
        """Keep the token of a token server's answer, or raise the error it amounts to."""
        await response.aread()
        shown = f"token from {redact(self._bearer['realm'])}"
        log.debug("registry", f"{shown}: HTTP {response.status_code}")
        if response.status_code in (401, 403):
            raise self.registry.auth_error(shown, response, advice=True)
        if response.status_code != 200:
            raise self.registry.auth_error(shown, response)
        try:
            body = response.json()
        except ValueError:
            raise self.registry.auth_error(f"{shown}: the answer is not JSON") from None
        token = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise self.registry.auth_error(f"{shown}: the answer has no token")
        try:
            lifetime = max(float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME), DEFAULT_TOKEN_LIFETIME)
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME
        self.secrets.add(token)
        self._tokens[scope] = _Token(token, time.monotonic() + lifetime - TOKEN_MARGIN)


def _repository(request: httpx.Request) -> str:
    """The repository a Distribution API path names; "" for ``/v2/`` and anything else."""
    match = REPOSITORY_PATH.match(request.url.path)
    return match.group(1) if match else ""
