"""End to end ``dewy assets``: hooks around the deploy, registry failures, retries, bad archives."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import host_artifact, publish
from tests.github_server import GitHubServer
from tests.harness import Dewy


def assets(tmp_path: Path, *extra: str, registry: str | None = None, env: dict[str, str] | None = None) -> Dewy:
    return Dewy(["assets", "--registry", registry or (tmp_path / "registry").as_uri(), "-i", "0.1",
                 "-d", str(tmp_path / "site"), "-c", (tmp_path / "cache").as_uri(), *extra], cwd=tmp_path, env=env)


def served(tmp_path: Path) -> str:
    return (tmp_path / "site" / "current" / "index.html").read_text()


def test_hooks_see_the_deploy_and_a_failing_before_hook_aborts_it(tmp_path) -> None:
    registry = tmp_path / "registry"
    publish(registry, "v1.0.0", {"index.html": "one"})
    before = 'test ! -e "$DEWY_ARTIFACT.block" && echo "before $DEWY_VERSION after $DEWY_PREVIOUS_VERSION"'
    after = 'env | grep ^DEWY_ | sort > hook-env; cat "$DEWY_RELEASE_DIR/index.html"'
    dewy = assets(tmp_path, "--before-deploy-hook", before, "--after-deploy-hook", after)
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        env = dict(line.split("=", 1) for line in (tmp_path / "site" / "hook-env").read_text().splitlines())
        assert env["DEWY_VERSION"] == "v1.0.0"
        assert env["DEWY_PREVIOUS_VERSION"] == ""
        assert env["DEWY_COMMAND"] == "assets"
        assert Path(env["DEWY_RELEASE_DIR"]) == (tmp_path / "site" / "current").resolve()
        assert Path(env["DEWY_ARTIFACT"]) == registry / "v1.0.0" / host_artifact(), "a file:// artifact is read in place"
        assert any(e.get("event") == "after-hook-output" and e["msg"] == "one" for e in dewy.seen)
        assert any(e.get("event") == "before-hook-output" and e["msg"] == "before v1.0.0 after " for e in dewy.seen)

        publish(registry, "v1.1.0", {"index.html": "two"})
        (registry / "v1.1.0" / f"{host_artifact()}.block").touch()  # make the before hook fail
        failure = dewy.wait_for("deploy-failed")
        assert "before hook" in failure["msg"] and "exited with status 1" in failure["msg"]
        assert served(tmp_path) == "one"
        assert len(list((tmp_path / "site" / "releases").iterdir())) == 1, "a failed before hook leaves no partial release"
        (registry / "v1.1.0" / f"{host_artifact()}.block").unlink()
        dewy.wait_for("deployed", version="v1.1.0")
        assert served(tmp_path) == "two"
        assert "DEWY_PREVIOUS_VERSION=v1.0.0" in (tmp_path / "site" / "hook-env").read_text()
    finally:
        dewy.kill()


def test_failing_after_hook_is_reported_but_the_deploy_stands(tmp_path) -> None:
    publish(tmp_path / "registry", "v1.0.0", {"index.html": "one"})
    dewy = assets(tmp_path, "--after-deploy-hook", "echo cache purge failed >&2; exit 4")
    try:
        failure = dewy.wait_for("after-hook-failed")
        assert "exited with status 4: cache purge failed" in failure["msg"]
        dewy.wait_for("deployed", version="v1.0.0")
        assert served(tmp_path) == "one"
    finally:
        dewy.kill()


def test_escaping_archive_is_refused_and_nothing_lands_outside(tmp_path) -> None:
    registry = tmp_path / "registry"
    publish(registry, "v1.0.0", {"index.html": "one"})
    dewy = assets(tmp_path)
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        evil = io.BytesIO()
        with tarfile.open(fileobj=evil, mode="w:gz") as tar:
            info = tarfile.TarInfo("../../pwned")
            tar.addfile(info, io.BytesIO(b""))
        (registry / "v1.1.0").mkdir()
        (registry / "v1.1.0" / host_artifact()).write_bytes(evil.getvalue())
        failure = dewy.wait_for("deploy-failed")
        assert "escapes the release directory" in failure["msg"]
        assert not list(tmp_path.rglob("pwned"))
        assert served(tmp_path) == "one"
    finally:
        dewy.kill()


def test_registry_outage_is_retried_with_backoff_and_rate_limits_are_honoured(tmp_path) -> None:
    with GitHubServer(token="ghp_secret_value") as github:
        publish(tmp_path / "staging", "v1.0.0", {"index.html": "one"})
        github.add_release("acme", "site", "v1.0.0", {host_artifact(): (tmp_path / "staging/v1.0.0" / host_artifact()).read_bytes()})
        github.fail_next(500, times=3)
        env = {"GITHUB_API_URL": github.url, "GITHUB_TOKEN": "ghp_secret_value"}
        dewy = assets(tmp_path, registry="ghr://acme/site", env=env)
        try:
            failures = [dewy.wait_for("deploy-failed") for _ in range(3)]
            assert [f["failures"] for f in failures] == [1, 2, 3]
            assert all("500" in f["msg"] for f in failures)
            dewy.wait_for("deployed", version="v1.0.0")
            github.fail_next(429, times=1, retry_after=2)
            limited = dewy.wait_for("deploy-failed")
            assert "rate limit" in limited["msg"]
            told_at = time.monotonic()
            dewy.wait_for("up-to-date", timeout=10)
            assert time.monotonic() - told_at > 1.5, "the next poll must wait for Retry-After (2 s), not the 0.1 s interval"
        finally:
            dewy.kill()
        assert not any("ghp_secret_value" in json.dumps(e) for e in dewy.seen)


def hostile_tar(kind: str) -> bytes:
    """Archives that once crashed dewy or emptied the site."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        if kind == "deep":
            tar.addfile(tarfile.TarInfo("d/" * 2100 + "f"), None)
        elif kind == "nul-path":
            info = tarfile.TarInfo("index.html")
            info.pax_headers = {"path": "index\0.html"}
            tar.addfile(info, io.BytesIO(b""))
        elif kind == "nul-link":
            info = tarfile.TarInfo("link")
            info.type, info.pax_headers = tarfile.SYMTYPE, {"linkpath": "a\0b"}
            tar.addfile(info)
        elif kind == "root-only":
            info = tarfile.TarInfo("./")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        elif kind == "many":
            for i in range(60):
                tar.addfile(tarfile.TarInfo(f"empty-{i}"), io.BytesIO(b""))
    return buffer.getvalue()


@pytest.mark.parametrize("kind, phrase", [
    ("deep", "cannot be extracted: File name too long"),
    ("nul-path", "has a NUL byte in its name"),
    ("nul-link", "target contains a NUL byte"),
    ("empty", "is empty (no files or directories): refusing to deploy it"),
    ("root-only", "is empty"),
    ("many", "has more than 50 members; raise the limit with --max-archive-members"),
])
def test_hostile_archive_is_one_error_line_and_the_site_stays(tmp_path, kind: str, phrase: str) -> None:
    registry = tmp_path / "registry"
    publish(registry, "v1.0.0", {"index.html": "one"})
    dewy = assets(tmp_path, "--max-archive-members", "50")
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        (registry / "v1.1.0").mkdir()
        (registry / "v1.1.0" / host_artifact()).write_bytes(hostile_tar(kind))
        failure = dewy.wait_for("deploy-failed")
        assert phrase in failure["msg"] and "\n" not in failure["msg"] and len(failure["msg"]) < 400
        dewy.wait_for("deploy-failed")  # retried, still running
        assert served(tmp_path) == "one"
        assert [p.name for p in (tmp_path / "site" / "releases").iterdir() if p.name.startswith(".")] == []
    finally:
        dewy.kill()
    restarted = assets(tmp_path, "--max-archive-members", "50")  # a restart is not stopped by what was refused
    try:
        assert phrase in restarted.wait_for("deploy-failed")["msg"]
        assert served(tmp_path) == "one"
    finally:
        restarted.kill()


def test_file_artifact_caught_half_copied_is_fetched_again_when_complete(tmp_path) -> None:
    registry = tmp_path / "registry"
    publish(registry, "v1.0.0", {"index.html": "one"})
    complete = publish(tmp_path / "staging", "v1.1.0", {"index.html": "two" * 10_000}).read_bytes()
    dewy = assets(tmp_path)
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        (registry / "v1.1.0").mkdir()
        target = registry / "v1.1.0" / host_artifact()
        with target.open("wb") as copying:  # a cp in progress: half the bytes are there
            copying.write(complete[: len(complete) // 2])
            copying.flush()
            failure = dewy.wait_for("deploy-failed")
            assert "is truncated or corrupt" in failure["msg"]
            assert not (tmp_path / "cache" / "artifacts" / f"v1.1.0--{host_artifact()}").exists(), \
                "the half copy must not stay in the cache"
            copying.write(complete[len(complete) // 2:])
        dewy.wait_for("deployed", version="v1.1.0")
        assert served(tmp_path) == "two" * 10_000
    finally:
        dewy.kill()


def test_asset_name_climbing_out_of_the_cache_is_refused_and_nothing_is_written_outside(tmp_path) -> None:
    evil = "../../../x/evil_" + host_artifact()
    outside = tmp_path / "cache" / "x"  # where the cache path of that name normalises to
    outside.mkdir(parents=True)
    with GitHubServer() as github:
        github.add_release("acme", "site", "v1.0.0", {host_artifact(): publish(tmp_path / "staging", "v1.0.0",
                                                                              {"index.html": "one"}).read_bytes()})
        dewy = assets(tmp_path, registry="ghr://acme/site", env={"GITHUB_API_URL": github.url})
        try:
            dewy.wait_for("deployed", version="v1.0.0")
            github.add_release("acme", "site", "v1.1.0", {evil: b"whatever"})
            failure = dewy.wait_for("deploy-failed")
            assert failure["msg"] == (f"ghr://acme/site: release v1.1.0: the asset name {evil!r} holds a / (a file name"
                                      " is one path component); nothing deployed")
            dewy.wait_for("deploy-failed")  # still running, retrying
            assert served(tmp_path) == "one"
        finally:
            dewy.kill()
    assert list(outside.iterdir()) == []
    assert not (tmp_path.parent / "x").exists()
