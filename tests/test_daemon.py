"""The daemon: backoff, where the cache lives, and the cycle's error boundary (in-process daemons)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dewy.daemon import MAX_BACKOFF, Backoff, Daemon
from dewy.errors import CacheError, RegistryError
from dewy.host import PlainProcess
from dewy.notifiers import ERROR_LIMIT, Notifications
from dewy.registry import REGISTRIES
from dewy.settings import Settings
from dewy.state import State
from dewy.store import default_cache_dir
from tests.conftest import publish
from tests.harness import APP, free_port, get


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    backoff = Backoff(interval=10)
    assert backoff.next_delay() == 10
    delays = []
    for failures in range(1, 10):
        backoff.failures = failures
        delays.append(backoff.next_delay())
    assert 8 <= delays[0] <= 12
    assert 16 <= delays[1] <= 24
    assert max(delays) <= MAX_BACKOFF * 1.2
    assert len({round(d, 6) for d in delays[-3:]}) > 1, "jitter spreads a fleet's retries"
    backoff.failures = 1
    assert backoff.next_delay(retry_after=900) == 900


def test_cache_dir_from_env_then_working_dir_then_temp(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("DEWY_CACHEDIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("DEWY_CACHEDIR")
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / ".dewy" / "cache"
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (readonly / ".dewy").write_text("not a directory")  # mkdir fails even for root
    monkeypatch.chdir(readonly)
    logging.getLogger("dewy").propagate = True
    with caplog.at_level(logging.WARNING, logger="dewy"):
        fallback = default_cache_dir()
    assert fallback.is_dir() and not str(fallback).startswith(str(readonly))
    assert "set DEWY_CACHEDIR" in caplog.text
    os.rmdir(fallback)


# -- the cycle's error boundary (in-process daemons, real file:// registry and app processes) -------------


class Failing:
    """A registry whose every poll raises ``exc`` (a registry outage, or a bug somewhere under the poll)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def current(self):
        raise self.exc

    async def report(self, *args) -> None:
        pass

    async def aclose(self) -> None:
        pass


class Collect:
    """A notifier keeping what it was sent."""

    def __init__(self) -> None:
        self.messages: list = []

    async def send(self, message) -> None:
        self.messages.append(message)

    async def aclose(self) -> None:
        pass


def settings(tmp_path: Path, command: str = "assets", **overrides) -> Settings:
    (tmp_path / "registry").mkdir(exist_ok=True)
    return Settings(mode=command, registry=(tmp_path / "registry").as_uri(), dir=tmp_path / "site",
                    cache=(tmp_path / "cache").as_uri(), interval=10.0, **overrides)


def server_settings(tmp_path: Path, **overrides) -> Settings:
    return settings(tmp_path, "server", ports=[("127.0.0.1", free_port())], health_path="/health", settle_time=0.3,
                    health_timeout=5, stop_timeout=5, app_command=[sys.executable, "current/app.py"], **overrides)


def app_release(tmp_path: Path, tag: str) -> None:
    publish(tmp_path / "registry", tag, {"app.py": APP.read_text(), "VERSION": tag})


def test_a_registry_failing_2000_times_in_a_row_backs_off_at_the_cap_and_notifies_three_times(tmp_path) -> None:
    async def main() -> None:
        daemon = Daemon.from_settings(settings(tmp_path), PlainProcess())
        daemon.registry = Failing(RegistryError("registry.example: 503 Service Unavailable"))
        sent = Collect()
        daemon.notifications = Notifications([sent], "app")
        delays = [await daemon.cycle() for _ in range(2000)]
        await daemon.notifications.flush()
        assert daemon.backoff.failures == 2000
        assert all(MAX_BACKOFF * 0.8 <= d <= MAX_BACKOFF * 1.2 for d in delays[-1000:])
        assert len(sent.messages) == ERROR_LIMIT
        assert State.load(daemon.state.path).last_error == "registry.example: 503 Service Unavailable"

    asyncio.run(main())


def test_poll_backoff_max_bounds_the_wait_between_failing_polls(tmp_path) -> None:
    async def main() -> None:
        config = settings(tmp_path, poll_backoff_max=20.0)
        config.interval = 1.0
        daemon = Daemon.from_settings(config, PlainProcess())
        daemon.registry = Failing(RegistryError("registry.example: 503 Service Unavailable"))
        delays = [await daemon.cycle() for _ in range(40)]
        assert delays[0] < 2 and all(16 <= d <= 24 for d in delays[-20:])

    asyncio.run(main())


def test_any_exception_in_a_cycle_is_that_cycles_error_in_one_line(tmp_path, caplog) -> None:
    async def main() -> None:
        daemon = Daemon.from_settings(settings(tmp_path), PlainProcess())
        sent = Collect()
        daemon.notifications = Notifications([sent], "app")
        daemon.registry = Failing(KeyError("assets"))
        logging.getLogger("dewy").propagate = True
        with caplog.at_level(logging.DEBUG, logger="dewy"):
            delay = await daemon.cycle()
        await daemon.notifications.flush()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in errors] == [
            "internal error KeyError: 'assets' (the debug log has the traceback)"]
        assert any("Traceback" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
        assert daemon.backoff.failures == 1 and 8 <= delay <= 12
        assert [m.summary for m in sent.messages] == [errors[0].getMessage()]
        app_release(tmp_path, "v1.0.0")
        daemon.registry = REGISTRIES.load(REGISTRIES.url(daemon.settings.registry))
        await daemon.cycle()
        assert daemon.backoff.failures == 0 and daemon.state.current.tag == "v1.0.0"

    asyncio.run(main())


class CacheDownFleet:
    """A fleet gate that admits every release and whose shared cache is down when told how a deploy ended."""

    paused = None

    async def hold(self, tag: str | None) -> None:
        pass

    async def gate(self, release):
        return release

    async def report(self, release, error) -> None:
        raise CacheError("redis://127.0.0.1:6379/0: connection refused")


class Reported:
    """The file:// registry, keeping what it was told."""

    def __init__(self, registry) -> None:
        self.registry = registry
        self.reports: list[tuple[str, str | None]] = []

    async def current(self):
        return await self.registry.current()

    async def report(self, release, mode, error) -> None:
        self.reports.append((release.tag, error))

    async def aclose(self) -> None:
        await self.registry.aclose()


def test_a_deploy_the_fleet_cannot_hear_of_is_still_recorded_in_the_registry(tmp_path, caplog) -> None:
    async def main() -> None:
        app_release(tmp_path, "v1.0.0")
        daemon = Daemon.from_settings(settings(tmp_path), PlainProcess())
        daemon.registry = Reported(REGISTRIES.load(REGISTRIES.url(daemon.settings.registry)))
        daemon.fleet = CacheDownFleet()
        logging.getLogger("dewy").propagate = True
        with caplog.at_level(logging.WARNING, logger="dewy"):
            await daemon.cycle()
        assert daemon.state.current.tag == "v1.0.0" and daemon.registry.reports == [("v1.0.0", None)]
        assert [r.getMessage() for r in caplog.records] == [
            "could not tell the fleet of the deploy: redis://127.0.0.1:6379/0: connection refused"]

    asyncio.run(main())


class BrokenHost(PlainProcess):
    """dewy's own code failing outside any cycle (here: telling the service manager it is ready)."""

    def ready(self, status: str) -> None:
        raise RuntimeError("bug")


def test_an_internal_error_ends_dewy_with_1_and_leaves_the_app_running(tmp_path) -> None:
    async def main() -> None:
        app_release(tmp_path, "v1.0.0")
        first = Daemon.from_settings(server_settings(tmp_path), PlainProcess())
        await first.cycle()
        pid = first.target.supervisor.pid
        daemon = Daemon.from_settings(server_settings(tmp_path), BrokenHost())
        daemon.target.supervisor = first.target.supervisor  # the same app process, as a restarted dewy adopts it
        try:
            assert await daemon.serve() == 1
            os.kill(pid, 0)  # still running: the next dewy adopts it
            assert State.load(daemon.state.path).app.pid == pid
        finally:
            await first.target.supervisor.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


class Killed(BaseException):
    """dewy killed (kill -9) at this point: nothing after it runs."""


@pytest.mark.parametrize("app_survives", [False, True], ids=["app-died-with-dewy", "app-adopted"])
def test_a_kill_between_the_switch_and_the_restart_keeps_the_version_on_record(tmp_path, app_survives) -> None:
    async def main() -> None:
        app_release(tmp_path, "v1.0.0")
        first = Daemon.from_settings(server_settings(tmp_path), PlainProcess())
        await first.cycle()
        app_release(tmp_path, "v1.1.0")

        async def killed(*args) -> None:
            raise Killed

        first.target._start_generation = killed
        with pytest.raises(Killed):
            await first.cycle()
        releases = sorted(p.name for p in (tmp_path / "site" / "releases").iterdir())
        second = Daemon.from_settings(server_settings(tmp_path), PlainProcess())
        if app_survives:  # under systemd the old generation keeps running and the next dewy adopts it
            second.target.supervisor = first.target.supervisor
        else:
            await first.target.supervisor.stop()  # outside systemd the app dies with dewy
        try:
            await second.cycle()
            assert second.target.supervisor.version == "v1.1.0"  # DEWY_VERSION, not the release directory's name
            assert sorted(p.name for p in (tmp_path / "site" / "releases").iterdir()) == releases  # not extracted again
            supervisor = second.target.supervisor  # the adopted v1.0.0 drains after the restart, still on the socket
            await supervisor.wait_until(lambda: supervisor.live_pids == [supervisor.pid], 10)
            assert await asyncio.to_thread(get, supervisor.sockets.addresses[0][1]) == (200, "v1.1.0")
        finally:
            await second.target.supervisor.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


class Hung:
    """A placement whose systemd call never returns (a D-Bus call without a deadline, a lost reply)."""

    async def place(self, pid: int, generation: int, version: str) -> str:
        await asyncio.Event().wait()
        return ""

    async def stop(self, unit: str) -> None:
        pass


class Watched(PlainProcess):
    def __init__(self) -> None:
        self.pings = 0

    def watchdog_interval(self) -> float:
        return 0.01

    def ping(self) -> None:
        self.pings += 1


def test_the_watchdog_stops_pinging_when_a_step_is_stuck_past_its_allowance(tmp_path) -> None:
    async def main() -> None:
        app_release(tmp_path, "v1.0.0")
        host = Watched()
        daemon = Daemon.from_settings(server_settings(tmp_path), host)
        now = [1000.0]
        daemon.liveness.clock = lambda: now[0]
        watchdog = asyncio.create_task(daemon._watchdog())
        supervisor = daemon.target.supervisor
        supervisor.placement = Hung()
        cycle = asyncio.create_task(daemon.cycle())
        try:
            while supervisor.live_pids == [] or daemon.liveness.allowance == 0.0:
                await asyncio.sleep(0.01)  # the deploy got to the app's start, which hangs on its unit
            now[0] += daemon.target.start_allowance()  # within what a start may take: still alive
            pings = host.pings
            await asyncio.sleep(0.05)
            assert host.pings > pings
            now[0] += 31  # past it: the loop is wedged
            await asyncio.sleep(0.02)
            pings = host.pings
            await asyncio.sleep(0.05)
            assert host.pings == pings
        finally:
            cycle.cancel()
            watchdog.cancel()
            await asyncio.gather(cycle, watchdog, return_exceptions=True)
            await supervisor.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_backoff_cannot_overflow() -> None:
    backoff = Backoff(interval=300.0, failures=5000)
    assert MAX_BACKOFF * 0.8 <= backoff.next_delay() <= MAX_BACKOFF * 1.2


def test_a_sigusr1_restart_failing_unexpectedly_is_logged_not_lost(tmp_path, caplog) -> None:
    async def main() -> None:
        app_release(tmp_path, "v1.0.0")
        daemon = Daemon.from_settings(server_settings(tmp_path), PlainProcess())
        await daemon.cycle()

        async def broken(*args) -> None:
            raise ValueError("generation counter")

        daemon.target.supervisor.restart = broken
        logging.getLogger("dewy").propagate = True
        try:
            with caplog.at_level(logging.ERROR, logger="dewy"):
                daemon._restart_app()  # what SIGUSR1 runs
                await asyncio.gather(*daemon.background._tasks, return_exceptions=True)
        finally:
            await daemon.target.supervisor.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "the graceful restart failed: internal error ValueError: generation counter "
        "(the debug log has the traceback)"]


def test_dewy_exits_at_once_past_a_worker_thread_a_stop_left_blocked() -> None:
    """An SDK download or a pull in a worker thread that the stop cancelled: Python would wait for it at exit."""
    program = ("import threading\nfrom dewy import log\nfrom dewy.daemon import _leave_blocked_threads\nlog.setup()\n"
               "threading.Thread(target=threading.Event().wait, name='sdk-download').start()\n"
               "_leave_blocked_threads(0)\n")
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and time.monotonic() - began < 5
    assert "leaving 1 blocking operation(s) unfinished" in result.stderr


def test_an_assets_daemon_loads_neither_the_supervisor_nor_container_mode(tmp_path) -> None:
    """A mode's machinery is imported only when that mode runs: an assets host never pays for the others,
    nor for signature checks it did not ask for (cryptography is an extra for a pip install), nor for zstd
    archives, cron windows or fleet rollouts before it meets one."""
    (tmp_path / "registry").mkdir()
    program = ("import sys\nfrom pathlib import Path\nfrom dewy.daemon import Daemon\nfrom dewy.host import PlainProcess\n"
               "from dewy.settings import Settings\n"
               f"Daemon.from_settings(Settings(mode='assets', registry={(tmp_path / 'registry').as_uri()!r}, "
               f"dir=Path({str(tmp_path / 'site')!r})), PlainProcess())\n"
               "print(sorted(m for m in sys.modules if m.startswith(('dewy.server', 'dewy.container', 'dewy.systemd.service',"
               " 'dewy.targets.', 'dewy.cosign', 'cryptography', 'zstandard', 'cronsim', 'dewy.fleet.coordinator'))))\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30,
                            cwd=Path(__file__).parent.parent, env={**os.environ, "DEWY_CACHEDIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "['dewy.targets.assets']"
