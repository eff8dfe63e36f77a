"""An artifact's bytes landing in a file, readable while they land.

The download writes each chunk once, into the cache's temporary file; the extractor
and the verifiers read the same bytes back (from the page cache) as they arrive, each
at its own pace, so download, hashing and extraction overlap and memory stays flat.
A reader waits for bytes that have not arrived yet; when the spool ends (complete,
or aborted because something failed) every waiting reader wakes up.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path


_NEVER = 1 << 62


class Aborted(Exception):
    """The spool was abandoned (the download or another reader failed, or dewy stops): stop reading."""


class Spool:
    """Writer side: ``write`` as a binary file; ``finish`` once every byte is written, ``abort`` on failure."""

    def __init__(self, path: Path, name: str, fd: int | None = None, *, complete: bool = False) -> None:
        self.path = path
        self.name = name  # the artifact's name: its suffix tells the archive format
        self.fd = fd
        self.size = os.stat(path).st_size if complete else 0
        self.total: int | None = self.size if complete else None  # announced by the download when it knows
        self.done = complete
        self.aborted = False
        self.held: int | None = None  # see of_file
        self._changed = threading.Condition()
        self._wake_at = _NEVER  # the least size a waiting reader needs: writes below it wake nobody

    @classmethod
    def of_file(cls, path: Path, name: str | None = None, held: int | None = None) -> Spool:
        """A spool over a file already complete (a cached artifact, a file:// source); with ``held``, an open
        descriptor of it, every reader reads that file even if ``path`` is replaced meanwhile."""
        spool = cls(path, name or path.name, complete=True)
        spool.held = held
        spool.size = spool.total = os.fstat(held).st_size if held is not None else spool.size
        return spool

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self._grown(len(data))
        return len(data)

    def _grown(self, count: int) -> None:
        with self._changed:
            self.size += count
            if self.size >= self._wake_at:
                self._wake_at = _NEVER  # readers still short say again what they need
                self._changed.notify_all()

    def splice(self, src: int, size: int) -> int:
        """Append up to ``size`` bytes from the file ``src`` (at its position) in the kernel, no copy through Python;
        returns how many (0 at its end)."""
        try:
            count = os.copy_file_range(src, self.fd, size)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            count = os.sendfile(self.fd, src, None, size)
        self._grown(count)
        return count

    def expect(self, total: int) -> None:
        """The download knows how many bytes are coming (for progress)."""
        self.total = total

    def finish(self) -> None:
        with self._changed:
            self.done = True
            self._changed.notify_all()

    def abort(self) -> None:
        with self._changed:
            self.aborted = True
            self._changed.notify_all()

    def wait(self, end: int) -> bool:
        """Block until bytes up to ``end`` are there (True), or the spool ended shorter (False); Aborted if abandoned."""
        with self._changed:
            while not self.aborted and self.size < end and not self.done:
                self._wake_at = min(self._wake_at, end)
                self._changed.wait()
            if self.aborted:
                raise Aborted()
            return self.size >= end

    def reader(self) -> SpoolReader:
        return SpoolReader(self)


class SpoolReader:
    """Reader side: a seekable binary file over the spool whose reads wait for the bytes to arrive."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.fd = os.dup(spool.held) if spool.held is not None else os.open(spool.path, os.O_RDONLY | os.O_CLOEXEC)
        self.pos = 0

    def fileno(self) -> int:
        return self.fd

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            pos += self.pos
        elif whence == os.SEEK_END:
            self.spool.wait(_NEVER)  # the end is known only once the spool is complete
            pos += self.spool.size
        if pos < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self.pos = pos
        return pos

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            self.spool.wait(_NEVER)
            size = max(self.spool.size - self.pos, 0)
        self.spool.wait(self.pos + size)
        data = os.pread(self.fd, size, self.pos)
        self.pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer)
        self.spool.wait(self.pos + len(view))
        count = os.preadv(self.fd, [view], self.pos)
        self.pos += count
        return count

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
