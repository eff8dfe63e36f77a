"""GitHub App authentication of ghr://: a signed JWT exchanged for installation tokens, refreshed, never shown.

Against the GitHub test server with an app installed: it verifies each JWT's RS256 signature with the
app's public key, its iss and exp, and accepts only the installation tokens it gave, each for its
lifetime on a fake clock dewy and the server share.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dewy.config import load_credentials
from dewy.errors import RegistryError, UsageError
from dewy.http import githubapp
from dewy.registry import REGISTRIES
from tests.conftest import host_artifact
from tests.github_server import AppInstallation, GitHubServer

APP_ID, INSTALLATION = 424242, 9001
OWNER, REPO = "acme", "private-app"


class Clock:
    """The wall clock of dewy's app auth and of the server's app, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(githubapp, "wall_clock", clock)
    return clock


@pytest.fixture
def github(key, clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubServer]:
    app = AppInstallation(APP_ID, INSTALLATION, key.public_key(), clock=clock)
    with GitHubServer(app=app) as server:
        server.add_release(OWNER, REPO, "v1.0.0", {host_artifact(): b"one"})
        for name in ("GITHUB_TOKEN", "GH_TOKEN", "GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_PRIVATE_KEY_PATH"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("GITHUB_API_URL", server.url)
        monkeypatch.setenv("GITHUB_APP_ID", str(APP_ID))
        monkeypatch.setenv("GITHUB_APP_INSTALLATION_ID", str(INSTALLATION))
        yield server


def polls(count: int, between=lambda: None) -> list[str]:
    """``count`` polls of one registry (one client, as the daemon keeps it); the tags seen."""

    async def run() -> list[str]:
        registry = REGISTRIES.load(REGISTRIES.url(f"ghr://{OWNER}/{REPO}"))
        seen = []
        try:
            for _ in range(count):
                seen.append((await registry.current()).tag)
                between()
        finally:
            await registry.aclose()
        return seen

    return asyncio.run(run())


def api_requests(server: GitHubServer) -> list[tuple[str, int, str]]:
    return [(r.method, r.status, r.headers.get("authorization", "")) for r in server.requests]


@pytest.mark.parametrize("form", ["GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_PRIVATE_KEY_PATH", "systemd credential",
                                  "credential by path"])
def test_each_key_form_gets_an_installation_token_that_private_releases_need(
        github: GitHubServer, key, form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dewy")
    if form == "GITHUB_APP_PRIVATE_KEY":
        monkeypatch.setenv(form, pem(key))
    elif form == "GITHUB_APP_PRIVATE_KEY_PATH":
        (tmp_path / "app.pem").write_text(pem(key))
        monkeypatch.setenv(form, str(tmp_path / "app.pem"))
    elif form == "systemd credential":  # LoadCredential=GITHUB_APP_PRIVATE_KEY:/etc/dewy/app.pem
        (tmp_path / "GITHUB_APP_PRIVATE_KEY").write_text(pem(key))
        assert load_credentials(tmp_path) == ["GITHUB_APP_PRIVATE_KEY"]
    else:  # LoadCredential=app.pem:/etc/dewy/app.pem and GITHUB_APP_PRIVATE_KEY_PATH=app.pem
        (tmp_path / "app.pem").write_text(pem(key))
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY_PATH", "app.pem")
    assert polls(2) == ["v1.0.0", "v1.0.0"]
    assert len(github.app.exchanges) == 1, "one token serves both polls"
    claims = github.app.exchanges[0]
    assert claims["iss"] == str(APP_ID)
    assert claims["iat"] == int(github.app.clock()) - 60 and claims["exp"] - int(github.app.clock()) <= 600
    token = next(iter(github.app.tokens))
    listings = [r for r in github.requests if "/releases" in r.path]
    assert listings and all(r.headers["authorization"] == f"Bearer {token}" for r in listings)
    assert all(r.status in (200, 304) for r in listings)
    jwt = next(r.headers["authorization"] for r in github.requests if "access_tokens" in r.path).split()[1]
    logged = [r.getMessage() + str(r.__dict__) for r in caplog.records]
    assert any("installation token got" in text for text in logged)
    assert not [text for text in logged if token in text or jwt in text or pem(key).splitlines()[1] in text]


def test_the_token_is_replaced_five_minutes_before_it_expires(github: GitHubServer, key, clock: Clock,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY", pem(key))
    moves = iter([3600 - 301, 2, 3600 - 299])  # just before the margin, into it, into the next one's margin

    def later() -> None:
        clock.now += next(moves, 0)

    assert polls(4, later) == ["v1.0.0"] * 4
    assert len(github.app.exchanges) == 3, "renewed when within 5 min of expires_at, not before"
    assert all(status != 401 for _, status, _ in api_requests(github)), "no request went out with a stale token"


def test_a_revoked_token_is_replaced_after_the_401_and_the_request_succeeds(github: GitHubServer, key,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY", pem(key))
    assert polls(3, github.app.revoke) == ["v1.0.0"] * 3
    assert len(github.app.exchanges) == 3
    assert sum(1 for _, status, _ in api_requests(github) if status == 401) == 2


def test_a_wrong_key_is_one_error_line_without_key_or_jwt(github: GitHubServer, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dewy")
    other = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY", other)
    with pytest.raises(RegistryError) as caught:
        polls(1)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (f"GitHub App {APP_ID}: POST {github.url}/app/installations/{INSTALLATION}/access_tokens: HTTP 401 "
                       f"A JSON web token could not be decoded: {githubapp.ADVICE}")
    assert github.app.exchanges == [] and not [r for r in github.requests if "/releases" in r.path]
    jwt = next(r.headers["authorization"] for r in github.requests if "access_tokens" in r.path).split()[1]
    key_line = other.splitlines()[1]
    for text in [message] + [r.getMessage() + str(r.__dict__) for r in caplog.records]:
        assert key_line not in text and jwt not in text


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "GITHUB_APP_ID is set but no private key: set GITHUB_APP_PRIVATE_KEY"),
    ({"GITHUB_APP_INSTALLATION_ID": ""}, "GITHUB_APP_INSTALLATION_ID is not set: GitHub App authentication needs"),
    ({"GITHUB_APP_ID": "my-app"}, "GITHUB_APP_ID='my-app' is not a number"),
    ({"GITHUB_APP_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END RSA PRIVATE KEY-----"},
     "GITHUB_APP_PRIVATE_KEY: not an unencrypted PEM private key"),
    ({"GITHUB_APP_PRIVATE_KEY_PATH": "/nonexistent/app.pem"},
     "GITHUB_APP_PRIVATE_KEY_PATH=/nonexistent/app.pem: cannot read the key file: No such file or directory"),
])
def test_an_incomplete_or_unreadable_app_setting_is_one_usage_line(github: GitHubServer, env: dict[str, str],
                                                                   expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UsageError) as caught:
        polls(1)
    assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
    assert "c2VjcmV0LWJ5dGVz" not in str(caught.value)
    assert github.requests == []


def test_the_app_wins_over_a_token_and_its_variables_stay_out_of_the_apps_environment(
        github: GitHubServer, key, monkeypatch: pytest.MonkeyPatch) -> None:
    from dewy.config import secret_variables

    monkeypatch.setenv("GITHUB_APP_PRIVATE_KEY", pem(key))
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_aPersonalTokenTheServerRefuses")
    assert polls(1) == ["v1.0.0"]
    assert not any("ghp_" in auth for _, _, auth in api_requests(github))
    assert {"GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_PRIVATE_KEY_PATH"} <= secret_variables({})
