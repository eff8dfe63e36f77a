"""Supervisor and held sockets with real processes and real sockets (tests/apps/httpapp.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dewy import log
from dewy.errors import AppStartError, UsageError
from dewy.server import supervisor as supervisor_module
from dewy.server.supervisor import Supervisor
from dewy.sockets import HeldSockets, parse_ports
from tests.harness import APP, ClientLoop, get

TEST_TIMEOUT = 25


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), TEST_TIMEOUT))


def release(tmp_path: Path, version: str, **knobs: str) -> Path:
    """A release directory: VERSION plus knob files (CRASH, UNHEALTHY, START_DELAY, IGNORE_TERM)."""
    directory = tmp_path / "releases" / version
    directory.mkdir(parents=True)
    (directory / "VERSION").write_text(version)
    for name, content in knobs.items():
        (directory / name).write_text(content)
    return directory


def supervisor(tmp_path: Path, sockets: HeldSockets | None, *args: str, **options: Any) -> Supervisor:
    settings: dict[str, Any] = {"settle": 0.3, "health_url_path": "/health" if sockets else None,
                                "health_timeout": 5, "stop_timeout": 5}
    settings.update(options)
    return Supervisor([sys.executable, str(APP), *args], sockets, workdir=tmp_path, **settings)


async def fetch(port: int, path: str = "/") -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path)


async def eventually(condition: Callable[[], bool], timeout: float = 5) -> None:
    """For state outside the supervisor (files, a client thread) that has no event to await."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    """Neither the process nor anything left in its process group exists."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """dewy log records as dicts (event name, message and fields)."""
    records: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append({"msg": record.getMessage(), "time": record.created, **log.fields_of(record)})

    handler, level = Collect(), log.logger.level
    log.logger.addHandler(handler)
    log.logger.setLevel(logging.DEBUG)
    yield records
    log.logger.removeHandler(handler)
    log.logger.setLevel(level)


# -- ports and sockets ----------------------------------------------------------------------

@pytest.mark.parametrize("specs, expected", [
    (["8000"], [("", 8000)]),
    (["8000,8001"], [("", 8000), ("", 8001)]),
    (["8000-8002"], [("", 8000), ("", 8001), ("", 8002)]),
    (["127.0.0.1:8000"], [("127.0.0.1", 8000)]),
    (["[::1]:8000"], [("::1", 8000)]),
    ([":8000"], [("", 8000)]),
    (["9000", "127.0.0.1:8000-8001, 7000"], [("", 9000), ("127.0.0.1", 8000), ("127.0.0.1", 8001), ("", 7000)]),
    (["8000", "127.0.0.1:8000"], [("", 8000), ("127.0.0.1", 8000)]),
])
def test_parse_ports(specs: list[str], expected: list[tuple[str, int]]) -> None:
    assert parse_ports(specs) == expected


@pytest.mark.parametrize("specs, reason", [
    (["http"], "'http' is not a port number"),
    (["0"], "port 0 is outside 1-65535"),
    (["65536"], "port 65536 is outside 1-65535"),
    (["8005-8000"], "range 8005-8000 is reversed"),
    (["8000,8000"], "port 8000 is given twice"),
    (["8000-8002", "8002"], "port 8002 is given twice"),
    (["8000,"], "empty entry"),
    (["127.0.0.1:"], "a port number is missing"),
    (["::1:8000"], "IPv6 addresses need brackets"),
    (["[127.0.0.1]:80"], "is not an IPv6 address"),
    (["bad_host:80"], "is not a host name"),
])
def test_parse_ports_rejects(specs: list[str], reason: str) -> None:
    with pytest.raises(ValueError, match=r"^bad port spec .*" + reason.replace("[", r"\[")) as caught:
        parse_ports(specs)
    assert "\n" not in str(caught.value)


def test_held_sockets_names_binding_errors_and_adoption() -> None:
    with HeldSockets([("127.0.0.1", 0), ("", 0)]) as held:
        (_, first), (_, second) = held.addresses
        assert held.names == [f"127.0.0.1:{first}", str(second)]
        assert held.fdnames == [f"127.0.0.1_{first}", str(second)]
        assert held.server_starter_port() == f"127.0.0.1:{first}=3;{second}=4"
        assert not any(os.get_inheritable(fd) for fd in held.fds)

        with pytest.raises(UsageError, match=rf"^cannot listen on 127.0.0.1:{first}: Address already in use$"):
            HeldSockets([("127.0.0.1", 0), ("127.0.0.1", first)])

        copies = [os.dup(fd) for fd in held.fds]
        for fd in copies:
            os.set_inheritable(fd, True)  # as systemd hands them over
        with HeldSockets.from_fds(copies) as adopted:
            assert adopted.names == held.names and adopted.fds == copies
            assert not any(os.get_inheritable(fd) for fd in copies)

    read_end, write_end = os.pipe()
    try:
        with pytest.raises(UsageError, match=f"cannot adopt fd {read_end}"):
            HeldSockets.from_fds([read_end])
        os.fstat(read_end)  # still open: adoption failures close nothing
    finally:
        os.close(read_end)
        os.close(write_end)


# -- the app's view ---------------------------------------------------------------------------

def test_app_gets_sockets_as_fd3_and_the_env_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaked, True)  # as a careless library would leave it
    monkeypatch.setenv("SERVER_STARTER_PORT", "stale")
    held = HeldSockets([("127.0.0.1", 0), ("127.0.0.1", 0)])
    ports = [port for _, port in held.addresses]
    rel = release(tmp_path, "v1.0.0")
    sup = supervisor(tmp_path, held, env={"EXTRA": "yes"})

    async def test() -> None:
        await sup.start(rel, "v1.0.0")
        try:
            for port in ports:
                status, body = await fetch(port, "/env")
                assert status == 200
                seen = json.loads(body)
                assert seen["pid"] == sup.pid
                assert seen["fds"] == [0, 1, 2, 3, 4]
                assert seen["sockets"] == {"3": ["127.0.0.1", ports[0]], "4": ["127.0.0.1", ports[1]]}
                assert seen["cwd"] == str(tmp_path.resolve())
                env = seen["env"]
                assert env["LISTEN_FDS"] == "2"
                assert env["LISTEN_PID"] == str(sup.pid)
                assert env["LISTEN_FDNAMES"] == f"127.0.0.1_{ports[0]}:127.0.0.1_{ports[1]}"
                assert env["SERVER_STARTER_PORT"] == f"127.0.0.1:{ports[0]}=3;127.0.0.1:{ports[1]}=4"
                assert env["SERVER_STARTER_GENERATION"] == "1"
                assert env["DEWY_VERSION"] == "v1.0.0"
                assert env["DEWY_RELEASE_DIR"] == str(rel)
                assert env["EXTRA"] == "yes"
            assert sup.generation == 1 and sup.state == "running" and sup.version == "v1.0.0"
        finally:
            await sup.stop()

    try:
        run(test)
    finally:
        os.close(leaked)
        held.close()


# -- restarts -----------------------------------------------------------------------------------

def test_graceful_restart_loses_no_request(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    held = HeldSockets([("127.0.0.1", 0)])
    port = held.addresses[0][1]
    v1 = release(tmp_path, "v1")
    v2 = release(tmp_path, "v2", START_DELAY="0.7")  # the old generation must keep answering meanwhile
    sup = supervisor(tmp_path, held)

    async def test() -> None:
        await sup.start(v1, "v1")
        old_pid = sup.pid
        try:
            with ClientLoop(port, max_requests=20_000, max_seconds=20) as client:
                await eventually(lambda: client.ok >= 20)
                in_flight = asyncio.create_task(fetch(port, "/sleep?s=1.5"))
                await sup.restart(v2, "v2")
                # restart() returns while the old generation drains; once it has exited only v2 answers
                await sup.wait_until(lambda: old_pid not in sup.live_pids, 10)
                served_before, changes_before = client.ok, len(client.bodies)
                await eventually(lambda: client.ok >= served_before + 50)
            assert await in_flight == (200, "slept")  # the old generation finished it before exiting
            assert client.failures == []
            # Both generations answer while they overlap; once the old one has exited, only v2 does.
            assert client.bodies[0] == "v1" and client.bodies[-1] == "v2"
            assert set(client.bodies) == {"v1", "v2"} and set(client.bodies[changes_before:]) <= {"v2"}
            # Ready only once v2 itself answered: the old generation's answers do not count.
            spawned, ready = (next(e["time"] for e in events if e.get("event") == name and e["generation"] == 2)
                              for name in ("app-starting", "app-ready"))
            assert ready - spawned >= 0.7
            assert gone(old_pid)
            assert sup.generation == 2 and sup.version == "v2" and sup.release_dir == v2
            assert sup.live_pids == [sup.pid]
            env = json.loads((await fetch(port, "/env"))[1])["env"]
            assert (env["SERVER_STARTER_GENERATION"], env["DEWY_VERSION"]) == ("2", "v2")
        finally:
            await sup.stop()

    try:
        run(test)
    finally:
        held.close()
    assert [e["generation"] for e in events if e.get("event") == "app-healthy"] == [1, 2]


@pytest.mark.parametrize("knob, message", [
    ("CRASH", r"app version v2 \(generation 2, pid \d+\) exited with status 3 before it became ready"),
    ("UNHEALTHY", r"app version v2 \(generation 2\) failed its health check for 1.5s: GET http://127\.0\.0\.1:\d+/health: "),
])
def test_failed_new_generation_keeps_the_old_one_serving(tmp_path: Path, knob: str, message: str) -> None:
    held = HeldSockets([("127.0.0.1", 0)])
    port = held.addresses[0][1]
    v1, v2 = release(tmp_path, "v1"), release(tmp_path, "v2", **{knob: ""})
    sup = supervisor(tmp_path, held, health_timeout=1.5)

    async def test() -> None:
        await sup.start(v1, "v1")
        pid = sup.pid
        try:
            with ClientLoop(port, max_requests=20_000, max_seconds=20) as client:
                with pytest.raises(AppStartError, match=message):
                    await sup.restart(v2, "v2")
            # v2 took real requests while it was being checked (it accepts from the shared socket),
            # and finished them when stopped: no client saw an error.
            assert client.failures == [] and client.ok > 0 and client.bodies[-1] == "v1"
            assert (sup.pid, sup.generation, sup.version, sup.state) == (pid, 1, "v1", "running")
            assert sup.live_pids == [pid]  # the failed generation is gone
            assert await fetch(port) == (200, "v1")
            await sup.restart()  # SIGUSR1-style: the same release again
            assert sup.generation == 3 and sup.version == "v1" and await fetch(port) == (200, "v1")
        finally:
            await sup.stop()

    try:
        run(test)
    finally:
        held.close()


@pytest.mark.parametrize("command, status", [([sys.executable, str(APP)], 3), (["./no-such-app"], 127)])
def test_first_start_failure_is_an_app_start_error(tmp_path: Path, command: list[str], status: int) -> None:
    sup = Supervisor(command, None, workdir=tmp_path, settle=10)  # the exit ends the wait: long only under load

    async def test() -> None:
        with pytest.raises(AppStartError, match=rf"^app version v1 .* exited with status {status} before it became ready$"):
            await sup.start(release(tmp_path, "v1", CRASH=""), "v1")
        assert (sup.state, sup.pid, sup.live_pids) == ("stopped", None, [])

    run(test)


def test_crashed_app_is_restarted_with_backoff(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    held = HeldSockets([("127.0.0.1", 0)])
    port = held.addresses[0][1]
    v1 = release(tmp_path, "v1")
    sup = supervisor(tmp_path, held)

    async def test() -> None:
        await sup.start(v1, "v1")
        try:
            (v1 / "CRASH").write_text("")  # the first restart attempt will fail too
            os.kill(sup.pid, signal.SIGKILL)
            await sup.wait_until(lambda: sup.state == "backoff", 5)
            assert (sup.pid, sup.crashes) == (None, 1)
            await sup.wait_until(lambda: sup.crashes == 2, 5)
            (v1 / "CRASH").unlink()
            await sup.wait_until(lambda: sup.state == "running", 10)
            assert sup.generation == 3 and await fetch(port) == (200, "v1")
        finally:
            await sup.stop()

    try:
        run(test)
    finally:
        held.close()
    assert [e["delay"] for e in events if e.get("event") == "app-restart-scheduled"] == [1.0, 2.0]
    exited = [e for e in events if e.get("event") == "app-exited"]
    assert len(exited) == 1 and "was killed by SIGKILL" in exited[0]["msg"]


@contextlib.asynccontextmanager
async def running(sup: Supervisor, release_dir: Path) -> AsyncIterator[None]:
    """``sup`` serving ``release_dir`` (its name as the version) inside the block, stopped after it."""
    await sup.start(release_dir, release_dir.name)
    try:
        yield
    finally:
        await sup.stop()


def test_a_recovery_that_fails_unexpectedly_is_retried_and_a_lost_one_resumed(
        tmp_path: Path, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "BACKOFF_FIRST", 0.05)

    async def test(sup: Supervisor, port: int) -> None:
        spawn = sup._spawn

        async def fd_table_full(*args: Any) -> Any:  # not an AppStartError: os.pidfd_open's EMFILE, say
            sup._spawn = spawn
            raise OSError(24, "Too many open files")

        async with running(sup, release(tmp_path, "v1")):
            sup._spawn = fd_table_full
            os.kill(sup.pid, signal.SIGKILL)
            await sup.wait_until(lambda: sup.state == "running" and sup.pid is not None and sup.crashes == 2, 10)
            assert await fetch(port) == (200, "v1")
            os.kill(sup.pid, signal.SIGKILL)
            await sup.wait_until(lambda: sup.state == "backoff", 5)
            sup._recovery.cancel()  # a recovery lost (however): the next tick finds nothing running
            await asyncio.gather(sup._recovery, return_exceptions=True)
            sup.ensure_recovering()
            await sup.wait_until(lambda: sup.state == "running" and sup.pid is not None, 10)
            assert await fetch(port) == (200, "v1")

    with HeldSockets([("127.0.0.1", 0)]) as held:
        asyncio.run(asyncio.wait_for(test(supervisor(tmp_path, held), held.addresses[0][1]), TEST_TIMEOUT))
    failed = [e["msg"] for e in events if e.get("event") == "app-restart-failed"]
    assert failed == ["restarting the app failed: Too many open files"]


def test_adoption_proves_the_process_is_the_generation_dewy_started(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    stranger = subprocess.Popen(["sleep", "30"])
    time.sleep(0.05)  # start times count in 10 ms clock ticks: the app starts in a later one

    async def test(sup: Supervisor, other: Supervisor) -> None:
        async with running(sup, release(tmp_path, "v1")):
            record = sup.serving()
            assert record.started > 0 and record.boot
            # after a reboot or a crash, the recorded pid belongs to another process
            reused = replace(record, pid=stranger.pid)
            assert not await other.adopt(reused)
            assert not await other.adopt(replace(reused, unit="dewy-app-g1.scope", started=None, boot=None))
            assert other.version is None  # the daemon starts the app from current
            await other.stop()
            assert stranger.poll() is None, "dewy never signals a process it cannot prove is its own"
            assert not await other.adopt(replace(record, started=record.started + 1))
            assert await other.adopt(record)  # the real one, proven by its start time in this boot
            assert other.pid == sup.pid and other.version == "v1"
            await other.stop()

    try:
        with HeldSockets([("127.0.0.1", 0)]) as held:
            asyncio.run(asyncio.wait_for(test(supervisor(tmp_path, held), supervisor(tmp_path, held)), TEST_TIMEOUT))
    finally:
        stranger.kill()
        stranger.wait()
    started = next(e["pid"] for e in events if e.get("event") == "app-starting")
    assert [e["pid"] for e in events if e.get("event") == "app-not-adopted"] == [stranger.pid] * 2 + [started]


# -- stopping -----------------------------------------------------------------------------------

def test_stop_kills_what_ignores_sigterm_and_a_starting_generation(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    held = HeldSockets([("127.0.0.1", 0)])
    stubborn = release(tmp_path, "v1", IGNORE_TERM="")
    slow = release(tmp_path, "v2", START_DELAY="30")
    sup = supervisor(tmp_path, held, stop_timeout=0.5)

    async def test() -> None:
        await sup.start(stubborn, "v1")
        restarting = asyncio.create_task(sup.restart(slow, "v2"))
        await sup.wait_until(lambda: len(sup.live_pids) == 2, 5)
        pids = sup.live_pids
        await sup.stop()
        with pytest.raises(AppStartError, match="was stopped before it became ready"):
            await restarting
        assert all(gone(pid) for pid in pids)
        assert (sup.state, sup.pid, sup.live_pids) == ("stopped", None, [])

    try:
        run(test)
    finally:
        held.close()
    assert [e["generation"] for e in events if e.get("event") == "app-killed"] == [1]


def test_plain_worker_without_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "7")  # as if dewy itself had been socket-activated
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    report = tmp_path / "report.json"
    sup = supervisor(tmp_path, None, "--report", str(report))
    rel = release(tmp_path, "w1")

    def reported() -> dict[str, Any]:
        return json.loads(report.read_text()) if report.exists() else {}

    async def test() -> None:
        await sup.start(rel, "w1")
        try:
            await eventually(lambda: reported().get("pid") == sup.pid)
            seen = reported()
            assert seen["fds"] == [0, 1, 2] and seen["sockets"] == {}
            assert not {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "SERVER_STARTER_PORT"} & set(seen["env"])
            assert seen["env"]["DEWY_VERSION"] == "w1" and seen["version"] == "w1"
            first = sup.pid
            await sup.restart()
            await eventually(lambda: reported().get("pid") == sup.pid)
            await sup.wait_until(lambda: first not in sup.live_pids, 10)
            assert sup.pid != first and gone(first)
        finally:
            last = sup.pid
            await sup.stop()
        assert last is not None and gone(last)

    run(test)


def test_app_dies_with_a_killed_dewy_and_frees_the_ports(tmp_path: Path) -> None:
    """Outside systemd nothing else would stop an orphaned app, and a restarted dewy must bind again."""
    rel = release(tmp_path, "v1")
    script = f"""
import asyncio, sys
from pathlib import Path
from dewy.server import supervisor as supervisor_module
from dewy.server.supervisor import Supervisor
from dewy.sockets import HeldSockets

async def main():
    held = HeldSockets([("127.0.0.1", 0)])
    sup = Supervisor([sys.executable, {str(APP)!r}], held, workdir=Path({str(tmp_path)!r}), settle=0.2)
    await sup.start(Path({str(rel)!r}), "v1")
    print(held.addresses[0][1], sup.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""
    dewy = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent)
    try:
        ready, _, _ = select.select([dewy.stdout], [], [], 10)
        assert ready, "the supervisor did not start the app"
        port, app_pid = map(int, dewy.stdout.readline().split())
        assert get(port) == (200, "v1")
        app = os.pidfd_open(app_pid)
        dewy.kill()
        dewy.wait(5)
        assert select.select([app], [], [], 5)[0], "the app outlived dewy"
        os.close(app)
        HeldSockets([("127.0.0.1", port)]).close()
    finally:
        dewy.kill()
        dewy.wait(5)
        dewy.stdout.close()


def test_reuse_takes_inherited_sockets_and_binds_the_rest() -> None:
    """After dewy restarts, the listening sockets systemd kept are reused, never bound twice."""
    first = HeldSockets([("127.0.0.1", 0), ("127.0.0.1", 0)])
    kept_port = first.addresses[0][1]
    kept_fd, dropped_fd = (os.dup(fd) for fd in first.fds)  # what systemd's fd store hands back
    first.close()
    inode = os.fstat(kept_fd).st_ino
    with HeldSockets.reuse([("127.0.0.1", kept_port), ("127.0.0.1", 0)], [kept_fd, dropped_fd]) as held:
        assert held.addresses[0] == ("127.0.0.1", kept_port)
        assert os.fstat(held.fds[0]).st_ino == inode
        assert held.addresses[1][1] not in (0, kept_port)
    with pytest.raises(OSError):
        os.fstat(dropped_fd)  # a socket no longer configured is closed


def test_reuse_takes_the_sockets_back_from_the_serving_app_when_the_fd_store_is_gone() -> None:
    """systemd empties dewy@NAME's fd store once the unit has failed (a configuration error), while
    the app goes on serving on the sockets: the next dewy takes them from the app, not binding anew
    (which EADDRINUSE would refuse) and not refusing the connections queued meanwhile."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    inode = os.fstat(listener.fileno()).st_ino
    app = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.stdin.read()"], stdin=subprocess.PIPE,
                           pass_fds=[listener.fileno()])
    listener.close()                    # only the "app" holds it now
    try:
        with pytest.raises(UsageError, match="Address already in use"):
            HeldSockets.reuse([("127.0.0.1", port)], [])
        waiting = socket.create_connection(("127.0.0.1", port), timeout=5)   # queued while nobody accepts
        with HeldSockets.reuse([("127.0.0.1", port)], [], holders=[os.getpid() + 10**7, app.pid]) as held:
            assert os.fstat(held.fds[0]).st_ino == inode, "the app's socket, not a new one"
            with socket.socket(fileno=os.dup(held.fds[0])) as taken:
                taken.settimeout(5)
                accepted, _ = taken.accept()
                accepted.sendall(b"served")
                assert waiting.recv(6) == b"served"
                accepted.close()
        waiting.close()
    finally:
        app.communicate(b"", timeout=5)
