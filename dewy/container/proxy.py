"""The host port of ``dewy container``: a TCP proxy inside dewy, always pointing at healthy replicas.

Why a proxy in dewy, not a published container port: a published port belongs to one
container, so replacing the container means a moment with nothing listening (this is
what ``podman auto-update`` and Watchtower do: stop, then start). dewy instead holds
the listening socket itself, for its whole life, exactly as in server mode: the
socket comes from :class:`dewy.sockets.HeldSockets` through the host adapter, so under
systemd it is also kept in the fd store and survives dewy's own restarts (connections
queue in the kernel's backlog meanwhile, none is refused).

Each accepted connection is forwarded to one backend, round robin over the replicas
that passed their health check (their IP on dewy's network and the container port
that held socket maps to: each ``--port`` may name its own).
A rollout replaces the backend sets in one assignment (:meth:`TcpProxy.set_routes`):
every connection accepted afterwards goes to the new replicas, and connections already
forwarded to old replicas carry on untouched until they finish (the drain). A backend
that refuses or does not answer the connect is tried last for a while and the next one
is tried; nothing was sent yet, so the client never notices. While no replica accepts
at all (the only one restarting), a connection waits up to 3 s for one to.

Bytes are relayed with asyncio protocols and flow control (a slow reader pauses its
peer), half-closes are passed on. With an idle timeout (``--proxy-idle-timeout``, as
upstream dewy has it) a connection that relayed no byte for that long is closed. The proxy is layer 4: HTTP keep-alive connections
stay with the replica they started on, TLS passes through.

The proxy runs its own event loop in its own thread, so that nothing else dewy does
(writing the state file with fsync, parsing a runtime's answers, a hook's output)
ever holds up a forwarded byte: under disk load one fsync took 0.1-0.6 s here. The
daemon's side only replaces the backend tuple (one assignment) and reads counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterable

from dewy import log
from dewy.errors import DewyError
from dewy.sockets import HeldSockets
from dewy.tasks import Background

# Replicas are on a local bridge: the kernel completes a handshake in well under a millisecond,
# whatever the app is doing. A connect that takes longer lost its SYN (the network is being changed
# under it) and is tried again at once rather than after TCP's 1 s retransmission timeout.
ATTEMPT_TIMEOUT = 0.25
CONNECT_BUDGET = 3.0  # how long a client's connection waits for some replica to take it before it is closed
RETRY_PAUSE = 0.05  # between two rounds over the backends (while none accepts, e.g. the only one restarts)
DOWN_FOR = 5.0  # a backend that failed a connect is tried last for this long (until the next health check)
ACCEPT_BATCH = 64
IDLE_SWEEPS = 4  # idle connections are looked for this often per idle timeout (closed within 1.25 of it)
START_TIMEOUT = 10.0

Backend = tuple[str, int]


class _Half(asyncio.Protocol):
    """One side of a relayed connection; writes what it reads to its peer."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.eof = False
        self.pending: list[bytes] = []  # read before the peer's transport exists

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.relay.bytes += len(data)
        self.relay.active = self.relay.proxy._loop.time()
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if peer.eof:
                self.relay.close()
                return False
            with contextlib.suppress(OSError, RuntimeError):
                peer.transport.write_eof()
        return True  # keep our writing side open: the peer may still answer

    def pause_writing(self) -> None:  # our transport's buffer is full: stop reading from the peer
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.close()


class _Relay:
    """A client connection and its backend connection."""

    def __init__(self, proxy: TcpProxy, backend: Backend, port: int) -> None:
        self.proxy = proxy
        self.backend = backend
        self.port, self.started, self.bytes = port, proxy._loop.time(), 0  # for the proxy-closed event (metrics)
        self.active = self.started  # when a byte last passed
        self.client = _Half(self)
        self.server = _Half(self)
        self.client.peer, self.server.peer = self.server, self.client
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for half in (self.client, self.server):
            if half.transport is not None:
                half.transport.close()  # after flushing what is buffered
        self.proxy._finished(self)
        log.debug("proxy-closed", "relayed connection closed", proxy_port=self.port, bytes=self.bytes,
                  duration=self.proxy._loop.time() - self.started)


class TcpProxy:
    """Accepts on the held sockets and relays each connection to one of the current backends."""

    def __init__(self, sockets: HeldSockets, idle_timeout: float = 0.0) -> None:
        self.sockets = sockets
        self.idle_timeout = idle_timeout  # 0: idle connections stay open
        self._routes: tuple[tuple[Backend, ...], ...] = ()  # per held socket, in its order
        self._next = 0
        self._down: dict[Backend, float] = {}
        self._relays: set[_Relay] = set()
        self._connecting = 0  # accepted, not yet wired to a backend: in flight too, for the drain
        self._listeners: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks = Background()  # one per connection being forwarded
        self.refused = 0  # connections closed because no backend could be reached

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self.sockets.addresses

    def set_backends(self, backends: Iterable[Backend]) -> None:
        """Point new connections on every held socket at ``backends``."""
        backends = tuple(backends)
        self.set_routes([backends] * len(self.sockets.fds))

    def set_routes(self, routes: Iterable[Iterable[Backend]]) -> None:
        """Point new connections on each held socket at its backends (in the sockets' order; one assignment:
        no connection sees a mix or an empty set)."""
        new = tuple(tuple(backends) for backends in routes)
        if new != self._routes:
            shown = {f"{name} -> {', '.join(f'{h}:{p}' for h, p in backends) or 'nothing'}"
                     for name, backends in zip(self.sockets.names, new)}
            log.info("proxy-backends", f"host port now forwards {'; '.join(sorted(shown)) or 'nothing'}",
                     backends=sorted({f"{h}:{p}" for backends in new for h, p in backends}))
        self._routes = new

    def active(self, backends: Iterable[Backend] | None = None) -> int:
        """Connections in flight, to ``backends`` only if given (else also those still looking for one)."""
        relays = list(self._relays)  # one C-level copy: safe against the proxy thread changing the set
        if backends is None:
            return len(relays) + self._connecting
        wanted = set(backends)
        return sum(1 for relay in relays if relay.backend in wanted)

    def start(self) -> None:
        """Start accepting, in the proxy's own thread (idempotent); DewyError if the thread cannot start."""
        if self._thread is not None and self._thread.is_alive():
            return
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                for fd in self.sockets.fds:
                    listener = socket.socket(fileno=fd)
                    listener.setblocking(False)
                    self._listeners[fd] = listener
                    loop.add_reader(fd, self._accept, listener, len(self._listeners) - 1)
            except BaseException as exc:
                failed.append(exc)
                for listener in self._listeners.values():
                    listener.detach()
                self._listeners.clear()
                loop.close()
                ready.set()
                return
            loop.call_soon(ready.set)
            if self.idle_timeout:
                loop.call_later(self.idle_timeout / IDLE_SWEEPS, self._close_idle)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._tasks.cancel())
                loop.close()

        self._thread = threading.Thread(target=run, name="dewy-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT) or failed:
            reason = (str(failed[0]) or type(failed[0]).__name__) if failed else f"its thread did not start within {START_TIMEOUT:g}s"
            self._thread = None
            raise DewyError(f"the host port's proxy cannot accept on {', '.join(self.sockets.names)}: {reason}")

    def _in_loop(self, function) -> None:
        """Run ``function`` in the proxy's thread and wait for it."""
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()

        def call() -> None:
            try:
                function()
            finally:
                done.set()

        loop.call_soon_threadsafe(call)
        done.wait(10)

    def stop_accepting(self) -> None:
        """Leave the listening sockets open (connections wait in the backlog) but take no more."""

        def stop() -> None:
            for fd, listener in self._listeners.items():
                self._loop.remove_reader(fd)
                listener.detach()  # the fd stays open: it is the held socket's
            self._listeners.clear()

        self._in_loop(stop)

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` for accepted connections to finish, those still looking for a backend
        included (cutting one of those closes it unanswered); returns how many are still open."""
        deadline = time.monotonic() + timeout
        while self.active() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.active()

    def close(self) -> None:
        """Stop accepting, cut every relayed connection and end the proxy's thread (the held sockets stay
        the host adapter's)."""
        self.stop_accepting()

        def cut() -> None:
            for relay in list(self._relays):
                relay.close()

        self._in_loop(cut)
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # -- in the proxy's thread -------------------------------------------------------------

    def _accept(self, listener: socket.socket, index: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again on the next readiness
                log.warning("proxy-accept", f"accept failed: {exc}")
                return
            conn.setblocking(False)
            self._connecting += 1
            self._tasks.start(self._forward(conn, index), "forwarding a connection")

    def _candidates(self, backends: tuple[Backend, ...]) -> list[Backend]:
        """``backends`` in round-robin order from the next one, those that failed lately last."""
        if not backends:
            return []
        start = self._next % len(backends)
        self._next = start + 1
        ordered = list(backends[start:] + backends[:start])
        now = self._loop.time()
        up = [b for b in ordered if self._down.get(b, 0.0) <= now]
        return up + [b for b in ordered if b not in up]

    async def _forward(self, conn: socket.socket, index: int) -> None:
        """Connect to a backend (round robin, the current set on each round), then relay; close ``conn`` if no
        backend took it within CONNECT_BUDGET, or as soon as its client has gone."""
        try:
            if await self._connect(conn, index):
                return
        except BaseException:
            conn.close()
            raise
        finally:
            self._connecting -= 1  # wired (now one of the relays) or given up
        conn.close()

    async def _connect(self, conn: socket.socket, index: int) -> bool:
        """True once ``conn`` (accepted on held socket ``index``) is wired to a backend (the relay owns it then)."""
        loop = self._loop
        deadline = loop.time() + CONNECT_BUDGET
        port = conn.getsockname()[1]
        tried: dict[Backend, str] = {}
        while not _gone(conn):
            routes = self._routes
            candidates = self._candidates(routes[index] if index < len(routes) else ())
            for backend in candidates:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                relay = _Relay(self, backend, port)
                try:
                    async with asyncio.timeout(min(ATTEMPT_TIMEOUT, remaining)):
                        await loop.create_connection(lambda: relay.server, backend[0], backend[1])
                except (OSError, TimeoutError) as exc:
                    self._down[backend] = loop.time() + DOWN_FOR
                    tried[backend] = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no answer"
                    continue
                self._down.pop(backend, None)
                log.debug("proxy-connected", f"relaying to {backend[0]}:{backend[1]}", proxy_port=port,
                          latency=loop.time() - relay.started)
                return await self._wire(relay, conn)
            if not candidates or deadline - loop.time() <= RETRY_PAUSE:
                break
            await asyncio.sleep(RETRY_PAUSE)
        if _gone(conn):  # a client that closed at once (a port check): nothing was refused
            return False
        self.refused += 1
        log.warning("proxy-no-backend", f"closed a connection: no replica took it within {CONNECT_BUDGET:g}s"
                    + (f" (tried {', '.join(f'{h}:{p} ({why})' for (h, p), why in tried.items())})" if tried
                       else " (none is serving)"), proxy_port=port)
        return False

    async def _wire(self, relay: _Relay, conn: socket.socket) -> bool:
        self._relays.add(relay)
        try:
            await self._loop.connect_accepted_socket(lambda: relay.client, sock=conn)
        except OSError:
            relay.close()
            return False
        # what the backend did before the client side was wired up (a greeting, a close)
        client = relay.client.transport
        if client is not None:
            for chunk in relay.server.pending:
                client.write(chunk)
            relay.server.pending.clear()
            if relay.closed:
                client.close()
            elif relay.server.eof:
                with contextlib.suppress(OSError, RuntimeError):
                    client.write_eof()
        return True

    def _close_idle(self) -> None:
        now = self._loop.time()
        for relay in list(self._relays):
            if now - relay.active >= self.idle_timeout:
                log.debug("proxy-idle", f"closed a connection idle for {self.idle_timeout:g}s", proxy_port=relay.port)
                relay.close()
        self._loop.call_later(self.idle_timeout / IDLE_SWEEPS, self._close_idle)

    def _finished(self, relay: _Relay) -> None:
        self._relays.discard(relay)


def _gone(conn: socket.socket) -> bool:
    """Has the client closed (or reset) its connection? Data it sent stays queued for the backend."""
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
