"""dewy.http's unpleasant parts, against the protocol-level test servers: redirects and credentials,
Retry-After as a date, answers served from the conditional-request cache, registry tokens per scope."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from dewy.artifacts import ARTIFACTS
from dewy.errors import RegistryError
from dewy.http import Conditional, RateLimited, Session
from dewy.http.bearer import Credentials, RegistryAuth
from dewy.registry import REGISTRIES, Release
from tests.github_server import GitHubServer
from tests.oci_registry import OciRegistry, RegistryFront

OWNER, REPO, TOKEN = "acme", "site", "ghp_test_token_never_shown"


def current(url: str) -> Release:
    async def run() -> Release:
        backend = REGISTRIES.load(REGISTRIES.url(url))
        try:
            return await backend.current()
        finally:
            await backend.aclose()
    return asyncio.run(run())


def use(monkeypatch: pytest.MonkeyPatch, github: GitHubServer) -> None:
    monkeypatch.setenv("GITHUB_API_URL", github.url)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.delenv("GH_TOKEN", raising=False)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[OciRegistry]:
    with OciRegistry(tmp_path) as running:
        yield running


def asset_download(github: GitHubServer, credentials: str) -> int:
    """The status of an asset download through a Session sending the token, its redirect followed."""
    release = github.add_release(OWNER, REPO, "v1.0.0", {"app.tar.gz": b"the bytes"})
    url = f"{github.url}/repos/{OWNER}/{REPO}/releases/assets/{release.assets[0].id}"

    async def run() -> int:
        session = Session()
        try:
            response = await session.send("GET", url, credentials=credentials,  # type: ignore[arg-type]
                                          headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/octet-stream"})
            assert response.status_code != 200 or response.content == b"the bytes"
            return response.status_code
        finally:
            await session.aclose()
    return asyncio.run(run())


@pytest.mark.parametrize("storage_host, credentials, status", [
    ("localhost", "same-origin", 200),  # another host: the token stays behind
    ("127.0.0.1", "same-origin", 400),  # the same origin keeps it (a registry's own redirects need it) ...
    ("127.0.0.1", "never", 200),        # ... unless no redirect may carry it (GitHub's presigned storage)
])
def test_a_redirect_keeps_the_credentials_only_on_their_origin(storage_host: str, credentials: str, status: int) -> None:
    with GitHubServer(token=TOKEN, storage_host=storage_host) as github:
        assert asset_download(github, credentials) == status
        api, storage = [r for r in github.requests if "/assets/" in r.path or r.path.startswith("/storage/")]
    assert (api.status, api.headers["authorization"]) == (302, f"Bearer {TOKEN}")
    assert storage.headers.get("host", "").startswith(f"{storage_host}:")
    assert ("authorization" in storage.headers) == (status == 400)


def test_the_ghr_backend_downloads_from_storage_on_another_host(monkeypatch: pytest.MonkeyPatch) -> None:
    with GitHubServer(token=TOKEN, storage_host="localhost") as github:
        use(monkeypatch, github)
        github.add_release(OWNER, REPO, "v1.0.0", {"app.tar.gz": b"the bytes"})
        out = io.BytesIO()
        asyncio.run(ARTIFACTS.load(ARTIFACTS.url(current(f"ghr://{OWNER}/{REPO}?artifact=app.tar.gz").artifact_url)).download(out))
        [storage] = [r for r in github.requests if r.path.startswith("/storage/")]
    assert out.getvalue() == b"the bytes"
    assert storage.status == 200 and "authorization" not in storage.headers


def test_retry_after_as_an_http_date_is_measured_against_the_servers_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    with GitHubServer(token=TOKEN) as github:
        use(monkeypatch, github)
        github.add_release(OWNER, REPO, "v1.0.0", {"app.tar.gz": b"x"})
        server_now = parsedate_to_datetime(httpx.get(f"{github.url}/repos/{OWNER}/{REPO}/releases").headers["Date"])
        github.fail_next(429, retry_after=format_datetime(server_now + timedelta(seconds=90), usegmt=True))
        with pytest.raises(RateLimited) as limited:
            current(f"ghr://{OWNER}/{REPO}")
    assert 88 <= limited.value.retry_after <= 91  # the Date header has whole seconds
    assert "retrying after" in str(limited.value)


def test_retry_after_as_an_http_date_from_a_registry(registry: OciRegistry) -> None:
    registry.push_image("acme/app", ["v1.0.0"])
    with RegistryFront(registry) as front:
        now = parsedate_to_datetime(httpx.get(f"http://{front.host}/v2/").headers["Date"])
        front.fail_next(429, headers={"Retry-After": format_datetime(now + timedelta(minutes=5), usegmt=True)})
        with pytest.raises(RateLimited) as limited:
            current(f"img://{front.host}/acme/app")
    assert 298 <= limited.value.retry_after <= 301


def test_a_304_is_answered_from_the_cache_without_reading_again() -> None:
    with GitHubServer(token=TOKEN) as github:
        github.add_release(OWNER, REPO, "v1.0.0")
        url = f"{github.url}/repos/{OWNER}/{REPO}/releases"
        cache: Conditional[list] = Conditional()
        reads: list[int] = []

        def read(response: httpx.Response) -> list:
            reads.append(response.status_code)
            return [release["tag_name"] for release in response.json()]

        async def poll(session: Session) -> list:
            headers = {"Authorization": f"Bearer {TOKEN}", **cache.validators(url)}
            return cache.answer(url, await session.send("GET", url, headers=headers), read)

        async def run() -> tuple[list, list, list, int]:
            session = Session()
            try:
                first = await poll(session)
                used = github.rate_limit_used
                second = await poll(session)
                free = github.rate_limit_used - used
                github.add_release(OWNER, REPO, "v1.1.0")
                return first, second, await poll(session), free
            finally:
                await session.aclose()
        first, second, third, free = asyncio.run(run())
        statuses = [r.status for r in github.requests]
    assert statuses == [200, 304, 200] and reads == [200, 200]  # the 304 was not read: the kept value served
    assert first == second == ["v1.0.0"] and free == 0  # and it cost nothing against the rate limit
    assert third == ["v1.1.0", "v1.0.0"]  # a change is a 200 again


class _Registry:
    """The registry side of the token flow, for a front door on loopback with anonymous pulls."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def find_credentials(self) -> Credentials | None:
        return None

    async def check_realm(self, realm: str) -> str | None:
        return None

    def auth_error(self, problem: str, response: httpx.Response | None = None, *, advice: bool = False) -> RegistryError:
        return RegistryError(problem)


@pytest.mark.parametrize("actions, token_scopes, statuses", [
    # The registry asks for the usual scope: a new repository's token is asked for before its first request.
    ("pull", ["acme/app:pull", "acme/tool:pull"], [401, 200, 200, 200, 200]),
    # It asks for another: the first guess for a new repository is refused, and its challenge's scope is asked for.
    ("pull,push", ["acme/app:pull,push", "acme/tool:pull", "acme/tool:pull,push"], [401, 200, 401, 200, 200, 200]),
])
def test_tokens_are_kept_per_scope_and_a_new_scope_negotiates_again(
        registry: OciRegistry, actions: str, token_scopes: list[str], statuses: list[int]) -> None:
    registry.push_image("acme/app", ["v1.0.0"])
    registry.push_image("acme/tool", ["v2.0.0"])
    with RegistryFront(registry, token_auth=True, actions=actions) as front:
        async def run() -> list[int]:
            session = Session(auth=RegistryAuth(_Registry()))
            try:
                return [(await session.send("GET", f"http://{front.host}/v2/{repository}/tags/list")).status_code
                        for repository in ("acme/app", "acme/tool", "acme/app", "acme/tool")]
            finally:
                await session.aclose()
        answers = asyncio.run(run())
        requests, tokens = list(front.requests), list(front.token_requests)
    assert answers == [200, 200, 200, 200]
    assert [unquote(t.path.split("scope=", 1)[1].split("&", 1)[0]) for t in tokens] == [
        f"repository:{scope}" for scope in token_scopes]  # each scope asked for once
    assert [r.status for r in requests] == statuses
    app, tool, app_again, tool_again = [r.headers["authorization"] for r in requests if r.status == 200]
    assert (app_again, tool_again) == (app, tool) and app != tool  # the repeats go with the kept tokens
