"""Driving a real ``dewy`` process in tests: its JSON log as an event stream, and an HTTP client loop."""

from __future__ import annotations

import http.client
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

APP = Path(__file__).parent / "apps" / "httpapp.py"


def free_port() -> int:
    """A port free now for a process the test starts to bind, below the kernel's ephemeral range: a port the
    kernel handed out (bind to 0) can be taken meanwhile by any outgoing connection, e.g. one of the other
    dewy processes' to Redis."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(10000, low) if low > 11000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port below the ephemeral range")


class Dewy:
    """``python -m dewy ...`` with JSON logs parsed into events that tests wait for."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dewy", *args[:1], "-f", "json", "-l", "debug", *args[1:]],
            cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": "non-json", "msg": line.rstrip()}
            self.events.put(record)
        self.events.put({"event": "exited"})

    def wait_for(self, event: str | tuple[str, ...], timeout: float = 30, *, already: bool = False, **fields: str) -> dict:
        """The next log record with this event, or one of these (and fields); fails on timeout or if dewy exits first.

        ``already``: a matching record that was read while waiting for something else counts too
        (for events whose order against the awaited one is not fixed).
        """
        wanted = (event,) if isinstance(event, str) else event
        if already:
            for record in self.seen:
                if record.get("event") in wanted and all(record.get(k) == v for k, v in fields.items()):
                    return record
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {event} {fields} within {timeout}s; log: {self.seen[-15:]}")
            try:
                record = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(record)
            if record.get("event") in wanted and all(record.get(k) == v for k, v in fields.items()):
                return record
            if record.get("event") == "exited":
                raise AssertionError(f"dewy exited ({self.process.wait()}) before {event}; log: {self.seen[-15:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def kill(self) -> list[dict]:
        """SIGKILL dewy; returns the log records it wrote before dying that were not yet consumed."""
        self.process.kill()
        self.process.wait(10)
        self._reader.join(10)
        rest = []
        while not self.events.empty():
            rest.append(self.events.get())
        self.seen.extend(rest)
        return rest


def get(port: int, path: str = "/", timeout: float = 5) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@dataclass
class ClientLoop:
    """Requests in a background thread until stopped (bounded by max_requests and max_seconds), counting every failure."""

    port: int
    max_requests: int = 100_000
    max_seconds: float = 120
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._new_body = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for_body(self, body: str, timeout: float = 10) -> bool:
        """Whether the loop got an answer ``body`` within ``timeout``: a deployed event says the new version
        serves, not that this loop's next request has reached it yet."""
        with self._new_body:
            return self._new_body.wait_for(lambda: body in self.bodies, timeout)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                status, body = get(self.port)
            except (OSError, http.client.HTTPException) as exc:  # IncompleteRead & co. count too (not OSErrors)
                self.failures.append(repr(exc))
                continue
            if 200 <= status < 300:
                self.ok += 1
                if not self.bodies or self.bodies[-1] != body:
                    with self._new_body:
                        self.bodies.append(body)
                        self._new_body.notify_all()
            else:
                self.failures.append(f"HTTP {status}")
