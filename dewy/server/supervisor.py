"""Runs the app of ``dewy server`` as numbered generations.

Each generation is spawned with dewy's held sockets as fds 3, 4, ... and both the
systemd (LISTEN_*) and Server::Starter (SERVER_STARTER_*) conventions. A graceful
restart starts generation N+1 next to N, waits until it is ready, and only then stops
N; both accept from the same sockets meanwhile, so no connection is refused. A
generation that dies on its own is restarted with exponential backoff.

This is a library: dewy's own signals (SIGUSR1 -> restart(), SIGTERM -> stop()) are
wired up by the daemon.

The health check of a starting generation proves that the *new* generation answered
(:mod:`dewy.server.probe`).

A starting generation takes real connections as soon as it calls accept(), before it is
declared ready; one that then fails is stopped gracefully (SIGTERM), so those requests
still complete, but they were served by the version that is being rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from dewy import log
from dewy.errors import AppStartError, DewyError
from dewy.faults import describe as one_line
from dewy.server.probe import answer, connectable
from dewy.sockets import FIRST_FD, HeldSockets
from dewy.state import AppGeneration, RunningApp
from dewy.tasks import Background

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
STABLE_UPTIME = 60.0  # a generation that lived this long resets the crash backoff
HEALTH_INTERVAL = 0.2
PROBE_TIMEOUT = 5.0

# Runs in the child between posix_spawn and the app (argv: JSON options, then the command).
# posix_spawn cannot chdir, prctl or change user, and LISTEN_PID must be the app's own pid,
# which exec keeps. Options:
# - parent: PR_SET_PDEATHSIG. Outside systemd nothing else would stop the app or free the
#   ports if dewy is killed (kill -9), and a restarted dewy must be able to bind them again.
#   The death signal follows the spawning thread, i.e. the event loop's. Under systemd the app
#   lives in its own scope and must outlive dewy's restarts, so there is none.
# - gate: an fd to read one byte from before going on: dewy opens it once systemd has moved
#   this process into the generation's scope, so the app never runs outside its limits.
# - user/group: the app's identity (dewy runs as root to manage units).
# The shim needs sys.executable to be a Python interpreter (not a frozen binary); ~15-25 ms.
_SHIM = """
import ctypes, json, os, signal, sys
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # discards a SIGUSR1 meant for dewy (blocked since the spawn)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
options, command = json.loads(sys.argv[1]), sys.argv[2:]
if options["parent"]:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    if os.getppid() != options["parent"]:
        os._exit(1)
if options["gate"] is not None and os.read(options["gate"], 1) != b"1":
    os._exit(1)
count = options["count"]
os.closerange(3 + count, os.sysconf("SC_OPEN_MAX"))
for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1):
    signal.signal(sig, signal.SIG_DFL)
if count:
    os.environ["LISTEN_PID"] = str(os.getpid())
try:
    if options["user"] or options["group"]:
        import grp, pwd
        account = pwd.getpwnam(options["user"]) if options["user"] else None
        gid = grp.getgrnam(options["group"]).gr_gid if options["group"] else account.pw_gid
        if account:
            os.initgroups(account.pw_name, gid)
            os.environ.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        else:
            os.setgroups([])
        os.setgid(gid)
        if account:
            os.setuid(account.pw_uid)
    os.chdir(options["workdir"])
    os.execvp(command[0], command)
except (OSError, KeyError) as exc:
    print(f"dewy: cannot run {command[0]!r} in {options['workdir']}: {exc}", file=sys.stderr)
    os._exit(127)
"""
# Inherited from whatever started dewy (e.g. its own socket activation); they must not
# reach the app unless dewy sets them for this generation.
_PROTOCOL_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "SERVER_STARTER_PORT", "SERVER_STARTER_GENERATION")
# What systemd sets for dewy@NAME itself (its notify socket, watchdog, credentials, journal
# stream, directories, invocation): the app is not that service, and an app that finds
# NOTIFY_SOCKET or WATCHDOG_USEC would talk to systemd in dewy's name.
_SERVICE_MANAGER_VARS = frozenset((
    "NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY", "INVOCATION_ID",
    "JOURNAL_STREAM", "MANAGERPID", "SYSTEMD_EXEC_PID", "MAINPID", "FDSTORE", "LOG_NAMESPACE",
    "MEMORY_PRESSURE_WATCH", "MEMORY_PRESSURE_WRITE", "RUNTIME_DIRECTORY", "STATE_DIRECTORY",
    "CACHE_DIRECTORY", "LOGS_DIRECTORY", "CONFIGURATION_DIRECTORY", "MONITOR_EXIT_CODE",
    "MONITOR_EXIT_STATUS", "MONITOR_INVOCATION_ID", "MONITOR_UNIT", "MONITOR_SERVICE_RESULT",
    "TRIGGER_UNIT", "TRIGGER_PATH", "TRIGGER_TIMER_REALTIME_USEC", "TRIGGER_TIMER_MONOTONIC_USEC",
    "DEWY_CACHEDIR",
))
_DEFAULT_SIGNALS = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
# `systemctl kill -s USR1 dewy@NAME` signals every process in dewy's cgroup, again and again
# until none is new, so it also hits a generation dewy spawns in answer, before systemd has
# moved it into its own scope: blocked at the spawn, the shim discards it.
_BLOCKED_AT_SPAWN = {signal.SIGUSR1}


def process_identity(pid: int) -> tuple[int, str]:
    """What tells this process from a later one with the same pid: its start time (clock ticks since boot,
    /proc/PID/stat field 22) and the boot it started in. OSError if there is no such process."""
    with open(f"/proc/{pid}/stat") as f:
        started = int(f.read().rpartition(")")[2].split()[19])
    with open("/proc/sys/kernel/random/boot_id") as f:
        return started, f.read().strip()


def in_unit(pid: int, unit: str) -> bool:
    """Is ``pid`` in the cgroup of systemd unit ``unit``?"""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return any(line.rstrip("\n").rpartition("/")[2] == unit for line in f)
    except OSError:
        return False


class _Generation:
    """One app process; its exit is seen through a pidfd, so no SIGCHLD handler is involved, and it is
    signalled through the pidfd, so a signal never reaches a process that took over its pid."""

    def __init__(self, number: int, version: str, pid: int, release_dir: Path, unit: str | None = None,
                 pidfd: int | None = None) -> None:
        self.number = number
        self.version = version
        self.pid = pid
        self.release_dir = release_dir
        self.unit = unit  # its transient systemd scope, when placed in one
        self.child = pidfd is None  # spawned by this dewy (else adopted: a previous dewy's)
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.exited: asyncio.Future[int | None] = self.loop.create_future()  # the wait status
        self.stopper: asyncio.Task[None] | None = None
        self._pidfd = os.pidfd_open(pid) if pidfd is None else pidfd
        # (start time, boot) recorded for adoption; an adopted one's comes from the record
        self.identity: tuple[int | None, str | None] = (None, None)
        if self.child:
            with contextlib.suppress(OSError, ValueError, IndexError):  # without it, only its unit proves it
                self.identity = process_identity(pid)
        self.loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        self.loop.remove_reader(self._pidfd)
        if self.child:
            # The exited leader is not reaped yet, so its pid (= process group id) cannot be reused:
            # kill what is left of the generation's process group so no straggler keeps serving.
            # (An adopted one's leader was reaped by its parent already: its pid may be anyone's now.)
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        try:
            status: int | None = os.waitpid(self.pid, 0)[1]
        except ChildProcessError:  # adopted, or reaped by someone else's waitpid(-1)
            status = None
        os.close(self._pidfd)
        self.exited.set_result(status)

    def signal(self, sig: int, group: bool = False) -> None:
        if self.exited.done():
            return
        if group and self.child:  # not reaped, so the process group id is still ours
            os.killpg(self.pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):  # exited just now
                signal.pidfd_send_signal(self._pidfd, sig)

    @property
    def uptime(self) -> float:
        return self.loop.time() - self.started


def describe(status: int | None) -> str:
    """A wait status for operators: ``exited with status 3`` / ``was killed by SIGKILL``."""
    if status is None:
        return "exited (status unknown)"
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


class Placement(Protocol):
    """Where generations run beyond their own process group (dewy.systemd.units: a transient systemd scope each)."""

    async def place(self, pid: int, generation: int, version: str) -> str:
        """Put the paused process ``pid`` into a new unit; returns the unit's name."""

    async def stop(self, unit: str) -> None:
        """Stop the unit (its whole cgroup) and wait until it is gone."""


class Supervisor:
    """Starts, restarts, crash-restarts and stops app generations; one restart at a time."""

    def __init__(self, command: list[str], sockets: HeldSockets | None, *, workdir: Path, settle: float = 1.0,
                 health_url_path: str | None = None, health_timeout: float = 30, stop_timeout: float = 30,
                 env: dict[str, str] | None = None, placement: Placement | None = None,
                 user: str | None = None, group: str | None = None, output: tuple[int, int] | None = None,
                 hidden: frozenset[str] = frozenset()) -> None:
        if not command:
            raise ValueError("the app command is empty")
        self.command = list(command)
        self.sockets = sockets if sockets is not None and len(sockets) else None
        self.workdir = Path(workdir).resolve()
        self.settle = settle
        self.health_url_path = health_url_path if self.sockets else None
        self.health_timeout = health_timeout
        self.stop_timeout = stop_timeout
        self.env = dict(env or {})
        self.placement = placement
        self.user, self.group = user, group
        self.output = output  # fds for the app's stdout and stderr (journal streams), else dewy's own
        self.hidden = hidden  # variables of dewy's environment the app must not see (dewy's secrets)
        self.state = "stopped"  # stopped | running | backoff (crashed, restart pending) | stopping
        self.crashes = 0  # unexpected exits, including crash restarts that failed to become ready
        self._current: _Generation | None = None
        self._release: tuple[Path, str] | None = None  # what should be running
        self._live: set[_Generation] = set()
        self._counter = 0
        self._lock = asyncio.Lock()
        self._recovery: asyncio.Task[None] | None = None
        self._next_delay = BACKOFF_FIRST
        self._stopping = False
        self._changed = asyncio.Event()
        self._tasks = Background()

    # -- observing -------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Number of the generation serving now (SERVER_STARTER_GENERATION), 0 if none."""
        return self._current.number if self._current else 0

    @property
    def pid(self) -> int | None:
        return self._current.pid if self._current else None

    @property
    def live_pids(self) -> list[int]:
        """Every generation not yet reaped: the serving one, one starting, old ones still draining."""
        return sorted(gen.pid for gen in self._live)

    @property
    def release_dirs(self) -> list[Path]:
        """The release directories of every generation not yet reaped (what pruning must keep)."""
        return [gen.release_dir for gen in self._live]

    @property
    def version(self) -> str | None:
        """The version that runs, or is being crash-restarted."""
        return self._release[1] if self._release else None

    @property
    def release_dir(self) -> Path | None:
        return self._release[0] if self._release else None

    def serving(self) -> AppGeneration | None:
        """The serving generation as a restarted dewy needs it to adopt it; None when nothing serves."""
        gen = self._current
        if gen is None or self._release is None:
            return None
        started, boot = gen.identity
        return AppGeneration(pid=gen.pid, generation=gen.number, version=gen.version, release_dir=str(gen.release_dir),
                             unit=gen.unit, started=started, boot=boot)

    @property
    def changed(self) -> asyncio.Event:
        """Set at the next change (state, generation, crash count, live pids); a fresh Event after each change."""
        return self._changed

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait for ``predicate()`` to hold, re-checking at each change; TimeoutError after ``timeout``."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def adopt(self, record: AppGeneration) -> bool:
        """Take over the generation a previous dewy recorded (``serving()``; it survived dewy's restart in its unit).

        Only if that pid is provably the process dewy started: the same start time in the same boot, and in
        the recorded unit. False otherwise (gone, or the pid is another process's now: it is left alone);
        then the caller starts a new generation as usual.
        """
        pid, unit, generation, version = record.pid, record.unit, record.generation, record.version
        async with self._lock:
            try:
                pidfd = os.pidfd_open(pid)
            except (OSError, TypeError, ValueError):
                return False
            if not proven(pid, record):
                os.close(pidfd)
                log.warning("app-not-adopted", f"pid {pid} is not the app generation {generation} dewy started "
                            "(another process has that pid now): leaving it alone, starting the app from current",
                            pid=pid, generation=generation)
                return False
            gen = _Generation(generation, version, pid, Path(record.release_dir), unit, pidfd=pidfd)
            gen.identity = (record.started, record.boot)
            release_dir = gen.release_dir
            self._counter = max(self._counter, generation)
            self._live.add(gen)
            self._current, self._release, self._stopping = gen, (Path(release_dir), version), False
            self.state = "running"
            gen.exited.add_done_callback(lambda _: self._on_exit(gen))
            log.info("app-adopted", f"adopted app generation {generation} (pid {pid})", generation=generation,
                     version=version, pid=pid, unit=unit)
            self._notify()
            return True

    async def start(self, release_dir: Path, version: str) -> None:
        """Start the first generation and wait until it is ready; AppStartError if it is not."""
        async with self._lock:
            if self._current or self._recovery:
                raise RuntimeError("the app is already started")
            self._stopping = False
            await self._launch(Path(release_dir), version)

    async def restart(self, release_dir: Path | None = None, version: str | None = None) -> None:
        """Graceful restart into ``release_dir``/``version`` (default: the same again, as for SIGUSR1).

        The old generation keeps serving until the new one is ready and is stopped only then.
        If the new one fails, it is killed, the old one keeps serving, and AppStartError is raised.
        Returns once the new generation serves and the old one was told to stop: the old one drains
        its in-flight requests in the background (up to stop_timeout), so a deploy is not held up by
        a slow drain (long polls, websockets); ``stop()`` still waits for it.
        """
        async with self._lock:
            if self._release is None:
                raise RuntimeError("restart() before a successful start()")
            old = self._current
            await self._launch(Path(release_dir or self._release[0]), version or self._release[1])
            if self._recovery:
                self._recovery.cancel()
                self._recovery = None
            if old:
                self._retire(old)

    async def stop(self) -> None:
        """SIGTERM every generation (serving or starting), SIGKILL after stop_timeout, wait for all to exit."""
        self._stopping = True
        self.state = "stopping"
        self._notify()
        if self._recovery:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
            self._recovery = None
        await asyncio.gather(*(self._terminate(gen) for gen in list(self._live)))
        self._current = None
        self.state = "stopped"
        self._notify()

    # -- generations -----------------------------------------------------------------------

    async def _launch(self, release_dir: Path, version: str) -> None:
        """Spawn a generation, wait until ready and make it current; kill it on failure."""
        if self._stopping:
            raise AppStartError(f"not starting app version {version}: the app is being stopped")
        gen = await self._spawn(release_dir, version)
        try:
            await self._wait_ready(gen)
        except BaseException:
            await self._terminate(gen)
            raise
        self._current = gen
        self._release = (release_dir, version)
        self.state = "running"
        gen.exited.add_done_callback(lambda _: self._on_exit(gen))
        log.info("app-ready", f"app generation {gen.number} is ready", generation=gen.number, version=version, pid=gen.pid)
        self._notify()

    async def _spawn(self, release_dir: Path, version: str) -> _Generation:
        self._counter += 1
        number = self._counter
        env = {k: v for k, v in os.environ.items()
               if k not in _PROTOCOL_VARS and k not in _SERVICE_MANAGER_VARS and k not in self.hidden}
        env.update(self.env)
        env.update(DEWY_VERSION=version, DEWY_RELEASE_DIR=str(release_dir), SERVER_STARTER_GENERATION=str(number))
        count = len(self.sockets) if self.sockets else 0
        gate = os.pipe2(os.O_CLOEXEC) if self.placement else None
        copies: list[int] = []
        try:
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in zip(self.output or (), (1, 2))]
            if self.sockets:
                env.update(LISTEN_FDS=str(count), LISTEN_FDNAMES=":".join(self.sockets.fdnames),
                           SERVER_STARTER_PORT=self.sockets.server_starter_port())
            # Copies numbered above every target, so no dup2 overwrites a source still to be mapped;
            # dup2 leaves the targets without close-on-exec, the copies keep it. Every other fd is
            # closed by the shim.
            sources = [*(self.sockets.fds if self.sockets else ()), *([gate[0]] if gate else ())]
            copies = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_FD + count + 1) for fd in sources]
            actions += [(os.POSIX_SPAWN_DUP2, copy, FIRST_FD + i) for i, copy in enumerate(copies)]
            options = {"parent": 0 if self.placement else os.getpid(), "gate": FIRST_FD + count if gate else None,
                       "count": count, "workdir": str(self.workdir), "user": self.user, "group": self.group}
            argv = [sys.executable, "-I", "-S", "-c", _SHIM, json.dumps(options), *self.command]
            pid = os.posix_spawn(sys.executable, argv, env, file_actions=actions, setpgroup=0,
                                 setsigdef=_DEFAULT_SIGNALS, setsigmask=_BLOCKED_AT_SPAWN)
        except OSError as exc:
            if gate:
                os.close(gate[1])
            raise AppStartError(f"cannot start app version {version}: {exc.strerror or exc}") from None
        finally:
            for fd in [*copies, *(gate[:1] if gate else ())]:
                os.close(fd)
        gen = _Generation(number, version, pid, release_dir)
        self._live.add(gen)
        log.info("app-starting", f"starting app generation {number}", generation=number, version=version, pid=pid,
                 release_dir=str(release_dir))
        if gate:
            unplaced = None
            try:
                gen.unit = await self.placement.place(pid, number, version)
                os.write(gate[1], b"1")
            except DewyError as exc:
                unplaced = exc
            finally:
                os.close(gate[1])  # without the byte the shim exits: the app never runs outside its unit
            if unplaced:
                # Not the release's fault (systemd or its bus failed): no AppStartError, so the version is
                # not quarantined; the deploy is undone and tried again once the fault is gone.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(gen.exited), 5)
                self._live.discard(gen)
                raise DewyError(f"cannot place app generation {number} in its unit: {unplaced}") from None
        self._notify()
        return gen

    async def _wait_ready(self, gen: _Generation) -> None:
        """Ready = healthy, if configured (see the module docstring), and alive for ``settle`` seconds.

        The settle time runs from the spawn, concurrently with the health check, so a healthy app
        is not kept waiting twice.
        """
        if self.health_url_path:
            await self._wait_healthy(gen)
        settled_at = gen.started + self.settle
        await asyncio.wait([gen.exited], timeout=max(0.0, settled_at - gen.loop.time()))
        if gen.exited.done():
            raise self._start_error(gen)

    def _start_error(self, gen: _Generation) -> AppStartError:
        what = "was stopped" if self._stopping else describe(gen.exited.result())
        message = f"app version {gen.version} (generation {gen.number}, pid {gen.pid}) {what} before it became ready"
        if not self._stopping:
            log.error("app-start-failed", message, generation=gen.number, version=gen.version, pid=gen.pid)
        return AppStartError(message)

    async def _wait_healthy(self, gen: _Generation) -> None:
        assert self.sockets and self.health_url_path
        host, port = connectable(*self.sockets.addresses[0])
        url = f"http://{host if ':' not in host else f'[{host}]'}:{port}{self.health_url_path}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.health_timeout
        last = "no answer"
        while True:
            if gen.exited.done():
                raise self._start_error(gen)
            remaining = deadline - loop.time()
            if remaining <= 0:
                message = (f"app version {gen.version} (generation {gen.number}) failed its health check "
                           f"for {self.health_timeout:g}s: GET {url}: {last}")
                log.error("app-start-failed", message, generation=gen.number, version=gen.version, pid=gen.pid)
                raise AppStartError(message)
            pause = HEALTH_INTERVAL
            probe = asyncio.ensure_future(
                asyncio.wait_for(answer(host, port, self.health_url_path, gen.pid, [g.pid for g in self._live if g is not gen]),
                                 min(remaining, PROBE_TIMEOUT)))
            await asyncio.wait([probe, gen.exited], return_when=asyncio.FIRST_COMPLETED)
            if not probe.done():  # the app died while its health was being asked for: no need to wait
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
                raise self._start_error(gen)
            try:
                status = probe.result()
            except TimeoutError:
                if remaining > PROBE_TIMEOUT:  # not merely cut short by the deadline
                    last = f"no answer within {PROBE_TIMEOUT:g}s"
            except (OSError, ValueError) as exc:
                last = str(exc) or type(exc).__name__
            else:
                if status is None:
                    last, pause = "only other generations accepted the connection", 0.005
                elif 200 <= status < 400:
                    log.info("app-healthy", f"app generation {gen.number} answered {status}", generation=gen.number,
                             version=gen.version, url=url)
                    return
                else:
                    last = f"answered {status}"
            await asyncio.wait([gen.exited], timeout=min(pause, max(deadline - loop.time(), 0)))

    def _retire(self, gen: _Generation) -> asyncio.Task[None]:
        """Start stopping one generation (once, however many callers ask for it)."""
        if gen.stopper is None:
            gen.stopper = asyncio.create_task(self._stop_generation(gen))
        return gen.stopper

    async def _terminate(self, gen: _Generation) -> None:
        """Stop one generation and wait until it has exited."""
        await asyncio.shield(self._retire(gen))

    async def _stop_generation(self, gen: _Generation) -> None:
        if gen.unit and self.placement:
            # systemd signals the whole cgroup: SIGTERM, SIGKILL after the unit's stop timeout
            log.info("app-stopping", f"stopping app generation {gen.number}", generation=gen.number, pid=gen.pid,
                     unit=gen.unit)
            try:
                await self.placement.stop(gen.unit)
            except DewyError as exc:
                log.warning("app-stopping", f"systemd could not stop {gen.unit}: {exc}; signalling it", unit=gen.unit)
            else:
                await gen.exited
        if not gen.exited.done():
            log.info("app-stopping", f"stopping app generation {gen.number}", generation=gen.number, pid=gen.pid)
            gen.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(gen.exited), self.stop_timeout)
            except TimeoutError:
                log.warning("app-killed", f"app generation {gen.number} did not stop within {self.stop_timeout:g}s, "
                            "sending SIGKILL", generation=gen.number, pid=gen.pid)
                gen.signal(signal.SIGKILL, group=True)
                await gen.exited
        self._live.discard(gen)
        status = describe(gen.exited.result())
        log.info("app-stopped", f"app generation {gen.number} {status}", generation=gen.number, version=gen.version,
                 pid=gen.pid, status=status)
        self._notify()

    # -- crashes ---------------------------------------------------------------------------

    def _on_exit(self, gen: _Generation) -> None:
        """The serving generation exited: unexpected unless we stopped it or replaced it."""
        self._live.discard(gen)
        if gen is not self._current or self._stopping or gen.stopper is not None:
            return
        self._current = None
        self.crashes += 1
        if gen.unit and self.placement:  # the leader is gone; what it left in its unit goes too
            self._tasks.start(self._terminate(gen), f"stopping what app generation {gen.number} left in {gen.unit}")
        if gen.uptime >= STABLE_UPTIME:
            self._next_delay = BACKOFF_FIRST
        log.warning("app-exited", f"app generation {gen.number} {describe(gen.exited.result())}",
                    generation=gen.number, version=gen.version, pid=gen.pid, uptime=round(gen.uptime, 3))
        self._schedule_recovery()

    def _schedule_recovery(self) -> None:
        self.state = "backoff"
        self._recovery = self._tasks.start(self._recover(), "restarting the crashed app")
        self._notify()

    def ensure_recovering(self) -> None:
        """Level-triggered supervision (each tick): if the app should run but nothing runs it and no recovery is
        under way (one that ended by a bug), restart it with backoff."""
        if self._stopping or self._release is None or self._current is not None or self._lock.locked():
            return
        if self._recovery is None or self._recovery.done():
            log.warning("app-not-running", f"app version {self.version} is not running: restarting it", version=self.version)
            self._schedule_recovery()

    async def _recover(self) -> None:
        """Restart the crashed release with backoff until it is ready (or a restart()/stop() takes over)."""
        while True:
            delay = self._next_delay
            self._next_delay = min(delay * 2, BACKOFF_MAX)
            log.warning("app-restart-scheduled", f"restarting the app in {delay:g}s", delay=delay, version=self.version)
            await asyncio.sleep(delay)
            async with self._lock:
                if self._current is not None or self._release is None:
                    return
                try:
                    await self._launch(*self._release)
                except Exception as exc:  # not only AppStartError: whatever failed, the next attempt follows
                    if not isinstance(exc, AppStartError):
                        log.error("app-restart-failed", f"restarting the app failed: {one_line(exc)}", version=self.version)
                    self.crashes += 1
                    self._notify()
                    continue
                self._recovery = None
                return


def proven(pid: int, record: AppGeneration) -> bool:
    """Does ``record`` prove that ``pid`` is the generation it describes? Every fact it holds must match
    (start time and boot; the unit's cgroup), and it must hold at least one."""
    facts = 0
    if record.started is not None or record.boot is not None:
        try:
            found = process_identity(pid)
        except (OSError, ValueError, IndexError):
            return False
        if (record.started, record.boot) != found:
            return False
        facts += 1
    if record.unit:
        if not in_unit(pid, record.unit):
            return False
        facts += 1
    return facts > 0


def recorded_holders(record: RunningApp | None) -> list[int]:
    """The pid of the recorded generation when it is proven to be that generation, still running: it
    holds the listening sockets, which a dewy whose fd store is gone takes back from it."""
    if not isinstance(record, AppGeneration) or not isinstance(record.pid, int):
        return []
    return [record.pid] if proven(record.pid, record) else []
