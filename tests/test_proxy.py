"""The host-port proxy of container mode, against in-process TCP backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import pytest

from dewy.container.proxy import TcpProxy
from dewy.errors import DewyError
from dewy.sockets import HeldSockets


async def backend(name: str, delay: float = 0.0):
    """A line server: answers ``NAME LINE`` after ``delay``; ``echo`` mode relays bytes until EOF."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if line.startswith(b"echo"):
                while chunk := await reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
            else:
                await asyncio.sleep(delay)
                writer.write(f"{name} {line.decode().strip()}\n".encode())
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, ("127.0.0.1", server.sockets[0].getsockname()[1])


async def ask(port: int, text: str = "hi") -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{text}\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer.decode().strip()


def run(coroutine) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 30))


def test_round_robin_switch_and_drain() -> None:
    async def main() -> None:
        old_a, a = await backend("old-a")
        old_b, b = await backend("old-b")
        slow_server, slow = await backend("slow", delay=0.5)
        new_server, new = await backend("new")
        with HeldSockets([("127.0.0.1", 0)]) as sockets:
            proxy = TcpProxy(sockets)
            port = sockets.addresses[0][1]
            proxy.set_backends([a, b])
            proxy.start()
            answers = [await ask(port, str(i)) for i in range(4)]
            assert answers == ["old-a 0", "old-b 1", "old-a 2", "old-b 3"]

            proxy.set_backends([slow])
            in_flight = asyncio.create_task(ask(port, "slow"))
            await asyncio.sleep(0.1)
            assert proxy.active([slow]) == 1
            proxy.set_backends([new])  # the switch: new connections only go to the new backend
            assert [await ask(port, str(i)) for i in range(3)] == ["new 0", "new 1", "new 2"]
            assert await in_flight == "slow slow", "a connection made before the switch finishes where it started"
            assert await proxy.drain(1) == 0
            proxy.close()
        for server in (old_a, old_b, slow_server, new_server):
            server.close()

    run(main())


def test_unreachable_backend_is_skipped_and_no_backend_closes() -> None:
    async def main() -> None:
        server, alive = await backend("alive")
        with HeldSockets([("127.0.0.1", 0)]) as held:
            dead_port = held.addresses[0][1]  # bound, never listened on through the proxy: refuses
        with HeldSockets([("127.0.0.1", 0)]) as sockets:
            proxy = TcpProxy(sockets)
            port = sockets.addresses[0][1]
            proxy.set_backends([("127.0.0.1", dead_port), alive])
            proxy.start()
            assert [await ask(port, str(i)) for i in range(4)] == [f"alive {i}" for i in range(4)]
            proxy.set_backends([])
            try:  # closed: nothing to forward to (EOF, or a reset if the request was still unread)
                assert await ask(port) == ""
            except ConnectionResetError:
                pass
            assert proxy.refused == 1
            proxy.close()
        server.close()

    run(main())


def test_bulk_transfer_and_half_close() -> None:
    async def main() -> None:
        server, echo = await backend("echo")
        payload = bytes(range(256)) * 40_000  # 10 MB through flow control
        with HeldSockets([("127.0.0.1", 0)]) as sockets:
            proxy = TcpProxy(sockets)
            proxy.set_backends([echo])
            proxy.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", sockets.addresses[0][1])
            writer.write(b"echo\n")

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()  # half-close: the backend still answers, then closes

            sender = asyncio.create_task(send())
            received = await asyncio.wait_for(reader.read(), 20)
            await sender
            assert received == payload
            writer.close()
            proxy.close()
        server.close()

    run(main())


def test_stopped_accepting_keeps_connections_waiting_in_the_backlog() -> None:
    async def main() -> None:
        server, a = await backend("a")
        with HeldSockets([("127.0.0.1", 0)]) as sockets:
            proxy = TcpProxy(sockets)
            port = sockets.addresses[0][1]
            proxy.set_backends([a])
            proxy.start()
            proxy.stop_accepting()  # as when dewy restarts: the socket stays open
            waiting = asyncio.create_task(ask(port, "queued"))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            later = TcpProxy(sockets)  # the next dewy takes the same socket
            later.set_backends([a])
            later.start()
            assert await waiting == "a queued"
            later.close()
            with contextlib.suppress(Exception):
                proxy.close()
        server.close()

    run(main())


def test_a_restart_waits_for_a_connection_still_looking_for_a_replica() -> None:
    """Accepted while no replica takes connections (the only one restarting) when dewy hands over: the drain
    waits for it to reach a replica instead of cutting it unanswered."""

    async def main() -> None:
        server, a = await backend("a")
        with HeldSockets([("127.0.0.1", 0)]) as held:
            restarting = ("127.0.0.1", held.addresses[0][1])  # closed again: refuses
        with HeldSockets([("127.0.0.1", 0)]) as sockets:
            proxy = TcpProxy(sockets)
            proxy.set_backends([restarting])
            proxy.start()
            asking = asyncio.create_task(ask(sockets.addresses[0][1], "early"))
            while proxy.active() == 0:
                await asyncio.sleep(0.01)
            proxy.stop_accepting()
            draining = asyncio.create_task(proxy.drain(5))
            await asyncio.sleep(0.2)
            assert not draining.done(), "the drain saw nothing in flight"
            proxy.set_backends([a])  # the replica is back
            assert await draining == 0
            proxy.close()
            assert await asking == "a early"
        server.close()

    run(main())


def test_a_connect_that_fails_after_the_switch_goes_to_the_new_backends() -> None:
    import socket

    async def main() -> None:
        server, alive = await backend("new")
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(0)  # never accepts: once its queue is full, a connect hangs (SYNs are dropped)
        filler = [socket.create_connection(blocker.getsockname(), timeout=2)]  # the one place in its queue
        with HeldSockets([("127.0.0.1", 0)]) as sockets:
            proxy = TcpProxy(sockets)
            proxy.set_backends([blocker.getsockname()])
            proxy.start()
            answer = asyncio.create_task(ask(sockets.addresses[0][1], "late"))
            await asyncio.sleep(0.3)
            proxy.set_backends([alive])  # the switch, while the connect to the old backend hangs
            assert await answer == "new late"
            assert proxy.refused == 0
            proxy.close()
        for sock in (*filler, blocker):
            sock.close()
        server.close()

    run(main())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def counted(proxy: TcpProxy) -> list[object]:
    """Each connection the proxy accepts, as the forwarding task it starts (in the proxy's thread)."""
    started: list[object] = []
    start = proxy._tasks.start

    def counting(coroutine, what: str):
        started.append(task := start(coroutine, what))
        return task

    proxy._tasks.start = counting  # type: ignore[method-assign]
    return started


async def settled(proxy: TcpProxy, started: list[object]) -> None:
    """Until the proxy has dealt with every accepted connection (its forwarding tasks ended)."""
    for _ in range(500):
        if started and not proxy._tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the proxy is still forwarding")


def test_a_client_closing_at_once_is_not_a_refused_connection(caplog) -> None:
    async def main() -> None:
        with HeldSockets([("127.0.0.1", 0)]) as held:
            dead_port = held.addresses[0][1]  # bound, not listening: refuses, as a replica still starting
        with HeldSockets([("127.0.0.1", 0)]) as sockets:
            proxy = TcpProxy(sockets)
            port = sockets.addresses[0][1]
            proxy.set_backends([("127.0.0.1", dead_port)])
            started = counted(proxy)
            proxy.start()
            logging.getLogger("dewy").propagate = True
            with caplog.at_level(logging.WARNING, logger="dewy"):
                began = time.monotonic()
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()  # a port check: connect, close
                await settled(proxy, started)
                assert time.monotonic() - began < 1, "given up as soon as the client left, not after 3 s"
            assert proxy.refused == 0 and not caplog.records
            proxy.close()

    run(main())


def test_no_socket_is_left_open_when_connecting_to_a_backend_fails_unexpectedly() -> None:
    async def main() -> None:
        with HeldSockets([("127.0.0.1", 0)]) as sockets:
            proxy = TcpProxy(sockets)
            port = sockets.addresses[0][1]
            proxy.set_backends([("127.0.0.1", 70000)])  # connect() raises OverflowError, not OSError
            started = counted(proxy)
            proxy.start()
            before = open_fds()
            for _ in range(20):
                try:
                    assert await ask(port) == ""
                except ConnectionResetError:
                    pass
            await settled(proxy, started)
            # A leak is one or two sockets per connection (40 here); the process may open a stray fd of its own
            # meanwhile (a thread of an earlier test ending, the loop's lazily made parts), so a little noise is allowed.
            assert open_fds() - before <= 2, "sockets left open by the proxy"
            proxy.close()

    run(main())


class ClosedSockets:
    """Held sockets whose fd is not open (closed under the proxy)."""

    fds = [1 << 20]
    names = ["127.0.0.1:1"]
    addresses = [("127.0.0.1", 1)]


def test_start_fails_at_once_when_the_proxy_cannot_accept() -> None:
    proxy = TcpProxy(ClosedSockets())  # type: ignore[arg-type]
    began = time.monotonic()
    with pytest.raises(DewyError, match=r"^the host port's proxy cannot accept on 127.0.0.1:1: \[Errno 9\] Bad file"):
        proxy.start()
    assert time.monotonic() - began < 1


def test_idle_timeout_closes_only_connections_that_relay_nothing() -> None:
    """--proxy-idle-timeout (upstream's): a connection silent for that long is closed; one that keeps talking stays."""

    async def main() -> None:
        server, echo = await backend("echo")
        with HeldSockets([("127.0.0.1", 0)]) as sockets:
            proxy = TcpProxy(sockets, idle_timeout=0.4)
            port = sockets.addresses[0][1]
            proxy.set_backends([echo])
            proxy.start()
            idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
            busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
            for writer in (idle_writer, busy_writer):
                writer.write(b"echo\n")
            opened = time.monotonic()
            idle_closed = asyncio.create_task(idle_reader.read())  # b"" once the proxy closes it
            while not idle_closed.done():  # bounded by run()'s 30 s
                busy_writer.write(b"ping\n")
                assert await asyncio.wait_for(busy_reader.readline(), 5) == b"ping\n"
                await asyncio.wait([idle_closed], timeout=0.1)
            assert await idle_closed == b"" and 0.4 <= time.monotonic() - opened < 2
            busy_writer.write(b"still\n")
            assert await asyncio.wait_for(busy_reader.readline(), 5) == b"still\n", "the talking one stays open"
            assert proxy.active() == 1
            for writer in (idle_writer, busy_writer):
                writer.close()
            proxy.close()
        server.close()

    run(main())
