"""A fleet of ``dewy assets`` processes sharing one cache against the GitHub API test server.

Used by the Redis and Consul fleet tests: the same scenario, a different shared
cache. It measures what issue 6 asks for: release-listing requests per TTL
window (target 1, at most 2), how long the fleet takes to replace a lock
holder killed in the middle of its refresh, and that every host deploys each
release exactly once.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import host_artifact, tar_gz
from tests.github_server import GitHubServer
from tests.harness import Dewy

OWNER, REPO = "acme", "site"
TOKEN = "fleet-token"


class Listing:
    """Arrival times of the release-listing requests; can hold them (a refresh in flight) until released."""

    def __init__(self, github: GitHubServer) -> None:
        self.times: list[float] = []
        self.changed = threading.Condition()
        self._gate: threading.Event | None = None
        original = github._handle
        listing_path = f"/repos/{OWNER}/{REPO}/releases"

        def handle(call):
            if call.method == "GET" and call.path == listing_path:
                with self.changed:
                    self.times.append(time.monotonic())
                    gate = self._gate
                    self.changed.notify_all()
                if gate is not None:
                    gate.wait(30)
            return original(call)

        github._handle = handle  # the server's handler thread looks it up on the instance

    def hold(self) -> None:
        """Hold the next listing requests (their refresh is in flight) until ``release``."""
        self._gate = threading.Event()

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    def wait_after(self, after: float, timeout: float) -> float:
        """The arrival time of the first listing request after ``after``."""
        with self.changed:
            if not self.changed.wait_for(lambda: any(t > after for t in self.times), timeout):
                raise AssertionError(f"no registry listing request within {timeout}s (requests at {self.times})")
            return min(t for t in self.times if t > after)


@dataclass
class Figures:
    hosts: int
    ttl: float
    interval: float
    windows: list[int] = field(default_factory=list)  # listing requests per TTL window in steady state
    polls_in_windows: int = 0  # registry answers the fleet used during those windows
    min_gap: float = 0.0  # shortest time between two listing requests over the whole run
    takeover: float = 0.0  # lock holder killed mid-refresh -> next listing request by another host
    lock_left: float = 0.0  # how long the killed holder's lock still had to live
    new_release_seen: float = 0.0  # v1.1.0 published -> every host deployed it
    requests: int = 0
    elapsed: float = 0.0
    startup: float = 0.0  # from the first process started to v1.0.0 deployed on every host

    def summary(self) -> str:
        return (f"{self.hosts} hosts, ttl {self.ttl}s, interval {self.interval}s: listing requests per TTL window "
                f"{self.windows} while the fleet polled {self.polls_in_windows} times; min gap between requests "
                f"{self.min_gap:.2f}s; holder killed with {self.lock_left:.2f}s of lock left, takeover after "
                f"{self.takeover:.2f}s; v1.1.0 on every host {self.new_release_seen:.2f}s after publishing; "
                f"{self.requests} listing requests in {self.elapsed:.1f}s (fleet start and first deploy {self.startup:.1f}s)")


def _drain(dewy: Dewy) -> list[dict]:
    """Every record of a stopped dewy (after its reader saw EOF)."""
    dewy._reader.join(10)
    while not dewy.events.empty():
        dewy.seen.append(dewy.events.get())
    return dewy.seen


def _deploys(records: list[dict], version: str) -> int:
    return sum(1 for r in records if r.get("event") == "deployed" and r.get("version") == version)


def run_fleet(tmp_path: Path, cache_url: str, *, hosts: int, ttl: float, interval: float,
              read_lock: Callable[[], tuple[dict, float]], windows: int = 3) -> Figures:
    """The whole scenario; ``read_lock`` returns the lock's JSON value and its remaining lifetime."""
    figures = Figures(hosts, ttl, interval)
    started = time.monotonic()
    members: list[Dewy] = []  # every process started, killed or not
    alive: dict[int, tuple[int, Dewy]] = {}  # pid -> (host number, process)
    with GitHubServer(token=TOKEN) as github:
        listing = Listing(github)
        github.add_release(OWNER, REPO, "v1.0.0", {host_artifact(): tar_gz({"index.html": "one"})})
        env = {"GITHUB_API_URL": github.url, "GITHUB_TOKEN": TOKEN, "DEWY_CACHEDIR": ""}

        def start(n: int) -> Dewy:
            home = tmp_path / f"host{n}"
            home.mkdir(exist_ok=True)
            dewy = Dewy(["assets", "--registry", f"ghr://{OWNER}/{REPO}", "-i", str(interval), "-d", str(home / "site"),
                         "-c", cache_url], cwd=home, env=env)
            members.append(dewy)
            alive[dewy.process.pid] = (n, dewy)
            return dewy

        try:
            for n in range(hosts):
                start(n)
            for _, dewy in alive.values():
                dewy.wait_for("deployed", timeout=60, version="v1.0.0")
            figures.startup = time.monotonic() - started

            # Steady state: listing requests per TTL window, and the answers the fleet used meanwhile.
            marks = {pid: len(dewy.seen) for pid, (_, dewy) in alive.items()}
            t0 = time.monotonic()
            time.sleep(windows * ttl)  # the measurement period itself
            with listing.changed:
                figures.windows = [sum(1 for t in listing.times if t0 + k * ttl <= t < t0 + (k + 1) * ttl)
                                   for k in range(windows)]
            for pid, (_, dewy) in alive.items():
                while not dewy.events.empty():
                    dewy.seen.append(dewy.events.get())
                figures.polls_in_windows += sum(1 for r in dewy.seen[marks[pid]:] if r.get("event") == "up-to-date")

            # Kill the lock holder while its refresh is in flight.
            listing.hold()
            held_at = listing.wait_after(time.monotonic(), 2 * ttl + 2 * interval)
            lock, figures.lock_left = read_lock()
            number, holder = alive.pop(int(lock["pid"]))
            holder.kill()
            killed_at = time.monotonic()
            listing.release()
            taken_over_at = listing.wait_after(killed_at, 2 * ttl + 2 * interval)
            figures.takeover = taken_over_at - killed_at
            new_lock, _ = read_lock()
            assert int(new_lock["pid"]) in alive, (lock, new_lock)
            assert held_at < killed_at

            # A new release: every host deploys it once, including the killed one when it comes back.
            published = time.monotonic()
            github.add_release(OWNER, REPO, "v1.1.0", {host_artifact(): tar_gz({"index.html": "two"})})
            start(number)
            for _, dewy in alive.values():
                dewy.wait_for("deployed", timeout=60, already=True, version="v1.1.0")
            figures.new_release_seen = time.monotonic() - published
            time.sleep(ttl + interval)  # long enough for a wrongly repeated deploy to show
        finally:
            listing.release()
            for dewy in members:
                if dewy.process.poll() is None:
                    dewy.process.send_signal(signal.SIGTERM)
            for dewy in members:
                try:
                    dewy.process.wait(30)
                except subprocess.TimeoutExpired:
                    dewy.process.kill()
                    dewy.process.wait(10)
        figures.elapsed = time.monotonic() - started
        with listing.changed:
            times = list(listing.times)
        figures.requests = len(times)
        figures.min_gap = min((b - a for a, b in zip(times, times[1:])), default=0.0)

    deploys: dict[int, dict[str, int]] = {}
    for dewy in members:
        records = _drain(dewy)
        home = Path(dewy.process.args[dewy.process.args.index("-d") + 1]).parent
        counts = deploys.setdefault(int(home.name.removeprefix("host")), {"v1.0.0": 0, "v1.1.0": 0})
        for version in counts:
            counts[version] += _deploys(records, version)
        if dewy.process.returncode != -signal.SIGKILL:
            assert dewy.process.returncode == 0, records[-10:]
    assert deploys == {n: {"v1.0.0": 1, "v1.1.0": 1} for n in range(hosts)}, deploys
    for n in range(hosts):
        assert (tmp_path / f"host{n}" / "site" / "current" / "index.html").read_text() == "two"
    return figures
