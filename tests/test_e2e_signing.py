"""End to end ``verify=minisign``: a real ``dewy server`` deploys only releases a trusted key signed with the real
minisign tool, refuses the rest with one error line while the running version keeps serving, and never retries them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import host_artifact, publish
from tests.harness import APP, ClientLoop, Dewy, free_port, get
from tests.minisign_tool import KeyPair, generate, sign


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, KeyPair]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: generate(directory, name) for name in ("old", "new", "stranger")}


def release(registry: Path, tag: str, key: KeyPair | None, *, legacy: bool = False, comment: str | None = None) -> Path:
    """Publish the test app as ``tag``, signed by ``key``; the signature is in place before the archive appears."""
    staging = registry.parent / "staging"
    archive = publish(staging, tag, {"app.py": APP.read_text(), "VERSION": tag}, checksums=True)
    if key:
        sign(key, archive, legacy=legacy, comment=comment)
    registry.mkdir(parents=True, exist_ok=True)
    staging.joinpath(tag).rename(registry / tag)
    return registry / tag / archive.name


def make_old(directory: Path) -> None:
    """Past the upload grace: what is missing now is missing for good."""
    hour_ago = time.time() - 3600
    os.utime(directory, (hour_ago, hour_ago))


def start(tmp_path: Path, port: int, *extra: str) -> Dewy:
    return Dewy(
        ["server", "--registry", (tmp_path / "registry").as_uri() + "?verify=minisign", "-i", "0.2",
         "-p", f"127.0.0.1:{port}", "--settle-time", "0.3", "--health-path", "/health", "--health-timeout", "5",
         "--stop-timeout", "5", "-d", str(tmp_path / "app"), "-c", (tmp_path / "cache").as_uri(), *extra,
         "--", sys.executable, "current/app.py"],
        cwd=tmp_path,
    )


def refused(dewy: Dewy, tag: str, why: str) -> None:
    """One error line for the refused release, then it is skipped as quarantined, not fetched again."""
    failure = dewy.wait_for("deploy-failed")
    assert failure["msg"].startswith(f"{host_artifact()} of {tag}: refused: "), failure
    assert why in failure["msg"] and failure["msg"].endswith("; the artifact was not deployed"), failure
    for _ in range(3):
        dewy.wait_for("quarantined", version=tag)
    assert [e["version"] for e in dewy.seen if e.get("event") == "deploying"].count(tag) == 1


def test_only_releases_signed_by_a_trusted_key_are_deployed(tmp_path, keys) -> None:
    registry, port = tmp_path / "registry", free_port()
    release(registry, "v1.0.0", keys["old"], comment="v1.0.0 built by CI")
    dewy = start(tmp_path, port, "--trusted-key", str(keys["old"].public), "--trusted-key", keys["new"].line)
    try:
        deployed = dewy.wait_for("deployed", version="v1.0.0")
        assert deployed["signed_by"] == f"minisign key {keys['old'].id} (v1.0.0 built by CI)"
        with ClientLoop(port) as client:
            release(registry, "v1.1.0", keys["stranger"])
            refused(dewy, "v1.1.0", f"signed by minisign key {keys['stranger'].id}, which is not trusted")

            swapped = release(registry, "v1.2.0", keys["old"])
            other = release(tmp_path / "elsewhere", "v9.0.0", None)  # what a writer of the registry would rather ship
            (other.parent / "checksums.txt").rename(swapped.parent / "checksums.txt")
            other.rename(swapped)
            refused(dewy, "v1.2.0", "its minisign signature does not match the downloaded bytes")

            signature = release(registry, "v1.3.0", keys["old"], comment="for staging").with_suffix(".gz.minisig")
            signature.write_text(signature.read_text().replace("for staging", "for production"))
            refused(dewy, "v1.3.0", "trusted comment")

            release(registry, "v1.4.0", None)
            waiting = dewy.wait_for("waiting")  # CI may still be uploading the signature
            assert f"no signature {host_artifact()}.minisig yet" in waiting["msg"]
            make_old(registry / "v1.4.0")
            refused(dewy, "v1.4.0", f"the release has no signature {host_artifact()}.minisig")

            assert get(port)[1] == "v1.0.0"
            release(registry, "v1.5.0", keys["new"], legacy=True)  # the rotated-in key, minisign's legacy form
            deployed = dewy.wait_for("deployed", version="v1.5.0")
            assert deployed["signed_by"].startswith(f"minisign key {keys['new'].id} (timestamp:")
            assert client.wait_for_body("v1.5.0")
        assert client.failures == []
        assert set(client.bodies) == {"v1.0.0", "v1.5.0"}
    finally:
        dewy.kill()
    state = json.loads((tmp_path / "app" / ".dewy" / "state.json").read_text())
    assert sorted(state["quarantine"]) == [f"v1.{m}.0--{host_artifact()}" for m in range(1, 5)]
    status = subprocess.run([sys.executable, "-m", "dewy", "status", "-d", str(tmp_path / "app")],
                            capture_output=True, text=True, check=True, timeout=30).stdout
    assert f"signed by:    minisign key {keys['new'].id} (timestamp:" in status
