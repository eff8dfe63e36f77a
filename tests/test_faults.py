"""Faults around a real ``dewy server``: a stop during a slow download, a disk that fills up or turns read-only.
The app serves throughout (a client loop counts every failure), nothing partial is left, and dewy recovers by itself."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dewy.faults import DiskError
from dewy.state import State
from tests.conftest import host_artifact, tar_gz
from tests.github_server import CHUNK_SIZE, GitHubServer
from tests.harness import APP, ClientLoop, Dewy, free_port, get

CI_SECONDS = 60


def publish(server: GitHubServer, tag: str, payload: int = 0) -> None:
    """The test app as ``tag``, with ``payload`` incompressible bytes (a big download) beside it."""
    files = {"app.py": APP.read_text(), "VERSION": tag, "payload.bin": random.Random(tag).randbytes(payload)}
    data = tar_gz(files)
    checksums = f"{hashlib.sha256(data).hexdigest()}  {host_artifact()}\n".encode()
    server.add_release("acme", "app", tag, {host_artifact(): data, "checksums.txt": checksums})


def start(tmp_path: Path, server: GitHubServer, port: int, *, site: Path, cache: Path) -> Dewy:
    return Dewy(["server", "--registry", "ghr://acme/app", "-i", "0.2", "-p", f"127.0.0.1:{port}", "--settle-time", "0.3",
                 "--health-path", "/health", "--stop-timeout", "5", "-d", str(site), "-c", cache.as_uri(),
                 "--", sys.executable, "current/app.py"],
                cwd=tmp_path, env={"GITHUB_API_URL": server.url, "GITHUB_TOKEN": "ghp_test_secret"})


def leftovers(*directories: Path) -> list[str]:
    """Partial downloads (.tmp-*) and releases (.partial-*) anywhere under ``directories``."""
    return [str(p) for d in directories for p in d.rglob(".*") if p.name.startswith((".tmp-", ".partial-"))]


def test_sigterm_during_a_slow_download_stops_dewy_and_the_app_within_seconds(tmp_path) -> None:
    port = free_port()
    with GitHubServer(token="ghp_test_secret") as server:
        publish(server, "v1.0.0")
        dewy = start(tmp_path, server, port, site=tmp_path / "app", cache=tmp_path / "cache")
        try:
            dewy.wait_for("deployed", version="v1.0.0")
            server.chunk_delay = CHUNK_SIZE / (1 << 20)  # 1 MB/s: 50 MB take 50 s
            publish(server, "v1.1.0", payload=50 << 20)
            dewy.wait_for("deploying", version="v1.1.0")
            while not leftovers(tmp_path / "cache"):
                time.sleep(0.05)  # the download is writing its temporary file
            asked = time.monotonic()
            assert dewy.stop(timeout=CI_SECONDS) == 0
            took = time.monotonic() - asked
        finally:
            dewy.kill()
    assert took < 5, f"dewy took {took:.1f}s to stop"
    assert leftovers(tmp_path / "cache", tmp_path / "app") == []
    assert not [p for p in (tmp_path / "cache").rglob("v1.1.0*")]
    with pytest.raises(OSError):
        get(port, timeout=1)  # the app stopped with dewy


@pytest.fixture
def tiny_fs(tmp_path):
    """Mount a tmpfs (root only) at a path; yields a function mounting one of ``size`` bytes, unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a tmpfs mount, which needs root")
    mounted: list[Path] = []

    def mount(path: Path, size: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


@pytest.mark.system
@pytest.mark.parametrize("where, fault, message, fix", [
    ("cache", "size=4m", "No space left on device; free space on that filesystem", "size=64m"),
    ("releases", "size=4m", "No space left on device; free space on that filesystem", "size=64m"),
    ("cache", "ro", "Read-only file system; the filesystem is read-only: remount it read-write", "rw"),
])
def test_a_disk_fault_during_a_deploy_is_one_error_and_recovered_when_fixed(tmp_path, tiny_fs, where, fault, message,
                                                                             fix) -> None:
    port = free_port()
    site, cache = tmp_path / "app", tmp_path / "cache"
    faulty = tiny_fs(cache if where == "cache" else site / "releases", 64 << 20)
    with GitHubServer(token="ghp_test_secret") as server:
        publish(server, "v1.0.0")
        dewy = start(tmp_path, server, port, site=site, cache=cache)
        try:
            dewy.wait_for("deployed", version="v1.0.0")
            remount(faulty, fault)  # full (a 6 MB download into 4 MB), or read-only
            with ClientLoop(port, max_seconds=CI_SECONDS) as client:
                publish(server, "v1.1.0", payload=6 << 20)
                failed = dewy.wait_for("deploy-failed")
                assert str(faulty) in failed["msg"] and message in failed["msg"] and "\n" not in failed["msg"]
                assert leftovers(cache, site / "releases") == []
                assert (site / "current").resolve().parent == site / "releases"
                assert get(port) == (200, "v1.0.0")
                remount(faulty, fix)  # the operator frees space or remounts: dewy gets on by itself
                dewy.wait_for("deployed", version="v1.1.0", timeout=CI_SECONDS)
            assert client.failures == [] and client.ok > 10
            assert get(port) == (200, "v1.1.0")
            assert not [e for e in dewy.seen if e.get("event") == "internal-error" or "Traceback" in e.get("msg", "")]
        finally:
            dewy.kill()


@pytest.mark.system
def test_the_state_file_on_a_read_only_disk_is_one_error_naming_it_and_the_old_file_stays(tmp_path, tiny_fs) -> None:
    disk = tiny_fs(tmp_path / "site", 1 << 20)
    state = State(disk / ".dewy" / "state.json", last_error="before")
    state.save()
    remount(disk, "ro")
    state.last_error = "after"
    with pytest.raises(DiskError) as caught:
        state.save()
    assert str(caught.value) == (f"cannot write the state file in {disk / '.dewy'}: Read-only file system; the filesystem "
                                 "is read-only: remount it read-write (dewy retries, the running version keeps serving)")
    assert State.load(state.path).last_error == "before"
    remount(disk, "rw")
    state.save()
    assert State.load(state.path).last_error == "after" and os.listdir(disk / ".dewy") == ["state.json"]
