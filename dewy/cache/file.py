"""``file:///DIR``: a cache in a local (or NFS-shared) directory; values survive restarts."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from urllib.parse import quote

from dewy.errors import UsageError
from dewy.fsutil import TEMP_PREFIX, write_atomic
from dewy.urls import Url


class FileCache:
    """Each key is a file under ``DIR/.kv``; its first line holds the expiry time (or ``-``)."""

    def __init__(self, url: Url) -> None:
        url.check_keys(set())
        if url.netloc not in ("", "localhost") or not url.path:
            raise UsageError(f"{url}: expected file:///ABSOLUTE/DIR")
        self.directory = Path(url.path) / ".kv"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{url}: cannot create cache directory: {exc.strerror}") from None

    def _path(self, key: str) -> Path:
        return self.directory / quote(key, safe="")

    def _read(self, key: str) -> bytes | None:
        try:
            header, _, value = self._path(key).read_bytes().partition(b"\n")
        except FileNotFoundError:
            return None
        if header != b"-" and _expiry(header) <= time.time():  # an unreadable expiry counts as expired
            self._path(key).unlink(missing_ok=True)
            return None
        return value

    def _write(self, key: str, value: bytes, ttl: float | None) -> None:
        header = repr(time.time() + ttl).encode() if ttl else b"-"
        write_atomic(self._path(key), header + b"\n" + value)

    def _add(self, key: str, value: bytes, ttl: float) -> bool:
        if self._read(key) is not None:
            return False
        staged = self.directory / f"{TEMP_PREFIX}{os.getpid()}-{quote(key, safe='')}"
        staged.write_bytes(repr(time.time() + ttl).encode() + b"\n" + value)
        try:
            os.link(staged, self._path(key))  # link(2) fails if the key exists: the lock is ours alone
            return True
        except FileExistsError:
            return False
        finally:
            staged.unlink(missing_ok=True)

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._read, key)

    async def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await asyncio.to_thread(self._write, key, value, ttl)

    async def add(self, key: str, value: bytes, ttl: float) -> bool:
        return await asyncio.to_thread(self._add, key, value, ttl)

    async def aclose(self) -> None:
        pass


def _expiry(header: bytes) -> float:
    """The expiry time in a value's first line; 0 (long past) for a damaged one."""
    try:
        return float(header)
    except ValueError:
        return 0.0
