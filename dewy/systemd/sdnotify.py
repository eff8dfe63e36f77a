"""The sd_notify protocol and systemd's file-descriptor store, without a C library.

READY=1 / STATUS= / WATCHDOG=1 / STOPPING=1 are datagrams to $NOTIFY_SOCKET;
FDSTORE=1 sends the listening sockets along (SCM_RIGHTS) so that systemd keeps
them while dewy itself restarts, and hands them back as LISTEN_FDS. Outside
systemd every call is a no-op, so the daemon needs no special cases.
"""

from __future__ import annotations

import array
import os
import re
import socket

FIRST_FD = 3


def under_systemd() -> bool:
    return bool(os.environ.get("NOTIFY_SOCKET"))


def notify(*assignments: str, fds: list[int] | None = None) -> bool:
    """Send ``KEY=value`` lines to systemd; False when not run by systemd, or when the message could not be
    sent (systemd re-executing, say): a status line is not worth stopping dewy for, and a missed
    watchdog ping is what the watchdog is for."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendmsg(["\n".join(assignments).encode()], ancillary)
    except OSError:
        return False
    return True


def fd_name(text: str) -> str:
    """A name systemd accepts in FDNAME= (printable ASCII, no ':', at most 255 characters)."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", text)[:255]


def store_fds(named: dict[str, int]) -> None:
    """Keep these fds in systemd's fd store under their names (FileDescriptorStoreMax must allow it)."""
    for name, fd in named.items():
        notify("FDSTORE=1", f"FDNAME={fd_name(name)}", fds=[fd])


def take_listen_fds() -> dict[str, int]:
    """The fds systemd passed to this process (its fd store after a restart), by name; the LISTEN_*
    variables are removed so no child mistakes them for its own."""
    fds: dict[str, int] = {}
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        count = int(os.environ.get("LISTEN_FDS", "0"))
        names = os.environ.get("LISTEN_FDNAMES", "").split(":")
        for index in range(count):
            fd = FIRST_FD + index
            os.set_inheritable(fd, False)
            fds[names[index] if index < len(names) and names[index] else f"fd{fd}"] = fd
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    return fds


def watchdog_interval() -> float | None:
    """Half of WatchdogSec (systemd's advice for the ping period), if the watchdog is on for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
