"""The control channel: operators' commands (``dewy rollback``, ``pin``, ``pause``, ``deploy --now``, ...) to a
running daemon, over a Unix socket only root may use.

``commands.py`` does what each command asks on the daemon's loop and records it as an audit event;
``channel.py`` serves the socket (one JSON request line, one JSON answer line, per connection);
``client.py`` is the CLI's side. Where the socket is, for a daemon and for its client, is decided here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RUNTIME_ROOT = Path("/run/dewy")  # dewy@NAME's RuntimeDirectory=dewy/%i


def socket_path(directory: Path) -> Path:
    """Where the daemon working in ``directory`` listens: systemd's RuntimeDirectory (dewy@NAME), else beside
    its state file."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "control"
    return directory / ".dewy" / "control.sock"


def socket_paths(name: str | None, directory: Path) -> list[Path]:
    """Where the client looks, in order: dewy@NAME's runtime directory, then beside the state file (a daemon
    started by hand with ``--config /etc/dewy/NAME.toml``, or ``-d DIR``)."""
    beside = directory / ".dewy" / "control.sock"
    return [RUNTIME_ROOT / name / "control", beside] if name else [beside]


@contextmanager
def addressable(path: Path) -> Iterator[str]:
    """``path`` as a socket address: a Unix socket's address holds 107 bytes, so a longer path is reached
    through an open descriptor of its directory (``/proc/self/fd/N/NAME``)."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
