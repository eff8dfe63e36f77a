"""Is the new app generation healthy? An HTTP probe that only the new generation may answer.

Old and new generations accept from the same listening socket, so a plain HTTP probe
may be answered by the old generation and prove nothing about the new one. The probe
therefore makes sure the *new* generation accepted its connection before it sends the
request: after connecting it looks up the server side of the connection with sock_diag
(netlink; its inode stays 0 until some process accept()s it), and checks whether
that socket inode is among the fds of the new generation's process tree
(/proc/PID/fd). A connection taken by anyone else is closed unanswered (the old
generation sees an empty connection) and the probe retries. Limits: Linux /proc only;
dewy must be allowed to read the app's /proc/PID/fd (same user, or root); TCP sockets
only; an app that hands accepted connections to processes outside its own process
tree never passes; each probe reads the whole TCP table, which costs a few ms on a
host with very many connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct

from dewy.healthcheck import status_of


def connectable(host: str, port: int) -> tuple[str, int]:
    """Where dewy itself reaches a held socket: loopback for a wildcard address."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port


async def answer(host: str, port: int, path: str, pid: int, others: list[int]) -> int | None:
    """GET ``path`` and return the status, or None when a process outside ``pid``'s tree accepted us
    (``others``: the other generations, the usual takers while ``pid`` starts)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if not await _accepted_by(pid, others, writer.get_extra_info("peername"), writer.get_extra_info("sockname")):
            return None
        return await status_of(reader, writer, host, port, path)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _accepted_by(pid: int, others: list[int], server: tuple, client: tuple) -> bool:
    """Wait until our connection is accepted, then tell whether ``pid`` or a descendant holds it."""
    while (inode := _server_inode(server, client)) is None:
        await asyncio.sleep(0.002)
    link = f"socket:[{inode}]"
    for _ in range(5):  # accept() creates the socket's inode just before it installs the fd
        # Cheap looks first: the app's own process (most apps accept there), then the other
        # generations; only then a scan of all of /proc for the app's worker processes.
        if link in _fd_links(pid):
            return True
        if any(link in _fd_links(other) for other in others):
            return False
        if any(link in _fd_links(p) for p in _process_tree(pid)[1:]):
            return True
        await asyncio.sleep(0.002)
    return False


# sock_diag (netlink): the kernel looks one socket up by its addresses, however many connections
# the host has; /proc/net/tcp lists them all (20+ ms per read with 12k sockets in TIME_WAIT).
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF
_INODE_OFFSET = 16 + 4 + 48 + 16  # nlmsghdr, inet_diag_msg: family..retrans, sockid, expires..uid


def _server_inode(server: tuple, client: tuple) -> int | None:
    """The inode of the accepted (server) side of a TCP connection, None while nobody accepted it."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    packed = [socket.inet_pton(family, host).ljust(16, b"\0") for host in (server[0], client[0])]
    sockid = struct.pack("!HH16s16s", server[1], client[1], *packed) + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    message = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + request
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as diag:
        diag.send(message)
        answer = diag.recv(4096)
    if struct.unpack_from("=H", answer, 4)[0] == _NLMSG_ERROR:
        return None
    return struct.unpack_from("=I", answer, _INODE_OFFSET)[0] or None


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (an app may accept in worker processes)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def _fd_links(pid: int) -> set[str]:
    links = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return links
    for name in names:
        with contextlib.suppress(OSError):
            links.add(os.readlink(f"/proc/{pid}/fd/{name}"))
    return links
