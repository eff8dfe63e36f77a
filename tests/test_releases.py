"""Releases on disk: unique timestamp names, atomic current switch, pruning, crash leftovers."""

from __future__ import annotations

import os
import tarfile

import pytest

from dewy.errors import ArchiveError
from dewy.releases import PARTIAL_PREFIX, Releases
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


def test_extract_failure_leaves_nothing(tmp_path) -> None:
    artifact = tmp_path / "bad.tar.gz"
    artifact.write_bytes(tar_gz({"ok.txt": "x"})[:40])
    releases = Releases(tmp_path / "app")
    with pytest.raises(ArchiveError):
        releases.extract(artifact, releases.new_name(), max_bytes=1 << 20)
    assert list(releases.directory.iterdir()) == []


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
