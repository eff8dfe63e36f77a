"""The artifact store: streamed fetch, checksum verification, no partial files."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from dewy.errors import ArtifactError
from dewy.registry import REGISTRIES
from dewy.store import ArtifactStore, parse_checksums
from tests.conftest import host_artifact, publish


def current(registry_dir):
    registry = REGISTRIES.load(REGISTRIES.url(registry_dir.as_uri()))
    return asyncio.run(registry.current())


def test_fetch_verifies_published_checksum(tmp_path) -> None:
    publish(tmp_path / "reg", "v1.0.0", {"a": "1"}, checksums=True)
    store = ArtifactStore(tmp_path / "cache")
    release = current(tmp_path / "reg")
    path = asyncio.run(store.fetch(release))
    assert path.name == f"v1.0.0--{host_artifact()}"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == (tmp_path / "reg/v1.0.0/checksums.txt").read_text().split()[0]


def test_checksum_mismatch_stores_nothing(tmp_path) -> None:
    publish(tmp_path / "reg", "v1.0.0", {"a": "1"}, checksum_override="0" * 64)
    store = ArtifactStore(tmp_path / "cache")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        asyncio.run(store.fetch(current(tmp_path / "reg")))
    assert list((tmp_path / "cache").iterdir()) == []


def test_checksum_file_without_the_artifact_is_an_error(tmp_path) -> None:
    publish(tmp_path / "reg", "v1.0.0", {"a": "1"})
    (tmp_path / "reg/v1.0.0/checksums.txt").write_text(f"{'a' * 64}  other.tar.gz\n")
    with pytest.raises(ArtifactError, match="does not list"):
        asyncio.run(ArtifactStore(tmp_path / "cache").fetch(current(tmp_path / "reg")))


def test_parse_checksum_formats() -> None:
    assert parse_checksums("abc  x.tgz\ndef  y.tgz\n", "y.tgz") == "def"
    assert parse_checksums("ABC *x.tgz\n", "x.tgz") == "abc"
    assert parse_checksums("abc\n", "x.tgz") == "abc"
    assert parse_checksums("abc  other\n", "x.tgz") is None


def test_leftover_temp_files_are_removed(tmp_path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ".tmp-abc").write_bytes(b"partial")
    ArtifactStore(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
