"""Listening sockets that dewy binds once and hands to every app generation.

dewy owns the sockets for its whole life, so connections queue in the kernel's
backlog while generations come and go: that is what makes restarts zero-downtime.
When dewy starts again it takes them back from systemd's fd store; when that store is
gone (systemd empties it once dewy@NAME has failed, e.g. on a configuration error) but
the app generation still serves, dewy duplicates the sockets from the app itself
(pidfd_getfd), so the same listening queue goes on and no connection is refused.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable

from dewy import log
from dewy.errors import UsageError

BACKLOG = 1024
FIRST_FD = 3  # where an app finds the sockets (systemd's SD_LISTEN_FDS_START)

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")


def parse_ports(specs: list[str]) -> list[tuple[str, int]]:
    """Expand ``--port`` values into (host, port) pairs in the order given; host "" means all interfaces.

    Each spec is a comma list of ``PORT``, ``FIRST-LAST``, ``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT``
    (ranges work after a host too). Raises ValueError with a one-line reason.
    """
    result: list[tuple[str, int]] = []
    for spec in specs:
        for item in spec.split(","):
            for address in _parse_item(spec, item.strip()):
                if address in result:
                    raise ValueError(f"bad port spec {spec!r}: {_where(*address)} is given twice")
                result.append(address)
    return result


def _parse_item(spec: str, item: str) -> list[tuple[str, int]]:
    def bad(reason: str) -> ValueError:
        return ValueError(f"bad port spec {spec!r}: {reason}")

    if not item:
        raise bad("empty entry")
    if item.startswith("["):
        match = re.fullmatch(r"\[([^\]]*)\]:(.*)", item)
        if not match:
            raise bad(f"{item!r} is not [IPV6]:PORT")
        host, ports = match.groups()
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    elif ":" in item:
        host, _, ports = item.rpartition(":")
        if ":" in host:
            raise bad(f"IPv6 addresses need brackets, e.g. [{host}]:{ports}")
        if host and not _HOSTNAME.match(host):
            raise bad(f"{host!r} is not a host name or IPv4 address")
    else:
        host, ports = "", item
    first, dash, last = ports.partition("-")
    low = _port(first, bad)
    high = _port(last, bad) if dash else low
    if high < low:
        raise bad(f"range {ports} is reversed")
    return [(host, port) for port in range(low, high + 1)]


def _port(text: str, bad: Callable[[str], ValueError]) -> int:
    if not text:
        raise bad("a port number is missing")
    if not text.isdigit() or not text.isascii():
        raise bad(f"{text!r} is not a port number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise bad(f"port {port} is outside 1-65535")
    return port


def _where(host: str, port: int) -> str:
    return _display(host, port) if host else f"port {port}"


def _display(host: str, port: int) -> str:
    """How an operator wrote an address: ``8000`` (all interfaces), ``127.0.0.1:8000``, ``[::1]:8000``."""
    if not host:
        return str(port)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HeldSockets:
    """The listening sockets, bound once; an app generation gets them as fds 3, 4, ... in this order."""

    def __init__(self, addresses: Iterable[tuple[str, int]]) -> None:
        """Bind and listen on every address; a failure is a startup error naming the address."""
        self._sockets: list[socket.socket] = []
        try:
            for host, port in addresses:
                self._sockets.append(_listen(host, port))
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_fds(cls, fds: Iterable[int]) -> HeldSockets:
        """Adopt already-listening TCP sockets (systemd fd store), taking ownership of the fds.

        Names come from the bound addresses, so an adopting dewy hands the app exactly what the
        previous one did. Adopted fds are made close-on-exec: only app generations get them.
        On error no fd is closed.
        """
        held = cls(())
        for fd in fds:
            try:
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                held._disown()
                raise UsageError(f"cannot adopt fd {fd}: {exc.strerror or exc}") from None
            held._sockets.append(sock)
            if (sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM
                    or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                held._disown()
                raise UsageError(f"cannot adopt fd {fd}: not a listening TCP socket")
            sock.set_inheritable(False)
        return held

    @classmethod
    def reuse(cls, addresses: Iterable[tuple[str, int]], inherited: Iterable[int],
              holders: Iterable[int] = ()) -> HeldSockets:
        """The configured addresses, each taken from ``inherited`` (systemd's fd store, after dewy itself
        restarted) when one is bound there, else from ``holders`` (pids of app generations dewy has proven
        its own, still serving on them), else bound anew; inherited sockets no longer configured are closed."""
        spare = cls.from_fds(inherited)
        pool = {address: sock for address, sock in zip(spare.addresses, spare._sockets)}
        holders = list(holders)
        held = cls(())
        try:
            for host, port in addresses:
                address = _resolve(host, port)[1][:2]
                sock = pool.pop(address, None) or _borrow(address, holders)
                held._sockets.append(sock or _listen(host, port))
        except BaseException:
            held.close()
            raise
        finally:
            for sock in pool.values():
                sock.close()
        return held

    def _disown(self) -> None:
        for sock in self._sockets:
            sock.detach()
        self._sockets.clear()

    @property
    def fds(self) -> list[int]:
        """dewy's own fd numbers (close-on-exec); the supervisor maps them onto 3, 4, ... in the app."""
        return [sock.fileno() for sock in self._sockets]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs, as the kernel reports them."""
        return [sock.getsockname()[:2] for sock in self._sockets]

    @property
    def names(self) -> list[str]:
        """``8000`` when bound to 0.0.0.0, else ``127.0.0.1:8000`` / ``[::1]:8000`` (the Server::Starter keys)."""
        return [_display("" if host == "0.0.0.0" else host, port) for host, port in self.addresses]

    @property
    def fdnames(self) -> list[str]:
        """Names for LISTEN_FDNAMES, which is colon-separated, so ':' becomes '_' (``127.0.0.1_8000``)."""
        return [name.replace(":", "_") for name in self.names]

    def server_starter_port(self) -> str:
        """SERVER_STARTER_PORT as Perl's Server::Starter sets it: ``8000=3;127.0.0.1:8001=4``."""
        return ";".join(f"{name}={FIRST_FD + i}" for i, name in enumerate(self.names))

    def __len__(self) -> int:
        return len(self._sockets)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def __enter__(self) -> HeldSockets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve(host: str, port: int) -> tuple[int, tuple]:
    """The socket family and address that ``host:port`` binds to (``""`` is every IPv4 interface)."""
    if not host:
        return socket.AF_INET, ("0.0.0.0", port)
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {_where(host, port)}: {exc.strerror}") from None
    return family, address


def _listen(host: str, port: int) -> socket.socket:
    where = _where(host, port)
    family, address = _resolve(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return sock


_SYS_PIDFD_GETFD = 438          # the same number on every architecture (asm-generic)
_libc = ctypes.CDLL(None, use_errno=True)


def _borrow(address: tuple[str, int], holders: list[int]) -> socket.socket | None:
    """A duplicate of the listening TCP socket bound to ``address`` in one of the processes ``holders``
    (pidfd_getfd: root with CAP_SYS_PTRACE, which dewy@.service keeps), or None. Close-on-exec, like
    every socket dewy holds; the holder keeps its own copy. Why none could be taken is logged."""
    for pid in holders:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            log.warning("sockets", f"cannot take {_display(*address)} back from the app (pid {pid}): {exc.strerror}")
            continue
        failure = "it holds no such listening socket"
        try:
            for name in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                        continue
                except OSError:
                    continue
                fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
                if fd < 0:
                    failure = f"pidfd_getfd: {os.strerror(ctypes.get_errno())}"
                    continue
                sock = socket.socket(fileno=fd)
                if (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
                        and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                        and sock.getsockname()[:2] == address):
                    return sock
                sock.close()
        except OSError as exc:
            failure = exc.strerror or str(exc)
        finally:
            os.close(pidfd)
        log.warning("sockets", f"cannot take {_display(*address)} back from the app (pid {pid}): {failure}")
    return None
