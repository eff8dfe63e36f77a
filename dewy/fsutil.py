"""Crash-safe file writes: temp file in the same directory, fsync, rename(2), fsync the directory."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    """Write ``target`` so that a crash leaves either the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(target: Path, data: bytes) -> None:
    with atomic_file(target) as out:
        out.write(data)


def remove_temp_files(directory: Path) -> None:
    """Delete leftovers of writes interrupted by a crash (kill -9 mid-download)."""
    for leftover in directory.glob(TEMP_PREFIX + "*"):
        leftover.unlink(missing_ok=True)
