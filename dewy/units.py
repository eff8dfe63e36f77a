"""Transient systemd scope units over D-Bus: each app generation in its own cgroup.

Why scopes, not services: a transient service is started by systemd itself, which
cannot hand it dewy's listening sockets (fds 3, 4, ...) nor set LISTEN_PID to the
app's own pid. So dewy spawns the app as before, paused at a gate, asks systemd
to put that pid into a new ``dewy-NAME-gN.scope`` (in ``dewy.slice``, with the
configured MemoryMax, CPUQuota, TasksMax), and opens the gate once the scope
exists. The scope is not in dewy@NAME.service's cgroup, so ``systemctl kill -s
USR1 dewy@NAME`` reaches dewy only and a restarted dewy finds the app still
running. Stopping goes through systemd (StopUnit), which signals the whole cgroup:
no stray process survives.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dewy import log
from dewy.errors import DewyError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
SLICE = "dewy.slice"
JOB_TIMEOUT = 30.0
RESTART_JOBS = {"restart", "try-restart", "reload-or-restart", "reload-or-try-restart"}


class SystemdError(DewyError):
    """systemd refused or failed a request over D-Bus."""


class Systemd:
    """A small client of systemd's Manager API on the system bus (dbus-next)."""

    def __init__(self) -> None:
        self._bus: Any = None
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._removed: dict[str, asyncio.Event] = {}

    async def connect(self) -> None:
        from dbus_next import BusType
        from dbus_next.aio import MessageBus

        try:
            self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except OSError as exc:
            raise SystemdError(f"cannot reach systemd on the system bus: {exc}") from None
        self._bus.add_message_handler(self._on_signal)
        await self._call("AddMatch", "s", [f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}'"],
                         destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus")
        await self._call("Subscribe", "", [])

    def _on_signal(self, message: Any) -> bool:
        if message.interface != MANAGER:
            return False
        if message.member == "JobRemoved":  # (id, job path, unit, result)
            _, job, _, result = message.body
            self._jobs.setdefault(job, asyncio.get_running_loop().create_future())
            if not self._jobs[job].done():
                self._jobs[job].set_result(result)
        elif message.member == "UnitRemoved":
            event = self._removed.get(message.body[0])
            if event:
                event.set()
        return False

    async def _call(self, member: str, signature: str, body: list, *, destination: str = SYSTEMD,
                    path: str = MANAGER_PATH, interface: str = MANAGER) -> list:
        from dbus_next import Message, MessageType

        if self._bus is None:
            await self.connect()
        reply = await self._bus.call(Message(destination=destination, path=path, interface=interface,
                                             member=member, signature=signature, body=body))
        if reply.message_type == MessageType.ERROR:
            detail = reply.body[0] if reply.body else ""
            raise SystemdError(f"systemd {member} failed: {reply.error_name}: {detail}")
        return reply.body

    async def _wait_job(self, job: str, what: str) -> None:
        future = self._jobs.setdefault(job, asyncio.get_running_loop().create_future())
        try:
            result = await asyncio.wait_for(future, JOB_TIMEOUT)
        finally:
            self._jobs.pop(job, None)
        if result != "done":
            raise SystemdError(f"systemd could not {what}: job {result}")

    async def start_scope(self, name: str, pid: int, description: str, properties: dict[str, tuple[str, Any]]) -> None:
        """Create transient scope ``name`` holding ``pid``; returns once systemd has moved it there."""
        from dbus_next import Variant

        props = [["PIDs", Variant("au", [pid])], ["Slice", Variant("s", SLICE)], ["Description", Variant("s", description)],
                 ["CollectMode", Variant("s", "inactive-or-failed")],
                 *([key, Variant(sig, value)] for key, (sig, value) in properties.items())]
        job = (await self._call("StartTransientUnit", "ssa(sv)a(sa(sv))", [name, "fail", props, []]))[0]
        await self._wait_job(job, f"create {name}")

    async def stop(self, name: str) -> None:
        """Stop unit ``name`` (SIGTERM to its whole cgroup, SIGKILL after its stop timeout) and wait until it is gone."""
        removed = self._removed.setdefault(name, asyncio.Event())
        try:
            try:
                job = (await self._call("StopUnit", "ss", [name, "replace"]))[0]
            except SystemdError as exc:
                if "NoSuchUnit" in str(exc):
                    return
                raise
            await self._wait_job(job, f"stop {name}")
            if await self.active_state(name) not in (None, "inactive", "failed"):
                await asyncio.wait_for(removed.wait(), JOB_TIMEOUT)
        finally:
            self._removed.pop(name, None)

    async def _unit_path(self, name: str) -> str | None:
        try:
            return (await self._call("GetUnit", "s", [name]))[0]
        except SystemdError as exc:
            if "NoSuchUnit" in str(exc):
                return None
            raise

    async def _property(self, path: str, interface: str, name: str) -> Any:
        return (await self._call("Get", "ss", [interface, name], path=path, interface=PROPERTIES))[0].value

    async def active_state(self, name: str) -> str | None:
        """``active``, ``inactive``, ... or None if systemd has no such unit."""
        path = await self._unit_path(name)
        return await self._property(path, "org.freedesktop.systemd1.Unit", "ActiveState") if path else None

    async def pending_job(self, name: str) -> str | None:
        """The type of the job queued or running for unit ``name`` (``restart``, ``stop``...), if any."""
        path = await self._unit_path(name)
        if not path:
            return None
        job_id, job_path = await self._property(path, "org.freedesktop.systemd1.Unit", "Job")
        if not job_id:
            return None
        return await self._property(job_path, "org.freedesktop.systemd1.Job", "JobType")

    async def restarting(self, name: str) -> bool:
        try:
            return await self.pending_job(name) in RESTART_JOBS
        except SystemdError as exc:
            log.warning("systemd", f"cannot tell whether {name} is restarting: {exc}")
            return False

    async def aclose(self) -> None:
        if self._bus:
            self._bus.disconnect()


class AppScopes:
    """The supervisor's Placement under systemd: generation N of app NAME runs in ``dewy-NAME-gN.scope``."""

    def __init__(self, systemd: Systemd, instance: str, limits, stop_timeout: float) -> None:
        self.systemd = systemd
        self.instance = instance
        self.properties: dict[str, tuple[str, Any]] = {
            "TimeoutStopUSec": ("t", int(stop_timeout * 1_000_000)),
            "SendSIGKILL": ("b", True),
        }
        if limits.memory_max:
            self.properties["MemoryMax"] = ("t", limits.memory_max)
        if limits.cpu_quota:
            self.properties["CPUQuotaPerSecUSec"] = ("t", int(limits.cpu_quota * 10_000))
        if limits.tasks_max:
            self.properties["TasksMax"] = ("t", limits.tasks_max)

    async def place(self, pid: int, generation: int, version: str) -> str:
        name = f"dewy-{self.instance}-g{generation}.scope"
        await self.systemd.start_scope(name, pid, f"dewy app {self.instance} {version} (generation {generation})",
                                       self.properties)
        return name

    async def stop(self, unit: str) -> None:
        await self.systemd.stop(unit)
