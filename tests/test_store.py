"""The artifact store: streamed fetch, checksum verification, no partial files."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import tarfile
import threading

import pytest
import semver

from dewy.archive import extract
from dewy.artifacts import ARTIFACTS, room
from dewy.errors import ArchiveError, ArtifactError
from dewy.registry import REGISTRIES, Release
from dewy.releases import Releases
from dewy.spool import WINDOW, Spool
from dewy.store import ArtifactStore, parse_checksums
from tests.conftest import host_artifact, publish


def current(registry_dir):
    registry = REGISTRIES.load(REGISTRIES.url(registry_dir.as_uri()))
    return asyncio.run(registry.current())


def test_a_file_artifact_is_verified_where_it_lies_not_copied(tmp_path) -> None:
    publish(tmp_path / "reg", "v1.0.0", {"a": "1"}, checksums=True)
    store = ArtifactStore(tmp_path / "cache")
    path = asyncio.run(store.fetch(current(tmp_path / "reg")))
    assert path == tmp_path / "reg" / "v1.0.0" / host_artifact()
    assert list((tmp_path / "cache").iterdir()) == [], "the source is local: the cache keeps no second copy"


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


# -- one pass: extracted while the bytes arrive, stored and named only once everything passed ------------------


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Watched(Spool):
    """A spool that notes when a reader waits for bytes not written yet."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.waited_ahead = threading.Event()

    def wait(self, end: int, reader=None) -> bool:
        if end > self.size and not self.done:
            self.waited_ahead.set()
        return super().wait(end, reader)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_members_are_extracted_while_the_rest_is_still_arriving(tmp_path, suffix) -> None:
    big = os.urandom(8 << 20)
    data = tar_of({"first.txt": b"early", "big.bin": big})
    if suffix == ".tar.gz":
        data = gzip.compress(data, compresslevel=1)
    fd = os.open(tmp_path / "artifact", os.O_WRONLY | os.O_CREAT)
    spool = Watched(tmp_path / "artifact", "app" + suffix, fd)
    dest = tmp_path / "release"
    dest.mkdir()
    spool.write(data[: len(data) // 2])
    extraction = threading.Thread(target=extract, args=(spool.reader(), dest))
    extraction.start()
    try:
        assert spool.waited_ahead.wait(30), "the extraction waits for the bytes still to come"
        assert (dest / "first.txt").read_bytes() == b"early"
        spool.write(data[len(data) // 2:])
        spool.finish()
    finally:
        spool.abort() if not spool.done else None
        extraction.join(30)
        os.close(fd)
    assert (dest / "big.bin").read_bytes() == big


class Held:
    """An artifact that sends ``data`` and then either fails or holds the connection open until cancelled."""

    def __init__(self, data: bytes, failure: Exception | None = None) -> None:
        self.data, self.failure = data, failure
        self.cancelled = False

    async def download(self, out) -> None:
        out.write(self.data)
        if self.failure:
            raise self.failure
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def aclose(self) -> None:
        pass


def staged_fetch(tmp_path, release, artifact=None, monkeypatch=None):
    """What the daemon does: fetch into the cache while extracting into a release under its partial name."""
    if artifact is not None:
        monkeypatch.setattr(ARTIFACTS, "load", lambda url: artifact)
    store, releases = ArtifactStore(tmp_path / "cache"), Releases(tmp_path / "site")

    async def main():
        name = releases.new_name()
        with releases.building(name) as partial:
            await asyncio.wait_for(store.fetch(release, lambda reader: extract(reader, partial)), 30)
            return releases.complete(name)

    return asyncio.run(main()), releases


def leftovers(tmp_path) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for d in ("cache", "site/releases") for p in (tmp_path / d).iterdir())


def test_checksum_mismatch_deletes_the_half_built_release(tmp_path) -> None:
    publish(tmp_path / "reg", "v1.0.0", {"index.html": "x" * 100_000}, checksum_override="0" * 64)
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        staged_fetch(tmp_path, current(tmp_path / "reg"))
    assert leftovers(tmp_path) == []


def test_a_hostile_member_ends_the_download_at_once(tmp_path, monkeypatch) -> None:
    held = Held(tar_of({"ok.txt": b"x", "../escape": b"evil"}))
    with pytest.raises(ArchiveError, match="escapes the release directory"):
        staged_fetch(tmp_path, current_of("app.tar"), held, monkeypatch)
    assert held.cancelled
    assert leftovers(tmp_path) == [] and not (tmp_path / "site" / "escape").exists()


def test_a_failed_download_ends_the_extraction_and_is_the_error_told(tmp_path, monkeypatch) -> None:
    data = tar_of({"a.bin": os.urandom(1 << 20), "b.bin": os.urandom(1 << 20)})
    held = Held(data[: len(data) // 2], ArtifactError("connection reset after 1 MB; dewy retries"))
    with pytest.raises(ArtifactError, match="connection reset"):
        staged_fetch(tmp_path, current_of("app.tar"), held, monkeypatch)
    assert leftovers(tmp_path) == []


class Sent:
    """A downloaded artifact: ``data``, then the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def download(self, out) -> None:
        out.write(self.data)

    async def aclose(self) -> None:
        pass


def test_a_stored_artifact_is_extracted_without_a_download(tmp_path, monkeypatch) -> None:
    release = current_of("app.tar.gz")
    first, _ = staged_fetch(tmp_path, release, Sent(gzip.compress(tar_of({"index.html": b"one"}))), monkeypatch)
    monkeypatch.setattr(ARTIFACTS, "load", lambda url: pytest.fail("the stored artifact is used"))
    second, releases = staged_fetch(tmp_path, release)
    assert (second / "index.html").read_text() == "one" and second != first
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [release.cache_key]


def test_a_downloaded_plain_tar_goes_from_memory_into_its_release_and_never_into_a_file(tmp_path, monkeypatch) -> None:
    big = os.urandom(3 << 20)
    monkeypatch.setattr(ARTIFACTS, "load", lambda url: Sent(tar_of({"big.bin": big})))
    store, releases = ArtifactStore(tmp_path / "cache"), Releases(tmp_path / "site")
    in_the_cache = []

    async def deploy():
        name = releases.new_name()
        with releases.building(name) as partial:
            def unpack(reader) -> None:
                extract(reader, partial)
                in_the_cache.extend((tmp_path / "cache").iterdir())  # while the bytes are still being read

            assert await store.fetch(current_of("app.tar"), unpack) is None, "no file holds the artifact"
            return releases.complete(name)

    release = asyncio.run(deploy())
    assert (release / "big.bin").read_bytes() == big
    assert in_the_cache == [] and list((tmp_path / "cache").iterdir()) == [], "every byte of it is in the release"


class Flood:
    """A download on the event loop, as ghr:// writes: 1 MiB pieces, each followed by ``room``."""

    def __init__(self, data: bytes) -> None:
        self.data, self.sent = data, 0
        self.full = asyncio.Event()  # made in the test's loop

    async def download(self, out) -> None:
        for start in range(0, len(self.data), 1 << 20):
            self.sent += out.write(self.data[start:start + (1 << 20)])
            if out._held >= WINDOW:
                self.full.set()
            await room(out)

    async def aclose(self) -> None:
        pass


def test_a_download_into_memory_waits_for_a_slow_extraction_and_the_event_loop_runs_meanwhile(tmp_path, monkeypatch) -> None:
    payload = os.urandom(40 << 20)
    store, releases = ArtifactStore(tmp_path / "cache"), Releases(tmp_path / "site")
    extracting = threading.Event()

    async def deploy():
        flood = Flood(tar_of({"big.bin": payload}))
        monkeypatch.setattr(ARTIFACTS, "load", lambda url: flood)
        name = releases.new_name()
        with releases.building(name) as partial:
            def unpack(reader) -> None:
                extracting.wait(30)  # a slow disk
                extract(reader, partial)

            fetching = asyncio.ensure_future(store.fetch(current_of("app.tar"), unpack))
            await asyncio.wait_for(flood.full.wait(), 30)  # this coroutine runs: the loop is not blocked
            for _ in range(100):
                await asyncio.sleep(0)
            assert flood.sent <= WINDOW + (1 << 20), "the download waits for the extraction"
            extracting.set()
            assert await asyncio.wait_for(fetching, 30) is None
            return releases.complete(name)

    release = asyncio.run(deploy())
    assert (release / "big.bin").read_bytes() == payload


def test_prune_keeps_only_the_artifacts_of_kept_releases(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ARTIFACTS, "load", lambda url: Sent(gzip.compress(tar_of({"index.html": b"x"}))))
    store = ArtifactStore(tmp_path / "cache")
    old, new = current_of("app.tar.gz", "v1.0.0"), current_of("app.tar.gz", "v1.1.0")
    for release in (old, new):
        asyncio.run(store.fetch(release))
    store.prune({new.cache_key})
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [new.cache_key]


def current_of(name: str, tag: str = "v1.0.0") -> Release:
    return Release(tag, semver.Version.parse(tag[1:]), name, "file:///held/" + name)
