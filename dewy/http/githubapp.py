"""GitHub App authentication as an ``httpx.Auth``: an installation token, got with a signed JWT and kept fresh.

A GitHub App authenticates as itself with a JWT (RS256, signed with the app's private
key, ``iss`` the app id, valid 10 minutes at most: GitHub's rules) and exchanges it at
``POST /app/installations/ID/access_tokens`` for an installation token, which every API
request then carries as its bearer token. That token lives about an hour: it is
replaced REFRESH_MARGIN before its ``expires_at``, so a request never carries one that
runs out on the way, and once more when GitHub answers 401 anyway (revoked, or the
host's clock is off).

Configured from the environment as upstream dewy reads it: ``GITHUB_APP_ID``,
``GITHUB_APP_INSTALLATION_ID`` and the key in ``GITHUB_APP_PRIVATE_KEY`` (the PEM text;
a systemd credential of that name arrives the same way) or ``GITHUB_APP_PRIVATE_KEY_PATH``
(a relative path is looked up among the systemd credentials first).
``cryptography`` is imported only when an app is configured: it is an extra. Neither
the key nor a token ever appears in a message.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from dewy import log
from dewy.errors import DewyError, UsageError

if TYPE_CHECKING:  # cryptography is an extra: imported only when an app is configured
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

JWT_BACKDATE = 60  # seconds: iat in the past, as GitHub advises against clock drift
JWT_LIFETIME = 540  # seconds after now: within GitHub's 10 minutes even with the backdate counted
REFRESH_MARGIN = 300  # seconds before expires_at that an installation token is replaced
DEFAULT_TOKEN_LIFETIME = 3600  # an answer without a readable expires_at: GitHub's documented hour
MAX_KEY_FILE_BYTES = 64 << 10
ADVICE = "check GITHUB_APP_ID, GITHUB_APP_INSTALLATION_ID and that the private key is the app's current one"


@dataclass(frozen=True)
class GitHubApp:
    """An app installation dewy authenticates as (the key is never shown)."""

    app_id: str
    installation_id: str
    key: RSAPrivateKey = field(repr=False)


def _number(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise UsageError(f"{name} is not set: GitHub App authentication needs GITHUB_APP_ID, "
                         "GITHUB_APP_INSTALLATION_ID and GITHUB_APP_PRIVATE_KEY or GITHUB_APP_PRIVATE_KEY_PATH")
    if not value.isdigit():
        raise UsageError(f"{name}={value!r} is not a number (the app's settings page shows it)")
    return value


def app_from_env(environ: Mapping[str, str] | None = None) -> GitHubApp | None:
    """The app configured in the environment, None without ``GITHUB_APP_ID``; UsageError (one line, no key
    material) for an incomplete setting, an unreadable key or ``cryptography`` missing."""
    environ = os.environ if environ is None else environ
    if not environ.get("GITHUB_APP_ID", "").strip():
        return None
    app_id, installation = _number(environ, "GITHUB_APP_ID"), _number(environ, "GITHUB_APP_INSTALLATION_ID")
    text, where = environ.get("GITHUB_APP_PRIVATE_KEY", ""), "GITHUB_APP_PRIVATE_KEY"
    if not text.strip():
        path = environ.get("GITHUB_APP_PRIVATE_KEY_PATH", "").strip()
        if not path:
            raise UsageError("GITHUB_APP_ID is set but no private key: set GITHUB_APP_PRIVATE_KEY (the PEM text, or a "
                             "systemd credential of that name) or GITHUB_APP_PRIVATE_KEY_PATH")
        where = f"GITHUB_APP_PRIVATE_KEY_PATH={path}"
        credentials = environ.get("CREDENTIALS_DIRECTORY")  # LoadCredential=app.pem:... with a relative path
        if not os.path.isabs(path) and credentials and os.path.isfile(os.path.join(credentials, path)):
            path = os.path.join(credentials, path)
        try:
            with open(path, "rb") as file:
                text = file.read(MAX_KEY_FILE_BYTES + 1).decode("ascii", "replace")
        except OSError as exc:
            raise UsageError(f"{where}: cannot read the key file: {exc.strerror}") from None
    return GitHubApp(app_id, installation, _private_key(text, where))


def _private_key(text: str, where: str) -> RSAPrivateKey:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    except ImportError:
        raise UsageError("GitHub App authentication needs the Python package cryptography: "
                         "pip install 'dewy[signing]'") from None
    try:
        key = serialization.load_pem_private_key(text.replace("\\n", "\n").strip().encode(), password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{where}: not an unencrypted PEM private key (GitHub's app settings page generates one: "
                         "-----BEGIN RSA PRIVATE KEY-----)") from None
    if not isinstance(key, RSAPrivateKey):
        raise UsageError(f"{where}: a GitHub App key is an RSA key, this is another kind")
    return key


def wall_clock() -> float:
    """What ``expires_at`` and a JWT's times are measured against."""
    return time.time()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def app_jwt(app: GitHubApp, now: float) -> str:
    """The JWT GitHub takes as the app's own credential (RS256; iss, iat, exp as GitHub documents them)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"iat": int(now) - JWT_BACKDATE, "exp": int(now) + JWT_LIFETIME, "iss": app.app_id}).encode())
    signed = f"{header}.{claims}".encode()
    return f"{header}.{claims}.{_b64(app.key.sign(signed, padding.PKCS1v15(), hashes.SHA256()))}"


class GitHubAppAuth(httpx.Auth):
    """Every request carries a fresh installation token (see the module docstring).

    ``error`` makes the failure of an exchange (RegistryError for polls,
    ArtifactError for downloads); ``clock`` is the wall clock ``expires_at`` is
    measured against.
    """

    def __init__(self, app: GitHubApp, api_url: str, error: Callable[[str], DewyError],
                 clock: Callable[[], float] | None = None) -> None:
        self.app = app
        self.api_url = api_url
        self.error = error
        self.clock = clock or wall_clock
        self.secrets: set[str] = set()  # every token got: scrubbed from messages
        self._token: str | None = None
        self._refresh_at = 0.0

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._token is None or self.clock() >= self._refresh_at:
            await self._take((yield self._exchange()))
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:  # revoked, or our clock is off: one new token, one more try
            await response.aread()
            await self._take((yield self._exchange()))
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request

    @property
    def _where(self) -> str:
        return f"GitHub App {self.app.app_id}: POST {self.api_url}/app/installations/{self.app.installation_id}/access_tokens"

    def _exchange(self) -> httpx.Request:
        return httpx.Request("POST", f"{self.api_url}/app/installations/{self.app.installation_id}/access_tokens",
                             headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
                                      "Authorization": f"Bearer {app_jwt(self.app, self.clock())}"})

    async def _take(self, response: httpx.Response) -> None:
        """Keep the installation token of an exchange's answer, or raise the one-line error it amounts to."""
        await response.aread()
        body: Any = None
        try:
            body = response.json()
        except ValueError:
            pass
        if response.status_code not in (200, 201):
            message = body.get("message") if isinstance(body, dict) and isinstance(body.get("message"), str) else \
                response.reason_phrase
            advice = f": {ADVICE}" if response.status_code in (401, 403, 404) else ""
            raise self.error(self._scrub(f"{self._where}: HTTP {response.status_code} {message}{advice}"))
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise self.error(f"{self._where}: the answer has no token")
        self._token = token
        self.secrets.add(token)
        now = self.clock()
        try:
            lifetime = datetime.fromisoformat(str(body.get("expires_at")).replace("Z", "+00:00")).timestamp() - now
        except ValueError:
            lifetime = DEFAULT_TOKEN_LIFETIME
        self._refresh_at = now + lifetime - min(REFRESH_MARGIN, lifetime / 2)  # a short-lived one: at half its life
        log.debug("github", f"GitHub App {self.app.app_id}: installation token got", expires_in=round(lifetime))

    def _scrub(self, message: str) -> str:
        for secret in self.secrets:
            message = message.replace(secret, "***")
        return message
