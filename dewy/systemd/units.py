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
import contextlib
from collections import OrderedDict
from typing import Any

from dewy import log
from dewy.errors import DewyError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
SLICE = "dewy.slice"
CALL_TIMEOUT = 10.0  # one D-Bus call, connecting included
JOB_TIMEOUT = 30.0  # a job systemd runs for dewy (create a scope, stop one)
EARLY_JOBS = 64  # JobRemoved signals kept while a job's path is not known yet (its call is on the way)
RESTART_JOBS = {"restart", "try-restart", "reload-or-restart", "reload-or-try-restart"}


class SystemdError(DewyError):
    """systemd refused or failed a request over D-Bus, or could not be reached in time."""


class SystemdManager:
    """A small client of systemd's Manager API on the system bus (dbus-next).

    Every call and every job wait has a deadline, and every failure is a SystemdError. A lost
    connection (dbus restarted) is noticed at once and re-established by the next call. Only the
    jobs dewy waits for are tracked: the host's other jobs are not remembered.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address  # None: the system bus
        self._bus: Any = None
        self._watch: asyncio.Task | None = None
        self._connecting = asyncio.Lock()
        self._jobs: dict[str, asyncio.Future[str]] = {}  # job path -> its result, for the jobs being waited for
        self._early: OrderedDict[str, str] = OrderedDict()  # results that came before their job was waited for
        self._creating = 0  # calls under way that create a job
        self._removed: dict[str, asyncio.Event] = {}

    async def _connected(self) -> Any:
        """The bus connection, (re)connected if there is none; one connection however many calls wait for it."""
        async with self._connecting:
            if self._bus is None or not self._bus.connected:
                self._drop(self._bus)
                await self._connect()
            return self._bus

    async def _connect(self) -> None:
        from dbus_next import BusType
        from dbus_next.aio import MessageBus

        try:  # dbus-next opens the socket in the constructor already
            bus = MessageBus(bus_address=self.address) if self.address else MessageBus(bus_type=BusType.SYSTEM)
            async with asyncio.timeout(CALL_TIMEOUT):
                await bus.connect()
        except Exception as exc:
            raise SystemdError(f"cannot reach systemd on the D-Bus system bus: {_reason(exc)}; dewy retries"
                               " (is dbus.service running?)") from None
        bus.add_message_handler(self._on_signal)
        self._bus = bus
        self._watch = asyncio.get_running_loop().create_task(self._watch_bus(bus))
        try:
            await self._send(bus, "AddMatch", "s", [f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}'"],
                             destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus")
            await self._send(bus, "Subscribe", "", [])
        except SystemdError:
            self._drop(bus)
            raise

    async def _watch_bus(self, bus: Any) -> None:
        """Notice a lost connection when it happens: jobs waited for fail now, the next call reconnects."""
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()
        self._drop(bus)

    def _drop(self, bus: Any) -> None:
        if bus is not self._bus or bus is None:
            return
        self._bus = None
        with contextlib.suppress(Exception):
            bus.disconnect()
        for job, future in self._jobs.items():
            if not future.done():
                future.set_exception(SystemdError(f"lost the system bus while waiting for job {job}"))

    def _on_signal(self, message: Any) -> bool:
        if message.interface != MANAGER:
            return False
        if message.member == "JobRemoved":  # (id, job path, unit, result)
            _, job, _, result = message.body
            future = self._jobs.get(job)
            if future is not None:
                if not future.done():
                    future.set_result(result)
            elif self._creating:
                self._early[job] = result
                while len(self._early) > EARLY_JOBS:
                    self._early.popitem(last=False)
        elif message.member == "UnitRemoved":
            event = self._removed.get(message.body[0])
            if event:
                event.set()
        return False

    async def _call(self, member: str, signature: str, body: list, *, destination: str = SYSTEMD,
                    path: str = MANAGER_PATH, interface: str = MANAGER) -> list:
        return await self._send(await self._connected(), member, signature, body, destination=destination, path=path,
                                interface=interface)

    async def _send(self, bus: Any, member: str, signature: str, body: list, *, destination: str = SYSTEMD,
                    path: str = MANAGER_PATH, interface: str = MANAGER) -> list:
        from dbus_next import Message, MessageType

        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await bus.call(Message(destination=destination, path=path, interface=interface,
                                               member=member, signature=signature, body=body))
        except TimeoutError:
            raise SystemdError(f"systemd {member}: no answer within {CALL_TIMEOUT:g}s") from None
        except Exception as exc:  # the connection broke under the call
            self._drop(bus)
            raise SystemdError(f"systemd {member}: lost the system bus ({_reason(exc)}); dewy reconnects") from None
        if reply.message_type == MessageType.ERROR:
            detail = reply.body[0] if reply.body else ""
            raise SystemdError(f"systemd {member} failed: {reply.error_name}: {detail}")
        return reply.body

    async def _job(self, member: str, signature: str, body: list, what: str) -> None:
        """Call ``member``, which queues a job, and wait for the job's end."""
        self._creating += 1
        try:
            job = (await self._call(member, signature, body))[0]
        finally:
            self._creating -= 1
        if job in self._early:
            result = self._early.pop(job)
        else:
            future = self._jobs[job] = asyncio.get_running_loop().create_future()
            try:
                result = await asyncio.wait_for(future, JOB_TIMEOUT)
            except TimeoutError:
                raise SystemdError(f"systemd could not {what}: the job did not end within {JOB_TIMEOUT:g}s") from None
            finally:
                self._jobs.pop(job, None)
        if not self._creating:
            self._early.clear()
        if result != "done":
            raise SystemdError(f"systemd could not {what}: job {result}")

    async def start_scope(self, name: str, pid: int, description: str, properties: dict[str, tuple[str, Any]]) -> None:
        """Create transient scope ``name`` holding ``pid``; returns once systemd has moved it there."""
        from dbus_next import Variant

        props = [["PIDs", Variant("au", [pid])], ["Slice", Variant("s", SLICE)], ["Description", Variant("s", description)],
                 ["CollectMode", Variant("s", "inactive-or-failed")],
                 *([key, Variant(sig, value)] for key, (sig, value) in properties.items())]
        await self._job("StartTransientUnit", "ssa(sv)a(sa(sv))", [name, "fail", props, []], f"create {name}")

    async def stop(self, name: str) -> None:
        """Stop unit ``name`` (SIGTERM to its whole cgroup, SIGKILL after its stop timeout) and wait until it is gone."""
        removed = self._removed.setdefault(name, asyncio.Event())
        try:
            try:
                await self._job("StopUnit", "ss", [name, "replace"], f"stop {name}")
            except SystemdError as exc:
                if "NoSuchUnit" in str(exc):
                    return
                raise
            if await self.active_state(name) not in (None, "inactive", "failed"):
                try:
                    await asyncio.wait_for(removed.wait(), JOB_TIMEOUT)
                except TimeoutError:
                    raise SystemdError(f"systemd stopped {name} but it was not gone within {JOB_TIMEOUT:g}s") from None
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
        self._drop(self._bus)
        if self._watch:
            self._watch.cancel()


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class AppScopes:
    """The supervisor's Placement under systemd: generation N of app NAME runs in ``dewy-NAME-gN.scope``."""

    def __init__(self, systemd: SystemdManager, instance: str, limits, stop_timeout: float) -> None:
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
