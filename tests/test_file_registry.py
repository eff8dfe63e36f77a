"""file:// registry: newest semver directory, artifact choice, upload grace, audit records."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time

import pytest

from dewy.errors import ArtifactNotReady, RegistryError, UsageError
from dewy.registry import REGISTRIES
from dewy.registry.file import DirectoryRegistry
from dewy.registry.objectstore import Listing
from dewy.urls import Url
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


class Listed(DirectoryRegistry):
    """The file:// registry with its backend answers replaced: what a misbehaving store might list."""

    versions: list = ["v1.0.0"]
    files: Listing = Listing([host_artifact()], None)

    def list_versions(self) -> list:
        return self.versions

    def list_files(self, tag: str) -> Listing:
        return self.files


@pytest.mark.parametrize("versions, files, problem", [
    ([1], Listing([], None), "the store listed 1 as a version directory, which is not a name"),
    (["v1.0.0"], Listing([None], None), "the store listed None as a file of v1.0.0, which is not a name"),
    (["v1.0.0"], Listing([host_artifact()], "yesterday"), "release v1.0.0: the store gave 'yesterday' as its time"),
    (["v1.0.0"], Listing([".."], None), "release v1.0.0: the file name '..' is not a file name; nothing deployed"),
])
def test_listing_of_the_wrong_shape_is_one_error(tmp_path, versions, files, problem: str) -> None:
    backend = Listed(Url.parse(tmp_path.as_uri() + ("?artifact=.." if files.names == [".."] else "")))
    backend.versions, backend.files = versions, files
    with pytest.raises(RegistryError) as raised:
        asyncio.run(backend.current())
    assert problem in str(raised.value) and "\n" not in str(raised.value)


def test_calver_and_constraint_keys_choose_among_mixed_tags(tmp_path) -> None:
    for tag in ("v1.4.2", "v1.5.0", "v2.0.0", "2024.01.15.1", "2024.02.01.0", "2024.02.01.1-rc.1"):
        publish(tmp_path, tag, {"f": tag})
    assert current(tmp_path).tag == "v2.0.0"
    assert current(tmp_path, "?calver=YYYY.0M.0D.MICRO").tag == "2024.02.01.0"
    assert current(tmp_path, "?calver=YYYY.0M.0D.MICRO&pre-release=true").tag == "2024.02.01.1-rc.1"
    assert current(tmp_path, "?constraint=~1.4").tag == "v1.4.2"
    assert current(tmp_path, "?constraint=>=1.2,<2").tag == "v1.5.0"
    with pytest.raises(RegistryError, match=r"found 3 version directories \(none within constraint=\^3\)"):
        current(tmp_path, "?constraint=^3")
    with pytest.raises(UsageError, match="calver format 'latest' has no specifier"):
        registry(tmp_path, "?calver=latest")
    with pytest.raises(UsageError, match="'~~1' is not a version range"):
        registry(tmp_path, "?constraint=~~1")


def test_a_calver_release_survives_the_shared_cache_roundtrip(tmp_path) -> None:
    from dewy.registry.shared import release_from_json, release_to_json

    publish(tmp_path, "2024.02.01.0+blue", {"f": "x"})
    release = current(tmp_path, "?calver=YYYY.0M.0D.MICRO", slot="blue")
    assert release_from_json(release_to_json(release)) == release


def lookup(path, tag: str, query: str = "", **kw):
    """``registry.release(tag)`` (what ``dewy pin`` asks); the RegistryError's line if it refuses."""
    try:
        return asyncio.run(registry(path, query, **kw).release(tag))
    except RegistryError as exc:
        return str(exc)


def test_a_release_by_tag_is_any_published_one_under_the_version_rules(tmp_path) -> None:
    for tag in ("v1.0.0", "v1.1.0", "v1.2.0", "v2.0.0-rc.1", "v1.3.0+blue"):
        publish(tmp_path, tag, {"f": tag}, checksums=tag == "v1.0.0")
    older = lookup(tmp_path, "1.0.0")  # as the operator may type it
    assert (older.tag, older.artifact_url) == ("v1.0.0", (tmp_path / "v1.0.0" / host_artifact()).as_uri())
    assert older.checksums_url == (tmp_path / "v1.0.0" / "checksums.txt").as_uri()
    where = tmp_path.as_uri()
    assert lookup(tmp_path, "v1.9.0") == f"{where} has no release v1.9.0"
    assert lookup(tmp_path, "v2.0.0-rc.1") == (f"{where}: v2.0.0-rc.1 is not deployed from this registry: it is a "
                                              "pre-release, and pre-releases are skipped without pre-release=true")
    assert lookup(tmp_path, "v2.0.0-rc.1", "?pre-release=true").tag == "v2.0.0-rc.1"
    assert lookup(tmp_path, "v1.1.0", "?constraint=~1.2").endswith("it is outside constraint=~1.2")
    assert lookup(tmp_path, "v1.1.0", slot="blue").endswith("it is not of slot 'blue'")
    assert lookup(tmp_path, "latest").endswith("it is not a semantic version (like v1.2.3)")
    assert lookup(tmp_path, "v1.1.0", "?calver=YYYY.0M").endswith("it is not a calendar version of the form YYYY.0M")
