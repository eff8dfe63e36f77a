"""ghr:// registry and artifacts against the GitHub API test server: selection, free polls, downloads, errors, audit."""

from __future__ import annotations

import asyncio
import io
import logging
import random
import re
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from dewy import __version__
from dewy import http
from dewy.artifacts import ARTIFACTS
from dewy.artifacts import deadline as deadline_module
from dewy.errors import ArtifactError, ArtifactNotReady, RegistryError, UsageError
from dewy.http import RateLimited
from dewy.registry import github as github_module
from dewy.http import READ_SIZE as CHUNK_SIZE  # the most one network read brings
from dewy.registry import REGISTRIES, Release, shipped_text
from tests.conftest import host_artifact
from tests.github_server import GitHubServer
from tests.loopback import FixedAnswer, Trickle

TOKEN = "ghp_TESTs3cr3tT0kenNeverPrinted0123456789"
OWNER, REPO = "acme", "app"
ARTIFACT = host_artifact()


def use(monkeypatch: pytest.MonkeyPatch, server: GitHubServer, token: str | None = TOKEN) -> None:
    """Point dewy at ``server`` with ``token`` in GITHUB_TOKEN (or anonymously)."""
    monkeypatch.setenv("GITHUB_API_URL", server.url)
    monkeypatch.delenv("GH_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("GITHUB_TOKEN", token)
    else:
        monkeypatch.delenv("GITHUB_TOKEN", raising=False)


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubServer]:
    with GitHubServer(token=TOKEN) as server:
        use(monkeypatch, server)
        yield server


def registry(query: str = "", **options):
    return REGISTRIES.load(REGISTRIES.url(f"ghr://{OWNER}/{REPO}{query}"), **options)


def current(query: str = "", *, repo: str = f"{OWNER}/{REPO}", **options) -> Release:
    async def run() -> Release:
        backend = REGISTRIES.load(REGISTRIES.url(f"ghr://{repo}{query}"), **options)
        try:
            return await backend.current()
        finally:
            await backend.aclose()
    return asyncio.run(run())


def download(url: str, out: io.BytesIO | None = None) -> bytes:
    out = out or io.BytesIO()
    asyncio.run(ARTIFACTS.load(ARTIFACTS.url(url)).download(out))
    return out.getvalue()


def release(server: GitHubServer, tag: str, **options) -> None:
    server.add_release(OWNER, REPO, tag, {ARTIFACT: tag.encode()}, **options)


def test_newest_semver_wins_across_three_pages(github: GitHubServer) -> None:
    release(github, "v1.5.0")  # created first: listed last, on page 3
    tags = [f"v1.0.{i}" for i in range(249)]
    random.Random(7).shuffle(tags)
    for tag in tags:
        release(github, tag)
    assert current().tag == "v1.5.0"
    pages = [r for r in github.requests if "/releases?" in r.path]
    assert len(pages) == 3 and pages[-1].path.endswith("page=3")  # followed Link: rel="next"
    headers = pages[0].headers
    assert headers["accept"] == "application/vnd.github+json"
    assert headers["x-github-api-version"] == "2022-11-28"
    assert headers["user-agent"] == f"dewy/{__version__}"
    assert headers["authorization"] == f"Bearer {TOKEN}"


def test_drafts_are_skipped(github: GitHubServer) -> None:
    release(github, "v1.0.0")
    release(github, "v9.0.0", draft=True)  # visible in the listing to an authenticated caller
    assert current().tag == "v1.0.0"


def test_prereleases_only_with_pre_release_true(github: GitHubServer) -> None:
    release(github, "v1.0.0")
    release(github, "v2.0.0", prerelease=True)  # GitHub's flag
    release(github, "v3.0.0-rc.1")  # semver pre-release part
    assert current().tag == "v1.0.0"
    assert current("?pre-release=true").tag == "v3.0.0-rc.1"


def test_non_semver_tags_are_ignored(github: GitHubServer) -> None:
    for tag in ("latest", "nightly-2024-05-01", "v1.2", "release-7"):
        release(github, tag)
    with pytest.raises(RegistryError, match="no eligible release"):
        current()
    release(github, "v0.9.0")
    assert current().tag == "v0.9.0"


def test_slot_selects_build_metadata(github: GitHubServer) -> None:
    release(github, "v1.2.0+blue")
    release(github, "v1.3.0+green")
    assert current(slot="blue").tag == "v1.2.0+blue"
    assert current().tag == "v1.3.0+green"


def test_artifact_explicit_and_auto_matched_with_checksums(github: GitHubServer) -> None:
    names = ["app_windows_amd64.zip", "app_plan9_mips.tar.gz", ARTIFACT, "other.tar.gz"]
    github.add_release(OWNER, REPO, "v1.0.0", {name: name.encode() for name in names} | {"checksums.txt": b"sums"})
    auto = current()
    assert auto.artifact_name == ARTIFACT
    assert download(auto.artifact_url) == ARTIFACT.encode()
    assert auto.checksums_url and download(auto.checksums_url) == b"sums"
    assert auto.id == str(github.release(OWNER, REPO, "v1.0.0").id)
    explicit = current("?artifact=other.tar.gz")
    assert explicit.artifact_name == "other.tar.gz"
    assert download(explicit.artifact_url) == b"other.tar.gz"


def test_missing_artifact_waits_while_young_then_fails(github: GitHubServer) -> None:
    github.add_release(OWNER, REPO, "v1.0.0", {"notes.md": b""}, published_at=datetime.now(timezone.utc) - timedelta(hours=2))
    with pytest.raises(RegistryError, match="has no") as old:
        current()
    assert not isinstance(old.value, ArtifactNotReady)
    github.add_release(OWNER, REPO, "v1.1.0", {"notes.md": b""})
    with pytest.raises(ArtifactNotReady):
        current()
    github.add_asset(OWNER, REPO, "v1.1.0", ARTIFACT, b"partial", state="starter")  # upload in progress
    with pytest.raises(ArtifactNotReady):
        current()


def test_unchanged_poll_is_all_304_and_free(github: GitHubServer) -> None:
    for i in range(250):
        release(github, f"v1.0.{i}")

    async def run() -> tuple[Release, Release]:
        backend = registry()
        try:
            first = await backend.current()
            github.requests.clear()
            used = github.rate_limit_used
            second = await backend.current()
            assert github.rate_limit_used == used
            return first, second
        finally:
            await backend.aclose()

    first, second = asyncio.run(run())
    assert first == second
    assert [r.status for r in github.requests] == [304, 304, 304]


def test_change_on_a_later_page_is_noticed(github: GitHubServer) -> None:
    """Page 1 answers 304 when an old release changes; the other pages still tell."""
    release(github, "v2.0.0")  # the newest version, created first: on page 3
    for i in range(250):
        release(github, f"v1.0.{i}")

    async def run() -> list[str]:
        backend = registry()
        try:
            first = await backend.current()
            github.delete_release(OWNER, REPO, "v2.0.0")  # the publisher rolls back
            return [first.tag, (await backend.current()).tag]
        finally:
            await backend.aclose()

    assert asyncio.run(run()) == ["v2.0.0", "v1.0.249"]


def test_a_release_by_tag_comes_from_the_listing_a_poll_reads_anyway(github: GitHubServer) -> None:
    """dewy pin's lookup: an older release (by tag, with or without the v) costs only 304s after a poll;
    a draft or a tag GitHub does not have is one line, and so is a tag the version rules refuse."""
    for tag in ("v1.0.0", "v1.1.0", "v2.0.0-rc.1"):
        release(github, tag)
    release(github, "v3.0.0", draft=True)

    async def run() -> tuple[Release, list[str], list[int]]:
        backend = registry()
        try:
            await backend.current()
            github.requests.clear()
            older = await backend.release("1.0.0")
            statuses = [r.status for r in github.requests]
            refused = []
            for tag in ("v9.9.9", "v3.0.0", "v2.0.0-rc.1"):
                with pytest.raises(RegistryError) as caught:
                    await backend.release(tag)
                refused.append(str(caught.value))
            return older, refused, statuses
        finally:
            await backend.aclose()

    older, refused, statuses = asyncio.run(run())
    assert older.tag == "v1.0.0" and download(older.artifact_url) == b"v1.0.0"
    assert older.id == str(github.release(OWNER, REPO, "v1.0.0").id)
    assert statuses == [304]
    assert refused == [f"ghr://{OWNER}/{REPO} has no release v9.9.9", f"ghr://{OWNER}/{REPO} has no release v3.0.0",
                       f"ghr://{OWNER}/{REPO}: v2.0.0-rc.1 is not deployed from this registry: it is a pre-release, "
                       "and pre-releases are skipped without pre-release=true"]


def test_download_follows_redirect_without_sending_the_token_to_storage(github: GitHubServer) -> None:
    data = random.Random(1).randbytes(5 * CHUNK_SIZE + 123)
    github.add_release(OWNER, REPO, "v1.0.0", {ARTIFACT: data})
    writes: list[int] = []

    class Recorder(io.BytesIO):
        def write(self, chunk) -> int:
            writes.append(len(chunk))
            return super().write(chunk)

    assert download(current().artifact_url, Recorder()) == data
    assert len(writes) > 1 and max(writes) <= CHUNK_SIZE  # streamed, never one whole-body write
    api, storage = [r for r in github.requests if "/assets/" in r.path or r.path.startswith("/storage/")]
    assert (api.status, api.headers["authorization"]) == (302, f"Bearer {TOKEN}")
    assert storage.status == 200 and "authorization" not in storage.headers


def test_grpc_tag_form_url_downloads(github: GitHubServer) -> None:
    github.add_release(OWNER, REPO, "v1.0.0+blue", {"my app.tar.gz": b"bytes"})
    assert download(f"ghr://{OWNER}/{REPO}/tag/v1.0.0+blue/my%20app.tar.gz") == b"bytes"
    with pytest.raises(ArtifactError, match="has no asset 'missing.tgz'"):
        download(f"ghr://{OWNER}/{REPO}/tag/v1.0.0+blue/missing.tgz")
    with pytest.raises(ArtifactError, match="HTTP 404"):
        download(f"ghr://{OWNER}/{REPO}/tag/v7.0.0/x.tgz")


def test_token_never_appears_in_errors_or_logs(github: GitHubServer, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dewy")
    release(github, "v1.0.0")
    errors: list[Exception] = []

    def failure(action) -> None:
        with pytest.raises((RegistryError, ArtifactError)) as caught:
            action()
        errors.append(caught.value)

    failure(lambda: current(repo="acme/nope"))
    github.fail_next(500)
    failure(current)
    failure(lambda: download(f"ghr://{OWNER}/{REPO}/tag/v1.0.0/{ARTIFACT}?asset=999"))
    github.token = "a-different-token"
    failure(current)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv("GITHUB_API_URL", f"http://127.0.0.1:{unused.getsockname()[1]}")
        failure(current)
    assert "Bad credentials" in str(errors[3]) and "GITHUB_TOKEN" in str(errors[3])
    assert "does not exist, or the token lacks access" in str(errors[0])
    assert "ConnectError" in str(errors[4])
    assert any("authorization" in r.headers for r in github.requests)
    for text in [str(e) for e in errors] + [r.getMessage() + str(r.__dict__) for r in caplog.records]:
        assert TOKEN not in text


def test_primary_rate_limit_gives_retry_after_until_reset(github: GitHubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    release(github, "v1.0.0")
    github.rate_limit_remaining = 0
    github.rate_limit_reset = int(time.time()) + 120
    with pytest.raises(RateLimited) as limited:
        current()
    assert 100 <= limited.value.retry_after <= 121
    assert isinstance(limited.value, RegistryError)
    assert re.fullmatch(r"GitHub API rate limit exceeded; retrying after \d+ s", str(limited.value))
    use(monkeypatch, github, token=None)
    with pytest.raises(RateLimited, match=r"retrying after \d+ s \(set GITHUB_TOKEN for a higher limit\)$"):
        current()


def test_secondary_rate_limit_honours_retry_after(github: GitHubServer) -> None:
    release(github, "v1.0.0")
    github.fail_next(429, retry_after=7)
    with pytest.raises(RateLimited) as limited:
        current()
    assert limited.value.retry_after == 7
    github.fail_next(403, retry_after=30)
    with pytest.raises(ArtifactError) as during_download:  # the daemon reads retry_after from any DewyError
        download(current().artifact_url)
    assert getattr(during_download.value, "retry_after", None) == 30


def test_server_error_names_url_status_and_message(github: GitHubServer) -> None:
    release(github, "v1.0.0")
    github.fail_next(500)
    with pytest.raises(RegistryError) as failed:
        current()
    assert str(failed.value) == f"GitHub GET {github.url}/repos/{OWNER}/{REPO}/releases?per_page=100: HTTP 500 Server Error"
    assert current().tag == "v1.0.0"


def test_report_uploads_the_audit_asset(github: GitHubServer) -> None:
    release(github, "v1.0.0")

    async def run() -> None:
        backend = registry()
        try:
            deployed = await backend.current()
            await backend.report(deployed, "server")
            asked = len(github.requests)
            await backend.report(deployed, "server", error="app did not start")
            assert len(github.requests) == asked  # GitHub has no place for failures
        finally:
            await backend.aclose()

    asyncio.run(run())
    host = socket.gethostname()
    audit = [a for a in github.release(OWNER, REPO, "v1.0.0").assets if a.name != ARTIFACT]
    assert len(audit) == 1
    assert re.fullmatch(rf"shipped_to_{re.escape(host)}_server_at_\d{{8}}T\d{{6}}\.\d{{9}}Z\.txt", audit[0].name)
    assert audit[0].data.decode() == shipped_text(host, "server", audit[0].name)
    assert audit[0].content_type == "text/plain"
    assert current().artifact_name == ARTIFACT  # the audit record is never mistaken for the artifact


def test_enterprise_base_url_with_path_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    with GitHubServer(token=TOKEN, prefix="/api/v3") as server:
        use(monkeypatch, server)
        assert server.url.endswith("/api/v3")
        release(server, "v1.0.0")

        async def run() -> Release:
            backend = registry()
            try:
                deployed = await backend.current()
                await backend.report(deployed, "assets")
                return deployed
            finally:
                await backend.aclose()

        assert download(asyncio.run(run()).artifact_url) == b"v1.0.0"
        assert download(f"ghr://{OWNER}/{REPO}/tag/v1.0.0/{ARTIFACT}") == b"v1.0.0"
        assert [r.path.split("?")[0] for r in server.requests if r.method == "POST"] == [
            f"/api/uploads/repos/{OWNER}/{REPO}/releases/{server.release(OWNER, REPO, 'v1.0.0').id}/assets"]
        assert all(r.path.startswith(("/api/", "/storage/")) for r in server.requests)


def test_gh_token_is_used_when_github_token_is_unset(github: GitHubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    release(github, "v1.0.0")
    monkeypatch.delenv("GITHUB_TOKEN")
    monkeypatch.setenv("GH_TOKEN", TOKEN)
    current()
    assert github.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"


def test_gh_token_wins_over_github_token_as_upstream(github: GitHubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """In GitHub Actions GITHUB_TOKEN is the workflow's own token; GH_TOKEN is the one an operator sets on purpose."""
    release(github, "v1.0.0")
    monkeypatch.setenv("GITHUB_TOKEN", "the-workflows-token")
    monkeypatch.setenv("GH_TOKEN", TOKEN)
    current()
    assert github.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("url", [
    "ghr://acme", "ghr://acme/app/extra", "ghr:///app", "ghr://acme/app?artifcat=x", "ghr://acme/app?pre-release=maybe",
])
def test_bad_registry_urls_fail_with_one_line(url: str) -> None:
    with pytest.raises(UsageError) as bad:
        REGISTRIES.load(REGISTRIES.url(url))
    assert "\n" not in str(bad.value)


@pytest.mark.parametrize("url", ["ghr://acme/app", "ghr://acme/app/tag/v1.0.0", "ghr://acme/app/tags/v1/x", "ghr://a/b/tag/v1/x?asset=abc"])
def test_bad_artifact_urls_fail_with_one_line(url: str) -> None:
    with pytest.raises(UsageError):
        ARTIFACTS.load(ARTIFACTS.url(url))


def test_bad_api_url_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_API_URL", "github.example.com")
    with pytest.raises(UsageError, match="GITHUB_API_URL"):
        registry()


GOOD_ASSET = {"id": 1, "name": ARTIFACT, "state": "uploaded", "url": "http://x/asset/1"}
GOOD_RELEASE = {"id": 7, "tag_name": "v1.0.0", "draft": False, "prerelease": False,
                "published_at": "2026-01-01T00:00:00Z", "assets": [GOOD_ASSET]}


@pytest.mark.parametrize("body, problem", [
    ([1, 2], "releases[0] is a number, not an object"),
    (["v1.0.0"], "releases[0] is a string, not an object"),
    ([{**GOOD_RELEASE, "assets": "app.tar.gz"}], "releases[0].assets is a string, not a list"),
    ([{**GOOD_RELEASE, "assets": None}], "releases[0].assets is null, not a list"),
    ([{**GOOD_RELEASE, "assets": [{**GOOD_ASSET, "name": 5}]}], "releases[0].assets[0].name is a number, not a string"),
    ([{**GOOD_RELEASE, "assets": [{"name": ARTIFACT, "state": "uploaded"}]}], "releases[0].assets[0].id is missing, not a number"),
    ([{**GOOD_RELEASE, "assets": [{**GOOD_ASSET, "id": True}]}], "releases[0].assets[0].id is a boolean, not a number"),
    ([{**GOOD_RELEASE, "assets": ["x"]}], "releases[0].assets[0] is a string, not an object"),
    ([{**GOOD_RELEASE, "published_at": 1767225600}], "releases[0].published_at is a number, not a string"),
    ([{**GOOD_RELEASE, "tag_name": None}], "releases[0].tag_name is null, not a string"),
    ([{**GOOD_RELEASE, "draft": "no"}], "releases[0].draft is a string, not a boolean"),
])
def test_release_list_of_the_wrong_shape_is_one_error_naming_the_field(monkeypatch: pytest.MonkeyPatch, body: object,
                                                                       problem: str) -> None:
    with FixedAnswer(body) as api:
        monkeypatch.setenv("GITHUB_API_URL", api.origin)
        with pytest.raises(RegistryError) as raised:
            current()
    message = str(raised.value)
    assert message == f"GitHub GET {api.origin}/repos/{OWNER}/{REPO}/releases: unexpected answer: {problem}"


def test_a_good_answer_of_the_same_server_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    with FixedAnswer([GOOD_RELEASE]) as api:
        monkeypatch.setenv("GITHUB_API_URL", api.origin)
        assert current().artifact_name == ARTIFACT


@pytest.mark.parametrize("name", ["../../../x/evil_" + ARTIFACT, "sub/" + ARTIFACT])
def test_asset_name_that_is_not_one_path_component_is_refused(github: GitHubServer, name: str) -> None:
    github.add_release(OWNER, REPO, "v1.0.0", {name: b"evil"})
    with pytest.raises(RegistryError) as raised:
        current()
    assert str(raised.value) == (f"ghr://{OWNER}/{REPO}: release v1.0.0: the asset name {name!r} holds a / (a file name"
                                 " is one path component); nothing deployed")


def test_a_trickling_api_cannot_hold_a_poll_past_its_total_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(github_module, "REQUEST_DEADLINE", 0.5)
    with Trickle(content_type="application/json") as api:
        monkeypatch.setenv("GITHUB_API_URL", api.origin)
        started = time.monotonic()
        with pytest.raises(RegistryError) as raised:
            asyncio.run(asyncio.wait_for(registry().current(), 5))
    assert time.monotonic() - started < 3
    assert str(raised.value) == (f"GitHub GET {api.origin}/repos/{OWNER}/{REPO}/releases?per_page=100: no complete answer"
                                 " within 0.5 s (the server stalls or trickles); dewy retries")


def test_a_trickling_download_is_abandoned_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadline_module, "DOWNLOAD_FLOOR", 0.5)
    with Trickle() as api:
        monkeypatch.setenv("GITHUB_API_URL", api.origin)
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        artifact = ARTIFACTS.load(ARTIFACTS.url(f"ghr://{OWNER}/{REPO}/tag/v1.0.0/{ARTIFACT}?asset=1"))
        started = time.monotonic()
        with pytest.raises(ArtifactError) as raised:
            asyncio.run(asyncio.wait_for(artifact.download(io.BytesIO()), 5))
    assert time.monotonic() - started < 3
    message = str(raised.value)
    assert message.startswith(f"GitHub GET {api.origin}/repos/{OWNER}/{REPO}/releases/assets/1: the download stalled (")
    assert message.endswith("under 256 KiB/s after the first 0.5 s); dewy retries") and TOKEN not in message


def test_download_deadline_grows_with_the_bytes_received(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deadline_module, "DOWNLOAD_FLOOR", 0.3)
    monkeypatch.setattr(deadline_module, "MIN_DOWNLOAD_RATE", 25)  # bytes/s; the server sends 50 a second, for a second
    with Trickle(size=50, pause=0.02) as api:
        monkeypatch.setenv("GITHUB_API_URL", api.origin)
        out = io.BytesIO()
        artifact = ARTIFACTS.load(ARTIFACTS.url(f"ghr://{OWNER}/{REPO}/tag/v1.0.0/{ARTIFACT}?asset=1"))
        asyncio.run(asyncio.wait_for(artifact.download(out), 5))
    assert out.getvalue() == b" " * 50, "slow but steady: longer than the floor, within floor + bytes / rate"


def test_absurd_retry_after_is_bounded(github: GitHubServer) -> None:
    for header, expected in (("1e400", 60.0), ("nan", 60.0), ("99999999", 3600.0), ("-5", 1.0)):
        assert http.retry_after(httpx.Headers({"Retry-After": header})) == expected
