"""End to end: a real ``dewy server`` process, a real HTTP app, a file:// registry, a client loop."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
import json
import re
import shutil
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import host_artifact, publish, tar_gz
from tests.github_server import GitHubServer
from tests.harness import APP, ClientLoop, Dewy, free_port, get


def release(registry: Path, tag: str, *knobs: str, **extra: bytes | str) -> Path:
    """Publish the test app as ``tag``; knobs are marker files (CRASH, UNHEALTHY) that make it misbehave."""
    files: dict[str, bytes | str] = {"app.py": APP.read_text(), "VERSION": tag, **{k: "" for k in knobs}, **extra}
    return publish(registry, tag, files, checksums=True)


def start(tmp_path: Path, port: int, *extra: str, registry: str | None = None, env: dict[str, str] | None = None) -> Dewy:
    return Dewy(
        ["server", "--registry", registry or (tmp_path / "registry").as_uri(), "-i", "0.2", "-p", f"127.0.0.1:{port}",
         "--settle-time", "0.3", "--health-path", "/health", "--health-timeout", "5", "--stop-timeout", "5",
         "-d", str(tmp_path / "app"), "-c", (tmp_path / "cache").as_uri(), *extra, "--", sys.executable, "current/app.py"],
        cwd=tmp_path, env=env,
    )


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def serving(tmp_path, port):
    """dewy serving v1.0.0 from a file:// registry at tmp_path/registry; killed after the test."""
    release(tmp_path / "registry", "v1.0.0")
    dewy = start(tmp_path, port)
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        yield dewy
    finally:
        dewy.kill()


class GitHubRegistry:
    """Releases published on the GitHub API test server, read by dewy through ghr://."""

    def __init__(self, server: GitHubServer) -> None:
        self.server = server
        self.url = "ghr://acme/app"
        self.env = {"GITHUB_API_URL": server.url, "GITHUB_TOKEN": "ghp_test_secret"}
        self.tags: list[str] = []

    def publish(self, tag: str) -> None:
        data = tar_gz({"app.py": APP.read_text(), "VERSION": tag})
        checksums = f"{hashlib.sha256(data).hexdigest()}  {host_artifact()}\n".encode()
        self.server.add_release("acme", "app", tag, {host_artifact(): data, "checksums.txt": checksums})
        self.tags.append(tag)

    def audit_records(self) -> list[str]:
        assets = (a.name for tag in self.tags for a in self.server.release("acme", "app", tag).assets)
        return [name for name in assets if name.startswith("shipped_to_")]


class DirectoryRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()
        self.env: dict[str, str] = {}

    def publish(self, tag: str) -> None:
        release(self.root, tag)

    def audit_records(self) -> list[str]:
        return [p.name for p in self.root.glob("*/shipped_to_*")]


@pytest.fixture(params=["file", "ghr"])
def registry(request, tmp_path):
    if request.param == "file":
        yield DirectoryRegistry(tmp_path / "registry")
        return
    with GitHubServer(token="ghp_test_secret") as server:
        yield GitHubRegistry(server)


def test_three_releases_under_load_zero_failed_requests(tmp_path, port, registry) -> None:
    registry.publish("v1.0.0")
    dewy = start(tmp_path, port, registry=registry.url, env=registry.env)
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        assert "v1.0.0" in get(port)[1]
        with ClientLoop(port) as client:
            for previous, tag in (("v1.0.0", "v1.1.0"), ("v1.1.0", "v1.2.0"), ("v1.2.0", "v1.3.0")):
                registry.publish(tag)
                dewy.wait_for("deployed", version=tag)
                dewy.wait_for("app-stopped", version=previous, already=True)  # drains after the deploy
                assert get(port)[1] == tag
        assert client.failures == []
        assert client.ok > 50
        # both generations answer while the new one proves ready; versions still appear in release order
        assert list(dict.fromkeys(client.bodies)) == ["v1.0.0", "v1.1.0", "v1.2.0", "v1.3.0"]
        records = registry.audit_records()
        assert len(records) == 4 and all(re.fullmatch(r"shipped_to_.+_server_at_\d{8}T\d{6}\.\d{9}Z\.txt", r) for r in records)
        assert "GITHUB_TOKEN" not in json.loads(get(port, "/env")[1])["env"], "dewy's secrets stay dewy's"
        assert dewy.stop() == 0
        assert not any("ghp_test_secret" in json.dumps(e) for e in dewy.seen)
    finally:
        dewy.kill()
    with pytest.raises(OSError):
        get(port, timeout=1)  # the app stopped with dewy


def test_keep_releases_1_keeps_the_release_the_old_generation_drains_from(tmp_path, port) -> None:
    release(tmp_path / "registry", "v1.0.0")
    dewy = start(tmp_path, port, "--keep-releases", "1")
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        old = (tmp_path / "app" / "current").resolve()
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(get, port, "/sleep?s=3")  # the old generation drains it after the restart
            release(tmp_path / "registry", "v1.1.0")
            dewy.wait_for("deployed", version="v1.1.0")
            assert not in_flight.done(), "the old generation is still draining"
            assert old.is_dir() and (old / "app.py").exists()
            assert in_flight.result(10) == (200, "slept")
        dewy.wait_for("app-stopped", version="v1.0.0", already=True)
    finally:
        dewy.kill()


def test_releases_pruned_to_seven(tmp_path, port, serving) -> None:
    registry, dewy = tmp_path / "registry", serving
    for minor in range(1, 10):
        tag = f"v1.{minor}.0"
        release(registry, tag)
        dewy.wait_for("deployed", version=tag)
    releases = sorted((tmp_path / "app" / "releases").iterdir())
    assert len(releases) == 7
    assert (tmp_path / "app" / "current").resolve() == releases[-1]
    assert list((tmp_path / "cache" / "artifacts").iterdir()) == [], "file:// artifacts are read where they lie"


def test_crashing_and_unhealthy_releases_roll_back_and_are_quarantined(tmp_path, port, serving) -> None:
    registry, dewy = tmp_path / "registry", serving
    with ClientLoop(port) as client:
        for bad, knob in (("v1.1.0", "CRASH"), ("v1.2.0", "UNHEALTHY")):
            release(registry, bad, knob)
            dewy.wait_for("rollback", version=bad)
            assert "v1.0.0" in get(port)[1]
            assert (tmp_path / "app" / "current" / "VERSION").read_text() == "v1.0.0"
            for _ in range(3):
                dewy.wait_for("quarantined", version=bad)
            assert not [e for e in dewy.seen if e.get("event") == "deploying" and e.get("version") == bad][1:], \
                "a quarantined version must not be retried"
        release(registry, "v1.3.0")
        dewy.wait_for("deployed", version="v1.3.0")
    assert client.failures == []
    dewy.wait_for("app-stopped", version="v1.0.0", already=True)
    assert get(port)[1] == "v1.3.0"
    # quarantine is persistent: a restarted dewy does not retry v1.2.0 after v1.3.0 disappears
    dewy.kill()
    shutil.rmtree(registry / "v1.3.0")
    dewy = start(tmp_path, port)
    try:
        dewy.wait_for("quarantined", version="v1.2.0")
    finally:
        dewy.kill()


def test_sigusr1_restarts_gracefully_and_sighup_is_ignored(port, serving) -> None:
    dewy = serving
    before = json.loads(get(port, "/env")[1])["pid"]
    with ClientLoop(port) as client:
        dewy.process.send_signal(signal.SIGHUP)
        dewy.wait_for("signal")
        dewy.process.send_signal(signal.SIGUSR1)
        dewy.wait_for("restarted")
        dewy.wait_for("app-stopped", generation=1, already=True)  # the old generation drains after the restart
    assert client.failures == []
    assert json.loads(get(port, "/env")[1])["pid"] != before
    assert dewy.process.poll() is None
    assert dewy.stop(signal.SIGQUIT) == 0


def test_bad_archive_and_checksum_keep_the_old_version(tmp_path, port, serving) -> None:
    registry, dewy = tmp_path / "registry", serving
    evil = release(registry, "v1.1.0")
    evil.write_bytes(evil.read_bytes()[:100])  # truncated after its checksum was published
    failure = dewy.wait_for("deploy-failed")
    assert "sha256 mismatch" in failure["msg"]
    (registry / "v1.1.0" / "checksums.txt").write_text(f"{hashlib.sha256(evil.read_bytes()).hexdigest()}  {evil.name}\n")
    failures = [dewy.wait_for("deploy-failed")["msg"]]
    while "sha256 mismatch" in failures[-1] and len(failures) < 4:  # retries that predate the new checksum
        failures.append(dewy.wait_for("deploy-failed")["msg"])
    assert "truncated or corrupt" in failures[-1], failures
    assert "v1.0.0" in get(port)[1]
    assert not any(p.name.startswith(".") for p in (tmp_path / "app" / "releases").iterdir())
