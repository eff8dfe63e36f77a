"""file:// registry: newest semver directory, artifact choice, upload grace, audit records."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time

import pytest

from dewy.errors import ArtifactNotReady, RegistryError
from dewy.registry import REGISTRIES
from tests.conftest import host_artifact, publish


def registry(path, query="", **kw):
    return REGISTRIES.load(REGISTRIES.url(path.as_uri() + query), **kw)


def current(path, query="", **kw):
    return asyncio.run(registry(path, query, **kw).current())


def test_newest_semver_directory_wins(tmp_path) -> None:
    for tag in ("v1.0.0", "v1.10.0", "v1.9.0", "v2.0.0-rc.1"):
        publish(tmp_path, tag, {"f": tag})
    (tmp_path / "latest").mkdir()
    assert current(tmp_path).tag == "v1.10.0"
    assert current(tmp_path, "?pre-release=true").tag == "v2.0.0-rc.1"


def test_slot(tmp_path) -> None:
    publish(tmp_path, "v1.2.0+blue", {"f": "b"})
    publish(tmp_path, "v1.3.0+green", {"f": "g"})
    assert current(tmp_path, slot="blue").tag == "v1.2.0+blue"


def test_explicit_artifact_and_auto_match(tmp_path) -> None:
    publish(tmp_path, "v1.0.0", {"f": "1"}, name="app_windows_amd64.zip")
    publish(tmp_path, "v1.0.0", {"f": "1"})
    publish(tmp_path, "v1.0.0", {"f": "1"}, name="site.tar.gz")
    assert current(tmp_path).artifact_name == host_artifact()
    assert current(tmp_path, "?artifact=site.tar.gz").artifact_name == "site.tar.gz"


def test_missing_artifact_waits_then_fails(tmp_path) -> None:
    (tmp_path / "v1.0.0").mkdir()
    (tmp_path / "v1.0.0" / "README").write_text("uploading")
    with pytest.raises(ArtifactNotReady):
        current(tmp_path)
    old = time.time() - 31 * 60
    os.utime(tmp_path / "v1.0.0", (old, old))
    with pytest.raises(RegistryError, match="has no archive for") as caught:
        current(tmp_path)
    assert not isinstance(caught.value, ArtifactNotReady)
    assert "README" in str(caught.value)


def test_empty_registry_is_an_error(tmp_path) -> None:
    with pytest.raises(RegistryError, match="no release directory"):
        current(tmp_path)
    with pytest.raises(RegistryError, match="cannot list"):
        current(tmp_path / "absent")


def test_report_writes_audit_record(tmp_path) -> None:
    publish(tmp_path, "v1.0.0", {"f": "1"})
    reg = registry(tmp_path)
    release = asyncio.run(reg.current())
    asyncio.run(reg.report(release, "server"))
    records = [p for p in (tmp_path / "v1.0.0").iterdir() if p.name.startswith("shipped_to_")]
    assert len(records) == 1
    host = socket.gethostname()
    assert re.fullmatch(rf"shipped_to_{re.escape(host)}_server_at_\d{{8}}T\d{{6}}\.\d{{9}}Z\.txt", records[0].name)
    assert records[0].read_text().startswith(f"shipped to {host} server at ")
    assert current(tmp_path).artifact_name == host_artifact(), "an audit record is never taken for the artifact"
