"""Crash-safe file writes: temp file in the same directory, fsync, rename(2), fsync the directory."""

from __future__ import annotations

import ctypes
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_PREFIX = ".tmp-"
_libc = ctypes.CDLL(None, use_errno=True)  # syncfs(2), which the os module lacks


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
        with os.fdopen(fd, "w+b") as out:  # readable too: a check may read back what was written
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


NAME_MAX = 255  # bytes in one path component (Linux filesystems)


def bad_file_name(name: str) -> str | None:
    """Why ``name`` cannot be a file directly in a directory, or None if it can.

    Names from registries (artifacts, checksum files) become file names in the
    cache: anything that could climb out of it or fail to be created is refused.
    """
    if name in ("", ".", ".."):
        return "is not a file name"
    if "/" in name:
        return "holds a / (a file name is one path component)"
    if "\0" in name:
        return "holds a NUL byte"
    try:
        if len(os.fsencode(name)) > NAME_MAX:
            return f"is longer than {NAME_MAX} bytes"
    except UnicodeEncodeError:
        return "is not valid text"
    return None


def remove_temp_files(directory: Path) -> None:
    """Delete leftovers of writes interrupted by a crash (kill -9 mid-download)."""
    for leftover in directory.glob(TEMP_PREFIX + "*"):
        leftover.unlink(missing_ok=True)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_OPEN_LEVELS = 64  # directories held open at once while removing a tree; deeper ones are moved up first


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything under it, never following a symlink; raises OSError if something stays.

    Iterative and relative to directory descriptors, so neither the recursion
    limit nor PATH_MAX stops it: a release may legally be thousands of levels
    deep. A subtree deeper than MAX_OPEN_LEVELS is renamed to the top of the
    tree first, which keeps the open descriptors bounded.
    """
    try:
        root = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    except NotADirectoryError:  # a file, or a symlink (O_NOFOLLOW): remove it, not what it points at
        os.unlink(path)
        return
    try:
        _empty(root)
    finally:
        os.close(root)
    os.rmdir(path)


def _empty(root: int) -> None:
    """Delete everything in the open directory ``root``."""
    stack: list[tuple[int, str, list[str]]] = [(root, "", os.listdir(root))]  # (fd, name in parent, names left)
    hoisted = 0
    try:
        while stack:
            fd, name, pending = stack[-1]
            if not pending:
                stack.pop()
                if stack:
                    os.close(fd)
                    os.rmdir(name, dir_fd=stack[-1][0])
                continue
            entry = pending.pop()
            try:
                os.unlink(entry, dir_fd=fd)
                continue
            except IsADirectoryError:
                pass
            if len(stack) >= MAX_OPEN_LEVELS:
                while True:
                    hoisted += 1
                    moved = f".removing-{hoisted}"
                    try:
                        os.lstat(moved, dir_fd=root)
                    except FileNotFoundError:
                        break
                os.rename(entry, moved, src_dir_fd=fd, dst_dir_fd=root)
                stack[0][2].append(moved)
                continue
            child = os.open(entry, _DIR_FLAGS, dir_fd=fd)
            try:
                names = os.listdir(child)
            except OSError:
                os.close(child)
                raise
            stack.append((child, entry, names))
    finally:
        for fd, _, _ in stack[1:]:
            os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Write everything dirty on ``path``'s filesystem to disk: one syncfs(2) instead of an fsync per file.

    A release of 100,000 files becomes durable in one call, and the artifact beside it in the same one.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
