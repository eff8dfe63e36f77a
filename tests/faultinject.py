"""Faults to inject around a real dewy: a network path that hangs or crawls, a filesystem that fills up or goes
read-only, a huge artifact that costs no memory. Everything on 127.0.0.1; the filesystem faults need root."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Self

FORWARD, HANG, TRICKLE, THROTTLE = "forward", "hang", "trickle", "throttle"
OWN_DOTFILES = {".dewy", ".kv"}  # dewy's state and a file:// cache's keys; every other dot entry is half-done


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` whose mode can change at any moment, for every connection:

    forward   relay both ways
    hang      accept and hold every byte both ways: the peer is connected but never answers
    trickle   the answer one byte every ``trickle_every`` seconds (a server that is alive, barely)
    throttle  the answer at ``rate`` bytes per second (a slow link)
    """

    def __init__(self, upstream: tuple[str, int], mode: str = FORWARD, *, rate: int = 1 << 20,
                 trickle_every: float = 2.0) -> None:
        self.upstream = upstream
        self.rate = rate
        self.trickle_every = trickle_every
        self.answered = 0  # bytes relayed from upstream to the clients
        self._mode = mode
        self._changed = threading.Condition()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        with self._changed:
            self._mode = mode
            self._changed.notify_all()

    def wait_answered(self, more: int, timeout: float) -> None:
        """Wait until ``more`` further bytes have been relayed to the clients (a download is under way)."""
        with self._changed:
            target = self.answered + more
            if not self._changed.wait_for(lambda: self.answered >= target, timeout):
                raise AssertionError(f"the proxy relayed {self.answered - target + more} of {more} bytes within {timeout}s")

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _wait_while_hung(self) -> bool:
        """Block while the mode is ``hang``; False once the proxy is closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._mode != HANG or self._closed)
        return not self._closed

    def _pump(self, source: socket.socket, sink: socket.socket, answer: bool) -> None:
        """Relay one direction; the mode applies to every byte sent after it changed, even of a chunk read before."""
        try:
            while data := source.recv(1 << 16):
                while data:
                    if not self._wait_while_hung():
                        return
                    mode = self._mode if answer else FORWARD
                    piece = data[:1] if mode == TRICKLE else data[:max(self.rate // 20, 1)] if mode == THROTTLE else data
                    sink.sendall(piece)
                    data = data[len(piece):]
                    if answer:
                        self._relayed(len(piece), mode)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _relayed(self, size: int, mode: str) -> None:
        """Count an answer's bytes; then the pause the mode asks for (cut short when the mode changes)."""
        pause = self.trickle_every if mode == TRICKLE else size / self.rate if mode == THROTTLE else 0.0
        with self._changed:
            self.answered += size
            self._changed.notify_all()
            if pause:
                self._changed.wait_for(lambda: self._mode != mode or self._closed, pause)

    def close(self) -> None:
        self._closed = True
        self.mode = FORWARD  # wakes every pump held by a hang
        self._listener.close()
        for s in self._sockets:
            s.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TinyFs:
    """A tmpfs of ``size`` bytes mounted at ``path`` (root only): fill it, free it, remount it read-only."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
        self.filler = path / "filler"

    def fill(self, leave: int) -> None:
        """Take all but ``leave`` bytes of the free space with a file that is not dewy's."""
        free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
        with open(self.filler, "ab") as out:
            os.posix_fallocate(out.fileno(), 0, os.fstat(out.fileno()).st_size + free - leave)

    def free(self) -> None:
        """The operator deletes what filled the disk."""
        self.filler.unlink(missing_ok=True)

    def remount(self, option: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{option}", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FastForward(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to its next timer whenever nothing is ready: days of backoff in seconds.

    While work runs in a thread (``run_in_executor``, ``asyncio.to_thread``, or a thread of its own
    such as dewy's extraction beside a download) time passes for real, so a timer never races a
    thread. A peer's answer (a socket) is not waited for: fake those.
    """

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0.0
        self._in_threads = 0
        self._threads_before = set(threading.enumerate())
        real_select = self._selector.select

        def select(timeout: float | None = None) -> list:
            if self._in_threads or timeout is None or self._own_threads_alive():
                return real_select(timeout)
            ready = real_select(0)
            if not ready:
                self.skipped += timeout
            return ready

        self._selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return super().time() + self.skipped

    def _own_threads_alive(self) -> bool:
        """A thread started since this loop was made, other than an executor's (counted in run_in_executor:
        its idle workers stay alive)."""
        return any(t not in self._threads_before and not t.name.startswith("asyncio_") for t in threading.enumerate())

    def run_in_executor(self, executor, func, *args) -> asyncio.Future:
        future = super().run_in_executor(executor, func, *args)
        self._in_threads += 1
        future.add_done_callback(lambda _: setattr(self, "_in_threads", self._in_threads - 1))
        return future


class ZeroFilledTar:
    """A valid ``.tar`` holding one ``size``-byte file of zeros, as a test server's asset without holding it
    (what the servers need of ``bytes``): a download that is long however dewy reads it (a stream of zeros is
    no archive, and dewy extracts while it downloads, so it would stop at the first bytes)."""

    def __init__(self, size: int, member: str = "blob") -> None:
        self.header = tarfile.TarInfo(member)
        self.header.size = size
        self.header = self.header.tobuf(format=tarfile.USTAR_FORMAT)
        padded = -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        self.size = len(self.header) + padded + 2 * tarfile.BLOCKSIZE  # what follows the header is zeros: data, end

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: slice) -> bytes:
        start, stop, _ = index.indices(self.size)
        head = self.header[start:stop]
        return head + bytes(max(stop - max(start, len(self.header)), 0))


def leftovers(*directories: Path) -> list[str]:
    """Partial downloads (.tmp-*), extractions (.partial-*), staged symlinks and releases being deleted anywhere
    under ``directories``: dewy names everything half-done with a leading dot."""
    return sorted(str(p) for d in directories if d.exists() for p in d.rglob(".*") if p.name not in OWN_DOTFILES)
