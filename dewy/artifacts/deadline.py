"""Total deadlines for downloads: a server sending a byte every few seconds never trips a per-read timeout.

A download may take DOWNLOAD_FLOOR seconds plus the time its bytes take at
MIN_DOWNLOAD_RATE, so a large artifact on a slow link gets its time and a
trickle is given up on. The asyncio client (httpx, for GitHub) reschedules an
asyncio timeout as bytes arrive; the blocking SDKs (boto3, google-cloud-storage)
read in a worker thread, where a :class:`Watchdog` ends the read at the deadline.
"""

from __future__ import annotations

import socket
import threading
import time

DOWNLOAD_FLOOR = 120.0
MIN_DOWNLOAD_RATE = 256 * 1024  # bytes per second on average: slower is a stalled transfer, not a slow link
_LONGEST_WAIT = 3600.0  # Condition.wait cannot wait forever; the watchdog looks again after this


def download_deadline(start: float, received: int) -> float:
    """When a download begun at ``start`` (a monotonic time) that has ``received`` bytes so far must be done."""
    return start + DOWNLOAD_FLOOR + received / MIN_DOWNLOAD_RATE


def stalled(received: int, seconds: float) -> str:
    """The reason given when a download missed its deadline."""
    return (f"the download stalled ({received} bytes in {seconds:.0f} s, under {MIN_DOWNLOAD_RATE // 1024} KiB/s after"
            f" the first {DOWNLOAD_FLOOR:g} s); dewy retries")


class Stalled(Exception):
    """Raised where the watchdog can interrupt an SDK (a new request after the deadline): no SDK retries it."""


class Watchdog:
    """Shuts the connections of one download down when its deadline passes; the reader reports progress.

    shutdown(2) wakes a recv blocked in another thread, which close(2) does not.
    ``in_flight``: the bytes of a chunk being read, whose time the deadline allows for.
    """

    def __init__(self, start: float, in_flight: int = 0) -> None:
        self.start = start
        self.in_flight = in_flight
        self.received = 0
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._done = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._watch, name="download-deadline", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._done = True
            self._changed.notify()
        self._thread.join()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def progress(self, size: int) -> None:
        with self._changed:
            self.received += size
            self._changed.notify()

    def watch(self, response: object) -> None:
        """Watch the connection of a urllib3 response (found where botocore's set_socket_timeout finds it)."""
        try:
            sock = response._fp.fp.raw._sock  # type: ignore[attr-defined]
        except AttributeError:
            return  # another urllib3/http.client layout: only the per-read timeout is left
        with self._changed:
            if self.fired:
                _shut(sock)
                raise Stalled()
            self._sockets.append(sock)

    def _watch(self) -> None:
        with self._changed:
            while not self._done:
                left = download_deadline(self.start, self.received + self.in_flight) - time.monotonic()
                if left <= 0:
                    self.fired = True
                    for sock in self._sockets:
                        _shut(sock)
                    return
                self._changed.wait(min(left, _LONGEST_WAIT))


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: the read has ended anyway
