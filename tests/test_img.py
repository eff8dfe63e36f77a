"""img:// registry against a real docker-registry, and a token-auth/paging front door for what it lacks."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dewy.errors import RegistryError, UsageError
from dewy.registry import REGISTRIES, Release
from dewy.registry import img
from dewy.http import RATE_LIMIT_WAIT, RateLimited, Session
from dewy.http.bearer import parse_challenges
from dewy.registry.img import ImageRegistry
from tests.harness import free_port
from tests.oci_registry import OciRegistry, RegistryFront, digest_of

REPO = "acme/app"
USER, PASSWORD = "deployer", "s3cr3t-Registry-Pa55word"


@pytest.fixture(autouse=True)
def no_host_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Nothing from the machine's own auth files or environment: HOME is an empty directory."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", img.USERNAME_ENV, img.PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[OciRegistry]:
    with OciRegistry(tmp_path) as running:
        yield running


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[OciRegistry]:
    with OciRegistry(tmp_path, users={USER: PASSWORD}) as running:
        yield running


def backend(url: str, **options) -> ImageRegistry:
    return REGISTRIES.load(REGISTRIES.url(url), **options)


def current(url: str, **options) -> Release:
    async def run() -> Release:
        registry = backend(url, **options)
        try:
            return await registry.current()
        finally:
            await registry.aclose()
    return asyncio.run(run())


def polls(url: str, count: int) -> list[Release]:
    """``count`` polls by one registry object (as the daemon does), so tokens and ETags carry over."""
    async def run() -> list[Release]:
        registry = backend(url)
        try:
            return [await registry.current() for _ in range(count)]
        finally:
            await registry.aclose()
    return asyncio.run(run())


def failure(url: str, **options) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        current(url, **options)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("img://"), message
    return caught.value


def write_auth(path: Path, key: str, user: str = USER, password: str = PASSWORD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {key: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}))
    return path


# -- tags, versions and digests against the real registry ---------------------------------

def test_newest_semver_tag_with_its_manifest_digest(registry: OciRegistry) -> None:
    tags = [f"v1.{minor}.{patch}" for minor in range(12) for patch in range(10)] + ["v1.12.0"]
    random.Random(5).shuffle(tags)
    images = registry.push_tags(REPO, tags + ["latest", "main", "sha-0123abc", "1.2", "v9.9.9.9", "v13.0.0-rc.1"])
    assert len(registry.tags(REPO)) == 127

    release = current(f"img://{registry.host}/{REPO}")

    assert release.tag == "v1.12.0" and str(release.version) == "1.12.0"
    assert release.id == images["v1.12.0"].digest == digest_of(images["v1.12.0"].manifest)
    assert release.artifact_name == f"{registry.host}/{REPO}:v1.12.0"
    assert release.artifact_url == f"img://{registry.host}/{REPO}@{release.id}"
    assert release.created_at is None and release.checksums_url is None


def test_docker_v2_manifest_digest(registry: OciRegistry) -> None:
    image = registry.push_image(REPO, ["v2.0.0"], docker=True)
    assert current(f"img://{registry.host}/{REPO}").id == image.digest


def test_digest_from_the_manifest_body_when_the_registry_sends_no_digest_header(registry: OciRegistry) -> None:
    image = registry.push_image(REPO, ["v1.0.0"])
    with RegistryFront(registry, digest_header=False) as front:
        release = current(f"img://{front.host}/{REPO}")
        assert [r.method for r in front.requests if "/manifests/" in r.path] == ["HEAD", "GET"]
    assert release.id == image.digest


def test_pre_releases_only_with_the_flag(registry: OciRegistry) -> None:
    registry.push_tags(REPO, ["v1.0.0", "v1.1.0-rc.1", "v1.1.0-rc.2"])
    url = f"img://{registry.host}/{REPO}"
    assert current(url).tag == "v1.0.0"
    assert current(url + "?pre-release=true").tag == "v1.1.0-rc.2"
    registry.push_tags(REPO, ["v1.1.0"])
    assert current(url + "?pre-release=true").tag == "v1.1.0"  # the final release outranks its candidates


def test_non_semver_tags_only_is_one_clear_error(registry: OciRegistry) -> None:
    registry.push_tags(REPO, ["latest", "main", "sha-0123abc", "v2.0.0-beta"])
    error = failure(f"img://{registry.host}/{REPO}")
    assert str(error) == (f"img://{registry.host}/{REPO}: no eligible tag among 4 "
                          "(non-semver tags and pre-releases (add pre-release=true) are skipped)")


def test_slot_is_the_tag_suffix_after_underscore(registry: OciRegistry) -> None:
    # Image tags cannot contain "+": v1.1.0_blue is 1.1.0+blue, as Helm writes chart versions in OCI registries.
    registry.push_tags(REPO, ["v1.0.0_blue", "v1.1.0_blue", "v1.2.0_green", "v1.3.0"])
    url = f"img://{registry.host}/{REPO}"
    blue = current(url, slot="blue")
    assert blue.tag == "v1.1.0_blue" and blue.version.build == "blue"
    assert blue.artifact_name.endswith(":v1.1.0_blue")
    assert current(url, slot="green").tag == "v1.2.0_green"
    assert current(url).tag == "v1.3.0"  # without a slot, build metadata is ignored
    assert "for slot 'red'" in str(failure(url, slot="red"))


def test_deleting_the_newest_tag_converges_to_the_previous(registry: OciRegistry) -> None:
    images = registry.push_tags(REPO, ["v1.0.0", "v1.1.0"])
    url = f"img://{registry.host}/{REPO}"
    assert current(url).id == images["v1.1.0"].digest
    registry.delete(REPO, "v1.1.0")
    assert current(url).id == images["v1.0.0"].digest


def test_a_release_by_tag_is_any_tag_with_its_digest_under_the_version_rules(registry: OciRegistry) -> None:
    images = registry.push_tags(REPO, ["v1.0.0", "v1.1.0", "v1.2.0_blue", "latest"])
    url = f"img://{registry.host}/{REPO}"

    async def lookups() -> list[Release | str]:
        answers: list[Release | str] = []
        for tag, slot in (("1.0.0", None), ("v1.2.0_blue", "blue"), ("v1.9.0", None), ("latest", None)):
            image = backend(url, slot=slot)
            try:
                answers.append(await image.release(tag))
            except RegistryError as exc:
                answers.append(str(exc))
            finally:
                await image.aclose()
        return answers

    older, blue, missing, latest = asyncio.run(lookups())
    assert (older.tag, older.id, older.artifact_name) == ("v1.0.0", images["v1.0.0"].digest, f"{registry.host}/{REPO}:v1.0.0")
    assert older.artifact_url == f"img://{registry.host}/{REPO}@{images['v1.0.0'].digest}"
    assert (blue.tag, blue.version.build) == ("v1.2.0_blue", "blue")
    assert missing == f"img://{registry.host}/{REPO} has no release v1.9.0"
    assert latest == (f"img://{registry.host}/{REPO}: latest is not deployed from this registry: "
                      "it is not a semantic version (like v1.2.3)")


def test_report_does_nothing(registry: OciRegistry) -> None:
    registry.push_tags(REPO, ["v1.0.0"])

    async def run() -> None:
        reg = backend(f"img://{registry.host}/{REPO}")
        release = await reg.current()
        await reg.report(release, "container")
        await reg.report(release, "container", error="health check failed")
        await reg.aclose()
    asyncio.run(run())
    assert registry.tags(REPO) == ["v1.0.0"]


# -- pagination and conditional polls ------------------------------------------------------

def test_pagination_follows_link_next_across_pages(registry: OciRegistry) -> None:
    tags = [f"v1.0.{i}" for i in range(117)] + ["v1.7.0", "latest"]
    registry.push_tags(REPO, tags)
    with RegistryFront(registry, page_size=20) as front:
        release = current(f"img://{front.host}/{REPO}")
        pages = [r for r in front.requests if "/tags/list" in r.path]
    assert release.tag == "v1.7.0"
    assert len(pages) == 6  # 119 tags, 20 a page
    assert pages[0].path == f"/v2/{REPO}/tags/list?n={img.PAGE_SIZE}"
    assert pages[1].path.startswith(f"/v2/{REPO}/tags/list?n=20&last=")
    assert all(p.status == 200 for p in pages)


def test_pagination_link_to_another_host_is_refused(registry: OciRegistry) -> None:
    registry.push_tags(REPO, ["v1.0.0"])
    with RegistryFront(registry) as front:
        front.fail_next(200, headers={"Link": f'<http://198.51.100.7/v2/{REPO}/tags/list?n=5&last=a>; rel="next"'},
                        body=json.dumps({"name": REPO, "tags": ["v1.0.0"]}))
        error = failure(f"img://{front.host}/{REPO}")
    assert "next page link http://198.51.100.7/v2/" in str(error) and "leaves the registry" in str(error)


def test_etag_makes_repeat_polls_conditional(registry: OciRegistry) -> None:
    registry.push_tags(REPO, [f"v1.0.{i}" for i in range(30)])
    with RegistryFront(registry, page_size=20, etags=True) as front:
        first, second = polls(f"img://{front.host}/{REPO}", 2)
        pages = [r for r in front.requests if "/tags/list" in r.path]
    assert first == second and first.tag == "v1.0.29"
    assert [p.status for p in pages] == [200, 200, 304, 304]
    assert "if-none-match" not in pages[0].headers and pages[2].headers["if-none-match"].startswith('"')


# -- authentication ----------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "containers", "docker", "env"])
def test_basic_auth_from_each_credential_source(private_registry: OciRegistry, monkeypatch: pytest.MonkeyPatch,
                                                no_host_credentials: Path, tmp_path: Path, source: str) -> None:
    image = private_registry.push_image(REPO, ["v3.1.4"])
    host = private_registry.host
    if source == "REGISTRY_AUTH_FILE":
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(write_auth(tmp_path / "auth.json", host)))
    elif source == "XDG_RUNTIME_DIR":
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
        write_auth(tmp_path / "run" / "containers" / "auth.json", host)
    elif source == "containers":
        write_auth(no_host_credentials / ".config" / "containers" / "auth.json", f"{host}/{REPO}")  # repository key
    elif source == "docker":
        write_auth(no_host_credentials / ".docker" / "config.json", f"http://{host}/v1/")
    else:
        monkeypatch.setenv(img.USERNAME_ENV, USER)
        monkeypatch.setenv(img.PASSWORD_ENV, PASSWORD)
    assert current(f"img://{host}/{REPO}").id == image.digest


def test_basic_auth_without_credentials_names_where_it_looked(private_registry: OciRegistry, tmp_path: Path,
                                                              no_host_credentials: Path) -> None:
    private_registry.push_image(REPO, ["v1.0.0"])
    write_auth(no_host_credentials / ".docker" / "config.json", "other.example.com")
    message = str(failure(f"img://{private_registry.host}/{REPO}"))
    assert f"{private_registry.host} requires credentials; none found for {private_registry.host}" in message
    assert str(no_host_credentials / ".docker" / "config.json") in message and img.USERNAME_ENV in message
    assert str(no_host_credentials / ".config" / "containers" / "auth.json") + " (missing)" in message


def test_bad_basic_credentials_name_the_auth_file_never_the_password(
        private_registry: OciRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    private_registry.push_image(REPO, ["v1.0.0"])
    wrong = "wr0ng-Pa55word-NeverShown"
    auth_file = write_auth(tmp_path / "auth.json", private_registry.host, password=wrong)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    caplog.set_level(logging.DEBUG, logger="dewy")
    message = str(failure(f"img://{private_registry.host}/{REPO}"))
    assert "HTTP 401" in message
    assert f"the registry rejected the credentials for {private_registry.host} from REGISTRY_AUTH_FILE={auth_file}" in message
    assert wrong not in message and wrong not in caplog.text
    assert base64.b64encode(f"{USER}:{wrong}".encode()).decode() not in message + caplog.text


def test_bearer_token_anonymous_first_then_cached_then_renewed(registry: OciRegistry, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    image = registry.push_image(REPO, ["v1.0.0"])
    with RegistryFront(registry, token_auth=True, users={USER: PASSWORD}) as front:
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(write_auth(tmp_path / "auth.json", front.host)))

        async def run() -> list[Release]:
            reg = backend(f"img://{front.host}/{REPO}")
            try:
                releases = [await reg.current(), await reg.current()]
                front.revoke_tokens()  # as when a token expires early or the server restarts
                releases.append(await reg.current())
                return releases
            finally:
                await reg.aclose()
        releases = asyncio.run(run())
        requests, tokens = list(front.requests), list(front.token_requests)

    assert {r.id for r in releases} == {image.digest}
    assert "authorization" not in requests[0].headers and requests[0].status == 401  # anonymous first
    assert len(tokens) == 2  # one token for two polls, a new one after the revocation
    token_request = tokens[0]
    assert token_request.path.startswith("/token?") and f"scope=repository%3A{REPO.replace('/', '%2F')}%3Apull" in token_request.path
    assert f"service={RegistryFront.SERVICE}" in token_request.path and f"account={USER}" in token_request.path
    assert token_request.headers["authorization"] == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authorized = [r for r in requests if r.status == 200]
    assert authorized and all(r.headers["authorization"].startswith("Bearer ") for r in authorized)
    assert [r.status for r in requests].count(401) == 2  # the first request and the one after the revocation


def test_bearer_token_anonymous_pull(registry: OciRegistry) -> None:
    image = registry.push_image(REPO, ["v1.0.0"])
    with RegistryFront(registry, token_auth=True) as front:
        assert current(f"img://{front.host}/{REPO}").id == image.digest
        assert "authorization" not in front.token_requests[0].headers


def test_bearer_bad_credentials_name_the_auth_file_never_the_password(
        registry: OciRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry.push_image(REPO, ["v1.0.0"])
    wrong = "wr0ng-Bearer-Pa55word"
    with RegistryFront(registry, token_auth=True, users={USER: PASSWORD}) as front:
        auth_file = write_auth(tmp_path / "home" / ".docker" / "config.json", front.host, password=wrong)
        caplog.set_level(logging.DEBUG, logger="dewy")
        message = str(failure(f"img://{front.host}/{REPO}"))
    assert message.startswith(f"img://{front.host}/{REPO}: token from {front.realm}: HTTP 401")
    assert f"the registry rejected the credentials for {front.host} from {auth_file}" in message
    assert wrong not in message and wrong not in caplog.text


def test_bearer_without_credentials_when_the_token_server_wants_them(registry: OciRegistry) -> None:
    registry.push_image(REPO, ["v1.0.0"])
    with RegistryFront(registry, token_auth=True, users={USER: PASSWORD}) as front:
        message = str(failure(f"img://{front.host}/{REPO}"))
    assert "HTTP 401" in message and "requires credentials; none found" in message


def test_credentials_for_the_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    auth_file = write_auth(tmp_path / "auth.json", "registry.example.com/acme")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    credentials = backend("img://registry.example.com/acme/app").credentials()
    assert credentials is not None and (credentials.username, credentials.password) == (USER, PASSWORD)
    assert credentials.source == f"REGISTRY_AUTH_FILE={auth_file}" and PASSWORD not in repr(credentials)
    assert backend("img://registry.example.com/other/app").credentials() is None


def test_most_specific_auth_entry_wins_and_docker_hub_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.json"
    entry = lambda user: {"auth": base64.b64encode(f"{user}:pw".encode()).decode()}  # noqa: E731
    auth_file.write_text(json.dumps({"auths": {
        "quay.example.com": entry("host"), "quay.example.com/acme": entry("namespace"),
        "quay.example.com/acme/app": entry("repository"), "https://index.docker.io/v1/": entry("hub"),
    }}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    user_of = lambda url: backend(url).credentials().username  # noqa: E731
    assert user_of("img://quay.example.com/acme/app") == "repository"
    assert user_of("img://quay.example.com/acme/tool") == "namespace"
    assert user_of("img://quay.example.com/other/app") == "host"
    assert user_of("img://docker.io/nginx") == "hub"


def test_environment_credentials_must_come_in_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(img.USERNAME_ENV, USER)
    with pytest.raises(UsageError, match=f"{img.USERNAME_ENV} is set but {img.PASSWORD_ENV} is not"):
        backend("img://ghcr.io/acme/app")


# -- the token realm guard -----------------------------------------------------------------

@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Names resolve from this table; nothing reaches a real resolver."""
    table = {"registry.example.com": "93.184.216.34", "auth.example.com": "93.184.216.35",
             "sneaky.example.com": "10.1.2.3", "registry.lan": "192.168.1.10", "auth.lan": "192.168.1.11"}

    async def addresses(host: str) -> list:
        literal = img._ip(host)
        if literal is not None:
            return [literal]
        if host not in table:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return [ipaddress.ip_address(table[host])]
    monkeypatch.setattr(img, "_addresses", addresses)
    return table


def challenged(url: str, challenge: str, token_server: Callable[[httpx.Request], httpx.Response] | None = None,
               ) -> ImageRegistry:
    """A backend whose registry answers every request with 401 and ``challenge``; its token server is ``token_server``."""
    reg = backend(url)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v2/"):
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        assert token_server is not None, f"no token request expected: {request.url}"
        return token_server(request)
    reg.http = Session(auth=reg.auth, transport=httpx.MockTransport(answer))
    return reg


def authorize(url: str, challenge: str) -> None:
    """Poll a registry that answers ``challenge``: the token flow's checks raise before any token request."""
    async def run() -> None:
        reg = challenged(url, challenge)
        try:
            await reg.current()
        finally:
            await reg.aclose()
    asyncio.run(run())


@pytest.mark.parametrize("realm, why", [
    ("https://127.0.0.1:5001/token", "(127.0.0.1)"),
    ("https://localhost/token", "(localhost)"),
    ("https://169.254.169.254/latest/meta-data", "(169.254.169.254)"),
    ("https://[::1]/token", "(::1)"),
    ("https://[::ffff:10.0.0.1]/token", "(10.0.0.1)"),
    ("https://sneaky.example.com/token", "(10.1.2.3)"),
])
def test_token_realm_on_an_internal_address_is_refused_for_a_public_registry(fake_dns: dict, realm: str, why: str) -> None:
    with pytest.raises(RegistryError) as caught:
        authorize("img://registry.example.com/acme/app", f'Bearer realm="{realm}",service="registry.example.com"')
    assert str(caught.value).startswith(f"img://registry.example.com/acme/app: refusing token realm {realm}: ")
    assert why in str(caught.value) and "and the registry registry.example.com is not" in str(caught.value)


def test_token_realm_over_plain_http_is_refused_for_an_https_registry(fake_dns: dict) -> None:
    with pytest.raises(RegistryError, match="refusing token realm http://auth.example.com/token: plain HTTP"):
        authorize("img://registry.example.com/acme/app", 'Bearer realm="http://auth.example.com/token"')


def test_token_realm_checks_that_pass(fake_dns: dict) -> None:
    async def check(url: str, realm: str) -> None:
        reg = backend(url)
        await reg.check_realm(realm)
        await reg.aclose()
    asyncio.run(check("img://registry.example.com/acme/app", "https://auth.example.com/token"))  # public -> public
    asyncio.run(check("img://registry.lan/acme/app", "https://auth.lan/token"))  # a LAN registry's own token server
    asyncio.run(check("img://127.0.0.1:5000/acme/app", "http://127.0.0.1:5001/token"))


def test_challenges_are_parsed_like_the_spec_examples() -> None:
    parsed = parse_challenges(['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                               'scope="repository:samalba/my-app:pull,push"', 'Basic realm="Registry Realm"'])
    assert parsed == [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                                  "scope": "repository:samalba/my-app:pull,push"}),
                      ("basic", {"realm": "Registry Realm"})]
    assert parse_challenges(['Basic realm="x", Bearer realm="https://a/t",service=s']) == [
        ("basic", {"realm": "x"}), ("bearer", {"realm": "https://a/t", "service": "s"})]


# -- failures -----------------------------------------------------------------------------------

def test_repository_not_found(registry: OciRegistry) -> None:
    registry.push_image(REPO, ["v1.0.0"])
    message = str(failure(f"img://{registry.host}/acme/nope"))
    assert message == (f"img://{registry.host}/acme/nope: GET http://{registry.host}/v2/acme/nope/tags/list?n="
                       f"{img.PAGE_SIZE}: HTTP 404 Not Found (NAME_UNKNOWN: repository name not known to registry): "
                       f"repository acme/nope not found on {registry.host} (or it is private and needs credentials)")


def test_rate_limit_carries_retry_after(registry: OciRegistry) -> None:
    registry.push_image(REPO, ["v1.0.0"])
    with RegistryFront(registry) as front:
        front.fail_next(429, headers={"Retry-After": "42"},
                        body=json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}))
        error = failure(f"img://{front.host}/{REPO}")
        assert current(f"img://{front.host}/{REPO}").tag == "v1.0.0"  # the next poll works
    assert isinstance(error, RateLimited) and error.retry_after == 42
    assert "HTTP 429 Too Many Requests (TOOMANYREQUESTS: slow down): rate limited; retrying after 42 s" in str(error)


def test_rate_limit_without_retry_after_waits_a_minute(registry: OciRegistry) -> None:
    registry.push_image(REPO, ["v1.0.0"])
    with RegistryFront(registry) as front:
        front.fail_next(429)
        error = failure(f"img://{front.host}/{REPO}")
    assert isinstance(error, RateLimited) and error.retry_after == RATE_LIMIT_WAIT


@pytest.mark.parametrize("status, reason", [(500, "Internal Server Error"), (503, "Service Unavailable")])
def test_server_errors(registry: OciRegistry, status: int, reason: str) -> None:
    registry.push_image(REPO, ["v1.0.0"])
    with RegistryFront(registry) as front:
        front.fail_next(status, body="<html>\n<h1>oops</h1>\n</html>")
        message = str(failure(f"img://{front.host}/{REPO}"))
    assert message == f"img://{front.host}/{REPO}: GET http://{front.host}/v2/{REPO}/tags/list?n={img.PAGE_SIZE}: HTTP {status} {reason}"


def test_server_error_on_the_manifest(registry: OciRegistry) -> None:
    registry.push_image(REPO, ["v1.0.0"])
    with RegistryFront(registry) as front:
        front.fail_next(200, body=json.dumps({"name": REPO, "tags": ["v1.0.0"]}))
        front.fail_next(502)
        message = str(failure(f"img://{front.host}/{REPO}"))
    assert message == f"img://{front.host}/{REPO}: HEAD http://{front.host}/v2/{REPO}/manifests/v1.0.0: HTTP 502 Bad Gateway"


@pytest.mark.parametrize("body, says", [
    ("<html>not a registry</html>", "the answer is not JSON"),
    ('{"repositories": []}', "the answer is not a tags list"),
    ('{"name": "acme/app", "tags": "v1.0.0"}', "the answer is not a tags list"),
])
def test_malformed_answers(registry: OciRegistry, body: str, says: str) -> None:
    with RegistryFront(registry) as front:
        front.fail_next(200, body=body)
        message = str(failure(f"img://{front.host}/{REPO}"))
    assert message.startswith(f"img://{front.host}/{REPO}: GET http://{front.host}/v2/{REPO}/tags/list") and says in message


def test_network_failure_is_one_line() -> None:
    port = free_port()  # nothing listens there
    message = str(failure(f"img://127.0.0.1:{port}/{REPO}"))
    assert message.startswith(f"img://127.0.0.1:{port}/{REPO}: GET http://127.0.0.1:{port}/v2/{REPO}/tags/list")
    assert "ConnectError" in message


def test_empty_repository(registry: OciRegistry) -> None:
    with RegistryFront(registry) as front:
        front.fail_next(200, body=json.dumps({"name": REPO, "tags": None}))
        assert "no eligible tag among 0" in str(failure(f"img://{front.host}/{REPO}"))


# -- URLs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, base, repository, reference", [
    ("img://docker.io/nginx", "https://registry-1.docker.io", "library/nginx", "docker.io/library/nginx"),
    ("img://docker.io/library/nginx", "https://registry-1.docker.io", "library/nginx", "docker.io/library/nginx"),
    ("img://docker.io/acme/app", "https://registry-1.docker.io", "acme/app", "docker.io/acme/app"),
    ("img://index.docker.io/acme/app", "https://registry-1.docker.io", "acme/app", "docker.io/acme/app"),
    ("img://registry-1.docker.io/redis", "https://registry-1.docker.io", "library/redis", "docker.io/library/redis"),
    ("img://ghcr.io/acme/app/api", "https://ghcr.io", "acme/app/api", "ghcr.io/acme/app/api"),
    ("img://registry.lan:5000/app", "https://registry.lan:5000", "app", "registry.lan:5000/app"),
    ("img://registry.lan:5000/app?insecure=true", "http://registry.lan:5000", "app", "registry.lan:5000/app"),
    ("img://localhost:5000/app", "http://localhost:5000", "app", "localhost:5000/app"),
    ("img://127.0.0.1:5000/app", "http://127.0.0.1:5000", "app", "127.0.0.1:5000/app"),
    ("img://[::1]:5000/app", "http://[::1]:5000", "app", "[::1]:5000/app"),
    ("img://localhost:5443/app?insecure=false", "https://localhost:5443", "app", "localhost:5443/app"),
])
def test_urls(url: str, base: str, repository: str, reference: str) -> None:
    reg = backend(url)
    assert (reg.base, reg.repository, reg.reference) == (base, repository, reference)
    assert reg.plain_http == base.startswith("http://")


@pytest.mark.parametrize("url, says", [
    ("img://user:pw@ghcr.io/acme/app", "credentials do not go in the URL"),
    ("img://ghcr.io/acme/app:v1.0.0", "without a tag or digest"),
    ("img://ghcr.io/acme/app@sha256:abc", "without a tag or digest"),
    ("img://ghcr.io/Acme/App", "is not a repository name"),
    ("img://ghcr.io", "is not a repository name"),
    ("img://ghcr.io/acme//app", "is not a repository name"),
    ("img://ghcr.io/acme/app?prerelease=true", "unknown query key 'prerelease'; did you mean 'pre-release'?"),
    ("img://ghcr.io/acme/app?insecure=maybe", "is not a boolean"),
])
def test_bad_urls(url: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        backend(url)
    assert says in str(caught.value) and "pw@" not in str(caught.value)


def test_docker_hub_release_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker Hub images are named docker.io/library/x:TAG for the runtime, asked at registry-1.docker.io."""
    async def head(self: ImageRegistry, tag: str) -> str:
        return "sha256:" + "a" * 64

    async def tags(self: ImageRegistry) -> list[str]:
        return ["1.25.3", "1.25.3-alpine", "latest", "1.24.0"]
    monkeypatch.setattr(ImageRegistry, "_digest", head)
    monkeypatch.setattr(ImageRegistry, "_tags", tags)
    release = current("img://docker.io/nginx")
    assert release.artifact_name == "docker.io/library/nginx:1.25.3"
    assert release.artifact_url == "img://docker.io/library/nginx@sha256:" + "a" * 64


def test_constructing_holds_no_connection() -> None:
    reg = backend("img://ghcr.io/acme/app")
    assert not reg.http.connected and isinstance(httpx.URL(reg.base), httpx.URL)


def test_the_token_request_goes_to_the_address_that_was_checked(fake_dns: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the realm's name resolves to a public address for the check, and to an internal one after."""
    seen: list[httpx.Request] = []

    def token_server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"token": "t0ken", "expires_in": 300})

    async def run() -> None:
        reg = challenged("img://registry.example.com/acme/app",
                         'Bearer realm="https://auth.example.com:8443/token",service="s"', token_server)
        fake_dns["auth.example.com"] = "93.184.216.35"
        checked = img._addresses

        async def rebinding(host: str) -> list:
            found = await checked(host)
            if host == "auth.example.com":
                fake_dns[host] = "127.0.0.1"  # the next lookup, by whoever does it, is internal
            return found

        monkeypatch.setattr(img, "_addresses", rebinding)
        try:
            with pytest.raises(RegistryError, match="HTTP 401"):  # the stand-in registry refuses even the token
                await reg.current()
        finally:
            await reg.aclose()

    asyncio.run(run())
    [request] = seen
    assert (request.url.host, request.url.port, request.url.path) == ("93.184.216.35", 8443, "/token")
    assert request.headers["host"] == "auth.example.com:8443"
    assert request.extensions["sni_hostname"] == "auth.example.com"
