"""The fault matrix: each fault injected around a real ``dewy server`` serving the test app under a client loop.

A scenario returns an :class:`Outcome` (what a user would notice: failed requests, whether the app
kept serving, how long dewy took to recover once the fault cleared, what was left half-done);
tests/test_faults.py asserts on it and bench/faults.py prints the table. The registry is the GitHub
test server behind a :class:`FaultProxy`, so the network path can hang, crawl or be slowed down;
the filesystem faults use a small tmpfs (root).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import select
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dewy.daemon import MAX_BACKOFF, Daemon
from dewy.errors import RegistryError
from dewy.host import PlainProcess
from dewy.notifiers import Notifications
from dewy.settings import Settings
from tests.conftest import host_artifact, publish, tar_gz
from tests.faultinject import FORWARD, HANG, THROTTLE, TRICKLE, FastForward, FaultProxy, TinyFs, leftovers
from tests.github_server import GitHubServer
from tests.harness import APP, ClientLoop, Dewy, free_port, get

TOKEN = "ghp_fault_matrix_secret"
OWNER, REPO = "acme", "app"
PROMPT_STOP = 5.0  # seconds from SIGTERM to dewy's exit that count as prompt, whatever is in flight
MAX_REQUESTS = 2_000_000  # the client loop's bound; its time bound (a few WAITs) ends it first at ~1,000 requests/s
WAIT = 120  # the longest any single step of a scenario may take (a hanging peer takes dewy's network deadline)


@dataclass
class Outcome:
    fault: str
    requests: int = 0
    failed: list[str] = field(default_factory=list)  # the client loop's failures, over the whole scenario
    kept_serving: bool = False  # the old version answered while the fault lasted
    recovered_in: float | None = None  # seconds from the fault clearing to dewy's next deploy, by itself
    leftovers: list[str] = field(default_factory=list)  # half-done files and directories after recovery
    errors: list[dict] = field(default_factory=list)  # dewy's error records while the fault lasted

    @property
    def ok(self) -> bool:
        return not self.failed and self.kept_serving and self.recovered_in is not None and not self.leftovers


class Stage:
    """dewy server with the test app, polling the GitHub test server through a FaultProxy every 0.2 s.

    ``root``: where the app's directory and the cache live (a TinyFs for the disk faults).
    """

    def __init__(self, workdir: Path, root: Path | None = None) -> None:
        self.workdir = workdir
        root = root or workdir
        self.site, self.cache = root / "app", root / "cache"
        self.github = GitHubServer(token=TOKEN)
        self.proxy = FaultProxy(("127.0.0.1", self.github.port))
        self.github.root = self.github.url = self.proxy.origin  # API answers and asset redirects alike pass the proxy
        self.port = free_port()
        self.dewy: Dewy | None = None
        self.published: dict[str, dict[str, bytes | str]] = {}  # tag -> its files
        self.digests: dict[str, str] = {}  # tag -> the artifact's sha256

    def publish(self, tag: str, payload: int = 0, files: dict[str, bytes | str] | None = None) -> None:
        """The test app as ``tag`` (or ``files``), with ``payload`` incompressible bytes beside it (a big download)."""
        files = dict(files or {"app.py": APP.read_text(), "VERSION": tag})
        if payload:
            files["payload.bin"] = random.Random(tag).randbytes(payload)
        data = tar_gz(files)
        self.published[tag], self.digests[tag] = files, hashlib.sha256(data).hexdigest()
        checksums = f"{self.digests[tag]}  {host_artifact()}\n".encode()
        self.github.add_release(OWNER, REPO, tag, {host_artifact(): data, "checksums.txt": checksums})

    def start(self, *extra: str) -> Dewy:
        self.dewy = Dewy(
            ["server", "--registry", f"ghr://{OWNER}/{REPO}", "-i", "0.2", "-p", f"127.0.0.1:{self.port}",
             "--settle-time", "0.2", "--health-path", "/health", "--stop-timeout", "5", "-d", str(self.site),
             "-c", self.cache.as_uri(), *extra, "--", sys.executable, "current/app.py"],
            cwd=self.workdir, env={"GITHUB_API_URL": self.proxy.origin, "GITHUB_TOKEN": TOKEN, "GH_TOKEN": ""})
        return self.dewy

    def serving(self, *extra: str) -> Dewy:
        """dewy started and serving v1.0.0."""
        self.publish("v1.0.0")
        dewy = self.start(*extra)
        dewy.wait_for("deployed", version="v1.0.0", timeout=WAIT)
        return dewy

    def version(self) -> str | None:
        """What the app answers now, None if nothing does."""
        try:
            status, body = get(self.port, timeout=5)
        except OSError:
            return None
        return body if status == 200 else None

    def leftovers(self) -> list[str]:
        return leftovers(self.site, self.cache)

    def close(self) -> None:
        if self.dewy:
            self.dewy.kill()
        self.proxy.close()
        self.github.close()


@contextmanager
def stage(workdir: Path, root: Path | None = None) -> Iterator[Stage]:
    s = Stage(workdir, root)
    try:
        yield s
    finally:
        s.close()


def errors_since(dewy: Dewy, mark: int) -> list[dict]:
    """dewy's error records from the ``mark``-th on, and any traceback it printed (lines that are not JSON)."""
    return [r for r in dewy.seen[mark:] if r.get("level") == "error"
            or r.get("event") == "non-json" and r["msg"].startswith(("Traceback", "  File "))]


def _finish(outcome: Outcome, s: Stage, client: ClientLoop) -> Outcome:
    """Count the client loop, stop dewy (a write in flight completes) and look for what was left half-done."""
    outcome.requests, outcome.failed = client.ok + len(client.failures), list(client.failures)
    s.dewy.stop(timeout=WAIT)
    outcome.leftovers = s.leftovers()
    return outcome


# -- disk faults ---------------------------------------------------------------------------------------------

def disk_full(workdir: Path, during: str = "download") -> Outcome:
    """The cache and releases/ share a small filesystem that another file fills while a 60 MB release is deployed
    (``during`` its download: the artifact alone does not fit; or its extraction: the artifact fits, not the
    release extracted beside it while it arrives); then that file is deleted."""
    outcome = Outcome(f"disk full during a 60 MB release's {during}, then freed")
    with TinyFs(workdir / "disk", 200 << 20) as disk, stage(workdir, disk.path) as s:
        dewy = s.serving()
        with ClientLoop(s.port, max_requests=MAX_REQUESTS, max_seconds=2 * WAIT) as client:
            disk.fill(leave={"download": 30 << 20, "extraction": 90 << 20}[during])
            mark = len(dewy.seen)
            s.publish("v1.1.0", payload=60 << 20)
            dewy.wait_for("deploy-failed", timeout=WAIT)
            outcome.errors = errors_since(dewy, mark)
            outcome.kept_serving = s.version() == "v1.0.0" and (s.site / "current" / "VERSION").read_text() == "v1.0.0"
            freed = time.monotonic()
            disk.free()
            dewy.wait_for("deployed", version="v1.1.0", timeout=WAIT)
            outcome.recovered_in = time.monotonic() - freed
        return _finish(outcome, s, client)


class Fifo:
    """A named pipe a shell hook and the test meet at: ``wait`` for a line the hook wrote, ``send`` one to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)

    def wait(self, timeout: float) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # waits for data, not for a writer to open it
        try:
            if not select.select([fd], [], [], timeout)[0]:
                raise AssertionError(f"nothing arrived on {self.path} within {timeout}s")
            os.read(fd, 100)
        finally:
            os.close(fd)

    def send(self) -> None:
        with open(self.path, "w") as pipe:  # the hook is reading it already: it wrote to the other pipe first
            pipe.write("go\n")


def read_only_during_deploy(workdir: Path, during: str = "switch") -> Outcome:
    """The filesystem of the cache and releases/ is remounted read-only for a deploy's ``download`` (before it starts)
    or its ``switch`` (dewy's before-deploy hook holds v1.1.0's first attempt once it is downloaded and extracted
    under its partial name, before the release is named), then read-write again. (Linux refuses the remount while
    a file on it is open for writing: no mid-download case.)"""
    outcome = Outcome(f"filesystem read-only for a deploy's {during}, then read-write")
    reached, proceed, once = Fifo(workdir / "reached"), Fifo(workdir / "proceed"), workdir / "held-once"
    hook = (f'[ "$DEWY_VERSION" != v1.1.0 ] || [ -e {once} ] || '
            f'{{ : > {once}; echo > {reached.path}; read go < {proceed.path}; }}')
    with TinyFs(workdir / "disk", 64 << 20) as disk, stage(workdir, disk.path) as s:
        dewy = s.serving(*(["--before-deploy-hook", hook] if during == "switch" else []))
        with ClientLoop(s.port, max_requests=MAX_REQUESTS, max_seconds=2 * WAIT) as client:
            mark = len(dewy.seen)
            if during == "download":
                disk.remount("ro")
            s.publish("v1.1.0", payload=4 << 20)
            if during == "switch":
                reached.wait(WAIT)  # downloaded and extracted; the hook holds the deploy before the release is named
                disk.remount("ro")
                proceed.send()
            dewy.wait_for("deploy-failed", timeout=WAIT)
            outcome.errors = errors_since(dewy, mark)
            outcome.kept_serving = s.version() == "v1.0.0"
            cleared = time.monotonic()
            disk.remount("rw")
            dewy.wait_for("deployed", version="v1.1.0", timeout=WAIT)
            outcome.recovered_in = time.monotonic() - cleared
        return _finish(outcome, s, client)


# -- network faults ------------------------------------------------------------------------------------------

def registry_unresponsive(workdir: Path, mode: str) -> Outcome:
    """The registry stops answering (``hang``: connected, silent; ``trickle``: one byte every 2 s) while a new
    release is published there; then it answers again."""
    what = {HANG: "registry hangs (accepts, never answers)", TRICKLE: "registry answers one byte every 2 s"}[mode]
    outcome = Outcome(f"{what}, then recovers")
    with stage(workdir) as s:
        dewy = s.serving()
        with ClientLoop(s.port, max_requests=MAX_REQUESTS, max_seconds=3 * WAIT) as client:
            mark = len(dewy.seen)
            s.proxy.mode = mode
            s.publish("v1.1.0")
            dewy.wait_for("deploy-failed", timeout=WAIT)
            outcome.errors = errors_since(dewy, mark)
            outcome.kept_serving = s.version() == "v1.0.0"
            cleared = time.monotonic()
            s.proxy.mode = FORWARD
            dewy.wait_for("deployed", version="v1.1.0", timeout=WAIT)
            outcome.recovered_in = time.monotonic() - cleared
        return _finish(outcome, s, client)


@dataclass
class Stopped(Outcome):
    stop_seconds: float = 0.0  # SIGTERM to dewy's exit
    exit_code: int | None = None
    served_after_stop: str | None = None  # what the app's port answered once dewy had exited

    @property
    def ok(self) -> bool:
        return super().ok and self.exit_code == 0 and self.stop_seconds < PROMPT_STOP and self.served_after_stop is None


def sigterm_during_download(workdir: Path) -> Stopped:
    """SIGTERM while a 50 MB release downloads at 1 MB/s: dewy stops within seconds and leaves nothing half-done;
    started again, it deploys the new one by itself."""
    outcome = Stopped("SIGTERM during a 50 MB download at 1 MB/s, then started again")
    with stage(workdir) as s:
        dewy = s.serving()
        with ClientLoop(s.port, max_requests=MAX_REQUESTS, max_seconds=WAIT) as client:
            s.proxy.rate, s.proxy.mode = 1 << 20, THROTTLE
            s.publish("v1.1.0", payload=50 << 20)
            dewy.wait_for("deploying", version="v1.1.0", timeout=WAIT)
            s.proxy.wait_answered(4 << 20, WAIT)  # a few MB of the artifact are in dewy's cache
            outcome.kept_serving = s.version() == "v1.0.0"
        asked = time.monotonic()
        dewy.process.send_signal(signal.SIGTERM)
        try:
            outcome.exit_code = dewy.process.wait(WAIT)
        finally:
            outcome.stop_seconds = time.monotonic() - asked
        outcome.served_after_stop = s.version()
        outcome.errors = errors_since(dewy, 0)
        outcome.leftovers = s.leftovers()  # right after the stop: nothing a next start would have to clean
        s.proxy.mode = FORWARD
        restarted = time.monotonic()
        dewy = s.start()
        dewy.wait_for(("deployed", "up-to-date"), version="v1.1.0", timeout=WAIT)  # up to date: the stop waited for it
        outcome.recovered_in = time.monotonic() - restarted
        outcome.requests, outcome.failed = client.ok + len(client.failures), list(client.failures)
        return outcome


# -- a registry outage of days, on a fast-forwarded clock --------------------------------------------------

class Outage:
    """The registry failing its next ``failures`` polls, then answering; remembers when (loop time) each poll came."""

    def __init__(self, registry, failures: int) -> None:
        self.registry, self.left = registry, failures
        self.polls: list[float] = []

    async def current(self):
        self.polls.append(asyncio.get_running_loop().time())
        if self.left:
            self.left -= 1
            raise RegistryError("registry.example: 503 Service Unavailable")
        return await self.registry.current()

    async def report(self, *args) -> None:
        await self.registry.report(*args)

    async def aclose(self) -> None:
        await self.registry.aclose()


class Inbox:
    """A notifier keeping what it was sent; ``deployed`` is set by the first deploy notification."""

    def __init__(self) -> None:
        self.messages: list = []
        self.deployed = asyncio.Event()
        self.deployed_at = 0.0

    async def send(self, message) -> None:
        self.messages.append(message)
        if message.outcome == "deployed":
            self.deployed_at = asyncio.get_running_loop().time()
            self.deployed.set()

    async def aclose(self) -> None:
        pass


@dataclass
class Endured(Outcome):
    polls: list[float] = field(default_factory=list)  # loop time of every poll
    error_notifications: int = 0
    exit_code: int | None = None


def registry_outage(workdir: Path, failures: int = 2000) -> Endured:
    """``dewy assets``'s own loop (in process, on a FastForward clock) against a registry failing ``failures`` polls
    in a row, about a week at the backoff cap, while a new release waits there; then the registry answers."""
    outcome = Endured(f"registry fails {failures} times in a row (fast-forwarded clock), then answers")
    registry = workdir / "registry"
    publish(registry, "v1.0.0", {"VERSION": "v1.0.0"})
    settings = Settings(mode="assets", registry=registry.as_uri(), dir=workdir / "site", cache=(workdir / "cache").as_uri(),
                        interval=10.0)
    current = workdir / "site" / "current" / "VERSION"

    async def main() -> None:
        daemon = Daemon.from_settings(settings, PlainProcess())
        inbox = Inbox()
        daemon.notifications = Notifications([inbox], "app")
        await daemon.cycle()  # v1.0.0 deployed, before the outage
        await daemon.notifications.flush()
        inbox.deployed.clear()
        daemon.registry = outage = Outage(daemon.registry, failures)
        publish(registry, "v1.1.0", {"VERSION": "v1.1.0"})
        serving = asyncio.ensure_future(daemon.serve())
        done = asyncio.ensure_future(inbox.deployed.wait())
        try:
            await asyncio.wait([serving, done], return_when=asyncio.FIRST_COMPLETED)
            outcome.kept_serving = not serving.done()  # dewy itself lived through the outage
            daemon.stopping.set()
            outcome.exit_code = await serving
        except Exception as exc:  # dewy's loop itself broke
            outcome.errors.append({"event": "loop-ended", "msg": repr(exc)})
        finally:
            done.cancel()
        outcome.polls = outage.polls
        outcome.error_notifications = sum(1 for m in inbox.messages if m.outcome == "error")
        if inbox.deployed.is_set() and len(outage.polls) > failures:
            outcome.recovered_in = inbox.deployed_at - outage.polls[failures - 1]

    loop, logger = FastForward(), logging.getLogger("dewy")
    quiet = logger.level
    logger.setLevel(logging.CRITICAL)  # 2,000 error lines would go to stderr (no handler in process)
    try:
        loop.run_until_complete(asyncio.wait_for(main(), failures * MAX_BACKOFF * 1.2 + 3600))  # on that clock
    finally:
        loop.close()
        logger.setLevel(quiet)
    if current.read_text() != "v1.1.0":
        outcome.recovered_in = None
    outcome.leftovers = leftovers(workdir / "site", workdir / "cache")
    return outcome


# -- kill -9 anywhere in a deploy ----------------------------------------------------------------------------

def crash_release(tag: str) -> dict[str, bytes | str]:
    """The test app with 2 MB of payload and 400 small files (so that extraction and pruning take a while too)."""
    rng = random.Random(tag)
    return {"app.py": APP.read_text(), "VERSION": tag, "payload.bin": rng.randbytes(2 << 20),
            **{f"static/{n:03}.txt": f"{tag} {n}\n" for n in range(400)}}


def broken_releases(s: Stage) -> list[str]:
    """What a user of the site would find wrong: ``current`` not a complete release, a release under its live name
    that is not complete (half extracted, half deleted), a cached artifact under its final name that is partial."""
    found = []
    releases = s.site / "releases"
    for release in (p for p in releases.iterdir() if not p.name.startswith(".")) if releases.exists() else ():
        files = {str(p.relative_to(release)): p.read_bytes() for p in release.rglob("*") if p.is_file()}
        tag = files.get("VERSION", b"?").decode()
        expected = s.published.get(tag)
        if expected is None or files != {k: v.encode() if isinstance(v, str) else v for k, v in expected.items()}:
            found.append(f"{release.name} ({tag}) is not a complete release: {len(files)} files")
    current = s.site / "current"
    if os.path.lexists(current) and not (current / "VERSION").exists():
        found.append(f"current -> {os.readlink(current)} is not a release")
    for artifact in (s.cache / "artifacts").glob("v*"):
        tag = artifact.name.split("--")[0]
        if hashlib.sha256(artifact.read_bytes()).hexdigest() != s.digests.get(tag):
            found.append(f"{artifact.name} is partial under its final name")
    return found


@dataclass
class Crashed(Outcome):
    killed_in: list[str] = field(default_factory=list)  # dewy's last event of the deploy each kill interrupted


def kill_9_during_deploys(workdir: Path, points: int = 50, seed: int = 11) -> Crashed:
    """kill -9 of dewy at ``points`` random moments of deploys (download, extraction, switch, app start, state,
    pruning with --keep-releases 2), dewy started again after each: it converges with nothing broken."""
    rng = random.Random(seed)
    outcome = Crashed(f"kill -9 at {points} random points of deploys (seed {seed}), started again each time")
    recoveries = []
    with stage(workdir) as s:
        extra = ("--keep-releases", "2", "--settle-time", "0.05")
        dewy = s.serving(*extra)
        s.publish("v1.1.0", files=crash_release("v1.1.0"))
        began = time.monotonic()
        dewy.wait_for("deploying", version="v1.1.0", timeout=WAIT)
        dewy.wait_for("deployed", version="v1.1.0", timeout=WAIT)
        span = time.monotonic() - began  # a whole deploy: the kill points are spread over it
        for n in range(points):
            tag = f"v1.{n + 2}.0"
            s.publish(tag, files=crash_release(tag))
            dewy.wait_for("deploying", version=tag, timeout=WAIT)
            time.sleep(rng.uniform(0, span))  # the fault: the kill lands somewhere in the deploy
            dewy.kill()
            outcome.killed_in.append(next(e["event"] for e in reversed(dewy.seen) if e.get("version") == tag))
            outcome.errors += [{"event": "broken", "msg": f"after the kill in {tag}: {b}"} for b in broken_releases(s)]
            restarted = time.monotonic()
            dewy = s.start(*extra)
            dewy.wait_for(("deployed", "up-to-date"), version=tag, timeout=WAIT)
            recoveries.append(time.monotonic() - restarted)
            env = json.loads(get(s.port, "/env")[1])
            if s.version() != tag or env["env"].get("DEWY_VERSION") != tag:
                outcome.errors.append({"event": "broken", "msg": f"after the restart in {tag}: the app serves "
                                       f"{s.version()!r} with DEWY_VERSION={env['env'].get('DEWY_VERSION')!r}"})
            outcome.errors += [{"event": "broken", "msg": f"after the restart in {tag}: {b}"} for b in broken_releases(s)]
            outcome.errors += [{"event": "broken", "msg": f"after the restart in {tag}: the app started as {r['version']!r}"}
                               for r in dewy.seen if r.get("event") == "app-starting" and r.get("version") not in s.published]
        outcome.kept_serving = not [e for e in outcome.errors if e["event"] == "broken"]
        outcome.recovered_in = max(recoveries)
        outcome.leftovers = s.leftovers()
    return outcome
