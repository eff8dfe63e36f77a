"""An artifact's bytes as they land, readable while they land.

Two kinds, with the same readers' interface. A :class:`Spool` is a file: the download
writes each chunk once, into the cache's temporary file, and the extractor and the
verifiers read the same bytes back (from the page cache) as they arrive, each at its
own pace. A :class:`MemorySpool` holds only a window of the bytes in memory: for a
downloaded plain .tar that is unpacked and not kept, whose every byte ends up in its
release, so a spool file would write each byte twice. Either way download, hashing
and extraction overlap and memory stays flat.

A reader waits for bytes that have not arrived yet; when the spool ends (complete, or
aborted because something failed) every waiting reader wakes up.
"""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

_NEVER = 1 << 62
_COPY_CHUNK = 8 << 20  # one copy_file_range call, one memory map of the bytes fed to the verifiers
_NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM}  # try the next way of copying
WINDOW = 8 << 20  # bytes a MemorySpool holds by default, at most (plus one write): the slowest reader sets the pace


class Aborted(Exception):
    """The spool was abandoned (the download or another reader failed, or dewy stops): stop reading."""


class _Landing:
    """What both kinds share: how many bytes are in, whether all are, and readers waiting for more."""

    def __init__(self, name: str, size: int = 0, complete: bool = False) -> None:
        self.name = name  # the artifact's name: its suffix tells the archive format
        self.size = size
        self.total: int | None = size if complete else None  # announced by the download when it knows
        self.done = complete
        self.aborted = False
        self._lock = threading.RLock()  # taken directly where nobody waits or is woken: cheaper than the condition
        self._changed = threading.Condition(self._lock)
        self._wake_at = _NEVER  # the least size a waiting reader needs: writes below it wake nobody

    def _grown(self, count: int) -> None:
        """Under the lock: ``count`` more bytes are in."""
        self.size += count
        if self.size >= self._wake_at:
            self._wake_at = _NEVER  # readers still short say again what they need
            self._changed.notify_all()

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

    def wait(self, end: int, reader: _Reader | None = None) -> bool:
        """Block until bytes up to ``end`` are there (True), or the spool ended shorter (False); Aborted if abandoned
        (or ``reader``, who waits, was stopped)."""
        if self.size >= end and not self.aborted and not (reader and reader.stopped):
            return True  # there already: most reads
        with self._changed:
            while not self.aborted and self.size < end and not self.done and not (reader and reader.stopped):
                self._wake_at = min(self._wake_at, end)
                self._changed.wait()
            if self.aborted or reader and reader.stopped:
                raise Aborted()
            return self.size >= end


class Spool(_Landing):
    """Writer side of a file: ``write`` as a binary file; ``finish`` once every byte is written, ``abort`` on failure."""

    def __init__(self, path: Path, name: str, fd: int | None = None, *, complete: bool = False) -> None:
        super().__init__(name, os.stat(path).st_size if complete else 0, complete)
        self.path = path
        self.fd = fd
        self.held: int | None = None  # see of_file

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
        with self._changed:
            self._grown(len(data))
        return len(data)

    def splice(self, src: int, size: int) -> int:
        """Append up to ``size`` bytes from the file ``src`` (at its position) in the kernel, no copy through Python;
        returns how many (0 at its end)."""
        try:
            count = os.copy_file_range(src, self.fd, size)
        except OSError as e:
            if e.errno not in _NO_KERNEL_COPY:
                raise
            count = os.sendfile(self.fd, src, None, size)
        with self._changed:
            self._grown(count)
        return count

    def reader(self) -> SpoolReader:
        return SpoolReader(self)


class _Reader:
    """What both readers share: a seekable binary file whose reads wait for the bytes to arrive."""

    spool: _Landing
    pos: int
    stopped = False

    def stop(self) -> None:
        """End this reader's reads (Aborted), waiting ones too, while the spool goes on for the others."""
        with self.spool._changed:
            self.stopped = True
            self.spool._changed.notify_all()

    def _wait(self, end: int) -> bool:
        return self.spool.wait(end, self)

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
            pos += self._end()
        if pos < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self.pos = pos
        return pos

    def _end(self) -> int:
        self._wait(_NEVER)  # the end is known only once the spool is complete
        return self.spool.size

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(self._end() - self.pos, 0)
        self._wait(self.pos + size)
        data = self._read_at(self.pos, size)
        self.pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _read_at(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class SpoolReader(_Reader):
    """Reader of a :class:`Spool`: reads go to the file, copies stay in the kernel."""

    def __init__(self, spool: Spool) -> None:
        self.spool: Spool = spool
        self.fd = os.dup(spool.held) if spool.held is not None else os.open(spool.path, os.O_RDONLY | os.O_CLOEXEC)
        self.pos = 0
        self.kernel_copy: object = os.copy_file_range  # falls back as the filesystem requires

    def fileno(self) -> int:
        return self.fd

    def _read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        view = memoryview(buffer)
        self._wait(self.pos + len(view))
        count = os.preadv(self.fd, [view], self.pos)
        self.pos += count
        return count

    def views(self) -> Iterator[memoryview]:
        """Every byte from the reader's position on, as they arrive, mapped from the page cache rather than copied."""
        offset = self.pos
        while True:
            whole = self._wait(offset + _COPY_CHUNK)
            end = offset + _COPY_CHUNK if whole else self.spool.size
            if end > offset:
                with mmap.mmap(self.fd, end - offset, access=mmap.ACCESS_READ, offset=offset) as window:
                    with memoryview(window) as view:
                        yield view
            if not whole:
                return
            offset = end

    def copy_to(self, fd: int, offset: int, size: int) -> bool:
        """Append the bytes at ``offset`` to the file ``fd`` as they arrive: copy_file_range(2) (shares the blocks on
        filesystems that can), else sendfile(2), else read and write. False if the spool ends before them."""
        end = offset + size
        while offset < end:
            piece = min(end - offset, _COPY_CHUNK)
            if not self._wait(offset + piece):
                return False
            while piece:
                try:
                    if self.kernel_copy is os.copy_file_range:
                        done = os.copy_file_range(self.fd, fd, piece, offset)
                    elif self.kernel_copy is os.sendfile:
                        done = os.sendfile(fd, self.fd, offset, piece)
                    else:
                        done = write_all(fd, os.pread(self.fd, min(piece, 1 << 20), offset))
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY or self.kernel_copy is None:
                        raise
                    self.kernel_copy = os.sendfile if self.kernel_copy is os.copy_file_range else None
                    continue
                if not done:
                    return False
                offset, piece = offset + done, piece - done
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MemorySpool(_Landing):
    """Writer side of a window in memory: every reader is made before the first write, and a chunk is let go
    once all of them have read past it. A write from a thread waits while the window is full; the event loop
    never blocks, it awaits :meth:`room` after each write instead."""

    def __init__(self, name: str, window: int = WINDOW) -> None:
        super().__init__(name)
        self.window = window
        self.path: Path | None = None  # no file: the bytes are gone once read
        self._chunks: deque[tuple[int, bytes]] = deque()  # (offset, bytes), in order, ending at self.size
        self._held = 0  # bytes in _chunks
        self._floors: dict[MemoryReader, int] = {}  # each open reader's lowest offset it may still read
        self.oldest_end = _NEVER  # where the oldest chunk held ends: a reader short of it frees nothing
        self._blocked = 0  # writers waiting in write
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def write(self, data: bytes | memoryview) -> int:
        chunk = bytes(data)  # kept while readers catch up: never a view of a buffer the writer reuses
        on_loop = _on_event_loop()
        with self._changed:
            while not on_loop and self._held >= self.window and not self.aborted:
                self._blocked += 1
                self._changed.wait()
                self._blocked -= 1
            if self.aborted:
                raise Aborted()
            if self._floors:  # once every reader is done, the bytes are for nobody
                if not self._chunks:
                    self.oldest_end = self.size + len(chunk)
                self._chunks.append((self.size, chunk))
                self._held += len(chunk)
            self._grown(len(chunk))
        return len(chunk)

    async def room(self) -> None:
        """On the event loop, after a write: wait while the window is full (Aborted if the spool was abandoned)."""
        while True:
            with self._changed:
                if self.aborted:
                    raise Aborted()
                if self._held < self.window:
                    return
                event = asyncio.Event()
                self._wakers.append((asyncio.get_running_loop(), event))
            await event.wait()

    def reader(self) -> MemoryReader:
        return MemoryReader(self)

    def abort(self) -> None:
        super().abort()
        self._wake_writers()

    def _pieces(self, start: int, end: int) -> list[memoryview]:
        """The bytes in [start, end) that are in, as views of the chunks (the caller's floor keeps them)."""
        pieces = []
        with self._lock:
            for offset, chunk in self._chunks:
                stop = offset + len(chunk)
                if stop <= start:
                    continue
                if offset >= end:
                    break
                pieces.append(memoryview(chunk)[max(start - offset, 0): min(end, stop) - offset])
        return pieces

    def _passed(self, reader: MemoryReader, floor: int | None) -> None:
        """``reader`` will read nothing below ``floor`` again (None: it is closed); let go of what nobody needs."""
        with self._lock:
            if floor is None:
                self._floors.pop(reader, None)
            else:
                self._floors[reader] = max(self._floors.get(reader, 0), floor)
            low = min(self._floors.values(), default=self.size)
            while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= low:
                self._held -= len(self._chunks.popleft()[1])
            self.oldest_end = self._chunks[0][0] + len(self._chunks[0][1]) if self._chunks else _NEVER
            if self._held < self.window and (self._blocked or self._wakers):
                self._changed.notify_all()
                self._wake_writers()

    def _wake_writers(self) -> None:
        with self._lock:
            wakers, self._wakers = self._wakers, []
        for loop, event in wakers:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # that loop has closed: nobody waits


class MemoryReader(_Reader):
    """Reader of a :class:`MemorySpool`: forward only, but a read may be repeated (the tar reader hands a header it
    does not parse itself to tarfile) and the last byte copied read again (tarfile looks at the last byte of a
    member's data to see that it is there); a seek further back is an error, not a wrong byte."""

    def __init__(self, spool: MemorySpool) -> None:
        self.spool: MemorySpool = spool
        with spool._changed:
            if spool._chunks and spool._chunks[0][0] > 0 or not spool._chunks and spool.size:
                raise RuntimeError("a memory spool's readers are made before its first write")
            spool._floors[self] = 0
        self.pos = self._floor = 0

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            raise OSError(errno.ESPIPE, "a streamed archive cannot be read from its end")
        pos = super().seek(pos, whence)
        if pos < self._floor:
            raise OSError(errno.ESPIPE, f"a streamed archive cannot go back to byte {pos}")
        return pos

    def _read_at(self, offset: int, size: int) -> bytes:
        data = b"".join(self.spool._pieces(offset, offset + size))
        self._passing(offset)
        return data

    def views(self) -> Iterator[memoryview]:
        """Every byte from the reader's position on, as they arrive, as views of the chunks."""
        while self._wait(self.pos + 1):
            for piece in self.spool._pieces(self.pos, _NEVER):
                yield piece
                self.pos += len(piece)
            self._passing(self.pos)

    def copy_to(self, fd: int, offset: int, size: int) -> bool:
        """Append the bytes at ``offset`` to the file ``fd`` as they arrive, one write each.
        False if the spool ends before them."""
        end = offset + size
        while offset < end:
            if not self._wait(offset + 1):
                return False
            for piece in self.spool._pieces(offset, end):
                offset += write_all(fd, piece)
            self._passing(offset - 1)
        return True

    def _passing(self, floor: int) -> None:
        if floor > self._floor:
            self._floor = floor
            if floor >= self.spool.oldest_end:  # else nothing could be let go: the spool need not hear of it
                self.spool._passed(self, floor)

    def close(self) -> None:
        self.spool._passed(self, None)


Reader = SpoolReader | MemoryReader  # what an extraction or a verifier reads from
AnySpool = Spool | MemorySpool


def write_all(fd: int, data: bytes | memoryview) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
