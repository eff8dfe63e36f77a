"""dewy.systemd.units against a real dbus-daemon, with a stand-in for systemd's Manager on it: deadlines, a dbus
restart, and a job table that only holds the jobs dewy waits for.

No ``from __future__ import annotations``: dbus-next reads the annotations as D-Bus signatures."""

import asyncio
import itertools
import subprocess
from pathlib import Path

import pytest

from dbus_next.aio import MessageBus
from dbus_next.service import ServiceInterface, method, signal

from dewy.systemd import units
from dewy.systemd.units import SystemdError, SystemdManager

CONFIG = """<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class Manager(ServiceInterface):
    """What dewy uses of org.freedesktop.systemd1.Manager: transient units whose jobs end at once."""

    def __init__(self) -> None:
        super().__init__(units.MANAGER)
        self.ids = itertools.count(1)
        self.hang = False

    @method()
    def Subscribe(self):  # noqa: ANN201 (dbus-next reads annotations as D-Bus signatures)
        pass

    @method()
    async def StartTransientUnit(self, name: "s", mode: "s", properties: "a(sv)", aux: "a(sa(sv))") -> "o":  # noqa: F821
        if self.hang:
            await asyncio.Event().wait()
        number = next(self.ids)
        job = f"/org/freedesktop/systemd1/job/{number}"
        asyncio.get_running_loop().call_soon(self.JobRemoved, number, job, name, "done")
        return job

    @signal()
    def JobRemoved(self, number: "u", job: "o", unit: "s", result: "s") -> "uoss":  # noqa: F821
        return [number, job, unit, result]


class Bus:
    """A private dbus-daemon with the Manager stand-in connected as org.freedesktop.systemd1."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "bus"
        self.config = directory / "bus.conf"
        self.config.write_text(CONFIG.format(path=self.path))
        self.address = f"unix:path={self.path}"
        self.daemon = None
        self.manager = Manager()
        self.service = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self.daemon = subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={self.config}", "--print-address=1"],
                                       stdout=subprocess.PIPE, text=True)
        await asyncio.to_thread(self.daemon.stdout.readline)  # printed once it listens
        self.service = await MessageBus(bus_address=self.address).connect()
        self.service.export(units.MANAGER_PATH, self.manager)
        await self.service.request_name(units.SYSTEMD)

    def stop(self) -> None:
        if self.service:
            self.service.disconnect()
        if self.daemon:
            self.daemon.kill()
            self.daemon.wait()


def test_deadlines_a_dbus_restart_and_a_bounded_job_table(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(units, "CALL_TIMEOUT", 0.5)

    async def main() -> None:
        bus = Bus(tmp_path)
        await bus.start()
        systemd = SystemdManager(bus.address)
        try:
            await systemd.start_scope("dewy-app-g1.scope", 1, "app", {})
            for number in range(1000, 1100):  # the host's other jobs
                bus.manager.JobRemoved(number, f"/org/freedesktop/systemd1/job/{number}", "other.service", "done")
                await asyncio.sleep(0.005)  # dbus-next's writer does not queue past a full socket buffer
            await systemd.start_scope("dewy-app-g2.scope", 1, "app", {})  # after those signals, in order
            assert (systemd._jobs, dict(systemd._early)) == ({}, {})

            bus.manager.hang = True  # systemd does not answer: a deadline, not a wedged dewy
            with pytest.raises(SystemdError, match=r"^systemd StartTransientUnit: no answer within 0.5s$"):
                await systemd.start_scope("dewy-app-g3.scope", 1, "app", {})
            bus.manager.hang = False

            bus.stop()  # dbus restarted
            await bus.start()
            for _ in range(100):  # the lost connection is noticed without a call
                if systemd._bus is None:
                    break
                await asyncio.sleep(0.01)
            assert systemd._bus is None
            await systemd.start_scope("dewy-app-g4.scope", 1, "app", {})  # reconnected by this call
        finally:
            await systemd.aclose()
            bus.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
