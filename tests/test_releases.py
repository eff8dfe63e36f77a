"""Releases on disk: unique timestamp names, atomic current switch, pruning, crash leftovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dewy.archive import extract
from dewy.errors import ArchiveError
from dewy.releases import DELETING_PREFIX, PARTIAL_PREFIX, Releases
from tests.conftest import tar_gz


def test_names_unique_within_one_second(tmp_path) -> None:
    releases = Releases(tmp_path)
    names = set()
    for _ in range(20):
        name = releases.new_name()
        (releases.directory / name).mkdir()
        names.add(name)
    assert len(names) == 20
    assert sorted(names) == sorted(names, key=lambda n: (n[:22], n))


def test_switch_is_a_relative_symlink_replaced_atomically(tmp_path) -> None:
    releases = Releases(tmp_path)
    first, second = (releases.directory / "a"), (releases.directory / "b")
    first.mkdir(), second.mkdir()
    releases.switch(first)
    assert releases.current_dir() == first.resolve()
    releases.switch(second)
    assert os.readlink(tmp_path / "current") == "releases/b"
    assert releases.current_dir() == second.resolve()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".current")] == []


def build(releases: Releases, artifact) -> Path:
    """A release built the way the daemon builds one: extracted under its partial name, then completed."""
    name = releases.new_name()
    with releases.building(name) as partial:
        extract(artifact, partial, max_bytes=1 << 20)
        return releases.complete(name)


def test_extract_failure_leaves_nothing(tmp_path) -> None:
    artifact = tmp_path / "bad.tar.gz"
    artifact.write_bytes(tar_gz({"ok.txt": "x"})[:40])
    releases = Releases(tmp_path / "app")
    with pytest.raises(ArchiveError):
        build(releases, artifact)
    assert list(releases.directory.iterdir()) == []


def test_complete_names_the_release_only_when_done(tmp_path) -> None:
    releases = Releases(tmp_path / "app")
    name = releases.new_name()
    with releases.building(name) as partial:
        (tmp_path / "a.tar.gz").write_bytes(tar_gz({"index.html": "x"}))
        extract(tmp_path / "a.tar.gz", partial)
        assert [p.name for p in releases.directory.iterdir()] == [PARTIAL_PREFIX + name]
        done = releases.complete(name)
    assert [p.name for p in releases.directory.iterdir()] == [name]
    assert (done / "index.html").read_text() == "x"


def test_partial_release_from_a_crash_is_removed(tmp_path) -> None:
    (tmp_path / "releases" / (PARTIAL_PREFIX + "x")).mkdir(parents=True)
    releases = Releases(tmp_path)
    assert list(releases.directory.iterdir()) == []


def test_prune_keeps_newest_and_current(tmp_path) -> None:
    releases = Releases(tmp_path)
    dirs = [releases.directory / f"2026010{i}T000000.000000Z" for i in range(1, 10)]
    for d in dirs:
        d.mkdir()
    releases.switch(dirs[0])  # an old release is current after a rollback
    releases.prune(7, {dirs[0]})
    assert sorted(p.name for p in releases.directory.iterdir()) == sorted([dirs[0].name] + [d.name for d in dirs[2:]])


def nested(root, depth: int) -> None:
    """``root/d/d/.../d/f``, ``depth`` directories deep: deeper than PATH_MAX allows by path, so made by descriptors."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)


def deep_tar(path, depth: int):
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("d/" * depth + "f"), None)
    return path


def test_tar_deeper_than_a_path_can_be_is_refused_in_one_line_and_leaves_nothing(tmp_path) -> None:
    releases = Releases(tmp_path / "app")
    with pytest.raises(ArchiveError) as raised:
        build(releases, deep_tar(tmp_path / "deep.tar.gz", 2100))
    assert "cannot be extracted: File name too long" in str(raised.value)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 400
    assert list(releases.directory.iterdir()) == []


def test_deep_leftovers_of_a_crash_are_removed_at_start(tmp_path) -> None:
    for prefix in (PARTIAL_PREFIX, DELETING_PREFIX):
        leftover = tmp_path / "releases" / f"{prefix}20260101T000000.000000Z"
        leftover.mkdir(parents=True)
        nested(leftover, 2100)
    kept = tmp_path / "releases" / "20260102T000000.000000Z"
    kept.mkdir()
    releases = Releases(tmp_path)
    assert list(releases.directory.iterdir()) == [kept]


def test_legal_1100_level_tree_deploys_and_is_pruned(tmp_path) -> None:
    releases = Releases(tmp_path / "app")
    deep = build(releases, deep_tar(tmp_path / "deep.tar.gz", 1100))
    assert (deep / ("d/" * 1100 + "f")).is_file()
    newer = releases.directory / (deep.name + "-1")
    newer.mkdir()
    releases.switch(newer)
    assert releases.prune(1, protect=[newer]) == [deep]
    assert list(releases.directory.iterdir()) == [newer]


def test_prune_never_removes_a_protected_release(tmp_path) -> None:
    releases = Releases(tmp_path)
    dirs = [releases.directory / f"2026010{i}T000000.000000Z" for i in range(1, 5)]
    for d in dirs:
        d.mkdir()
    releases.switch(dirs[-1])
    draining = (d for d in dirs[1:2])  # any iterable: what a draining generation still runs from
    releases.prune(1, protect=draining)
    assert sorted(releases.directory.iterdir()) == [dirs[1], dirs[-1]]
    releases.prune(1)
    assert sorted(releases.directory.iterdir()) == [dirs[-1]]


KILLED_WHILE_PRUNING = """
import os, signal, sys
from pathlib import Path
from dewy.releases import Releases

deleted = 0
real_unlink = os.unlink

def unlink(*args, **kwargs):
    global deleted
    deleted += 1
    if deleted == 50:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of deleting the old release
    return real_unlink(*args, **kwargs)

os.unlink = unlink
releases = Releases(Path(sys.argv[1]))
releases.prune(1, protect=[releases.current_dir()])
"""


def test_kill_9_while_pruning_leaves_no_half_release_under_its_name(tmp_path) -> None:
    releases = Releases(tmp_path)
    old, new = releases.directory / "20260101T000000.000000Z", releases.directory / "20260102T000000.000000Z"
    for release in (old, new):
        release.mkdir()
        for i in range(100):
            (release / f"file-{i}").write_text("x")
    releases.switch(new)
    result = subprocess.run([sys.executable, "-c", KILLED_WHILE_PRUNING, str(tmp_path)], timeout=30)
    assert result.returncode == -signal.SIGKILL
    names = sorted(p.name for p in releases.directory.iterdir())
    assert names == [DELETING_PREFIX + old.name, new.name], "the half-deleted release kept its name"
    assert len(list(new.iterdir())) == 100
    Releases(tmp_path)  # the next start finishes the deletion
    assert sorted(p.name for p in releases.directory.iterdir()) == [new.name]
