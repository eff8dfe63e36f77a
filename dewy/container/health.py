"""Is a replica healthy? Asked of a new replica before it gets traffic, and of serving ones on every tick.

In order of preference:

1. ``--health-path``: ``GET http://REPLICA_IP:CONTAINER_PORT/PATH`` from dewy itself, healthy on
   2xx or 3xx. dewy reaches the replica on dewy's network directly (a rootful bridge network is
   routed from the host), so the answer comes from that replica and no other.
2. The image's own ``HEALTHCHECK`` (when no path is given): healthy once the runtime says so.
   Podman runs the check on request (it schedules checks with systemd timers, which a host
   without systemd does not have); Docker runs it on its own schedule.
3. Neither: healthy once the container port accepts a TCP connection.

In every case the container must be running: one that exits fails at once, with its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib

from dewy import log
from dewy.container.runtimes import Container, Runtime
from dewy.errors import AppStartError
from dewy.healthcheck import status_of

POLL_INTERVAL = 0.2
PROBE_TIMEOUT = 5.0


async def http_status(host: str, port: int, path: str, timeout: float = PROBE_TIMEOUT) -> int:
    """The status code of ``GET path``; OSError/ValueError/TimeoutError when there is no HTTP answer."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            return await status_of(reader, writer, host, port, path)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _port_open(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def check(runtime: Runtime, container: Container, port: int, path: str | None,
                timeout: float = PROBE_TIMEOUT) -> str | None:
    """One check of a running replica: None when healthy, else why not."""
    if not container.running:
        return f"container is {container.status}" + (f" (exit code {container.exit_code})" if container.exit_code else "")
    if not container.ip:
        return "container has no address on dewy's network"
    if path:
        try:
            status = await http_status(container.ip, port, path, timeout)
        except TimeoutError:
            return f"GET {path}: no answer within {timeout:g}s"
        except (OSError, ValueError) as exc:
            return f"GET {path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
        return None if 200 <= status < 400 else f"GET {path} answered {status}"
    if container.health is not None:
        status = await runtime.run_healthcheck(container.id) or container.health
        return None if status == "healthy" else f"HEALTHCHECK: {status}"
    try:
        await _port_open(container.ip, port, timeout)
    except TimeoutError:
        return f"port {port}: no answer within {timeout:g}s"
    except OSError as exc:
        return f"port {port}: {exc.strerror or exc}"
    return None


async def wait_healthy(runtime: Runtime, container_id: str, network: str, *, port: int, path: str | None,
                       timeout: float, what: str) -> Container:
    """Poll until the new replica is healthy; AppStartError when it exits or ``timeout`` passes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "not checked yet"
    while True:
        container = await runtime.inspect(container_id, network)
        if container is None:
            raise AppStartError(f"{what} disappeared before it became healthy")
        if not container.running and container.status not in ("created", "configured", "initialized"):
            code = f" with exit code {container.exit_code}" if container.exit_code is not None else ""
            raise AppStartError(f"{what} exited{code} before it became healthy")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AppStartError(f"{what} failed its health check for {timeout:g}s: {last}")
        if container.running:
            reason = await check(runtime, container, port, path, min(PROBE_TIMEOUT, max(remaining, 0.1)))
            if reason is None:
                log.info("replica-healthy", f"{what} is healthy", container=container.name, ip=container.ip)
                return container
            last = reason
        await asyncio.sleep(min(POLL_INTERVAL, max(deadline - loop.time(), 0)))
