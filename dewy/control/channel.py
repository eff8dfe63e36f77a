"""The control socket: root only (the peer's uid from SO_PEERCRED), one JSON request and one JSON answer per
connection, served on the daemon's loop.

The socket file is mode 0600 from the moment it has its name (bound under a temporary name, then renamed),
and a peer other than root (or the user dewy runs as) is refused whatever the file's mode.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from dewy import log
from dewy.control import addressable

REQUEST_LIMIT = 4096  # bytes of one request line
READ_TIMEOUT = 5.0  # a client that connects and says nothing

Handler = Callable[[dict, int], Awaitable[dict]]


def bind(path: Path) -> socket.socket:
    """A listening socket at ``path``, mode 0600, replacing one a killed dewy left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}-{os.getpid()}")
    staged.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with addressable(staged) as address:
            sock.bind(address)
        os.chmod(staged, 0o600)
        os.replace(staged, path)
        sock.listen(16)
    except BaseException:
        sock.close()
        staged.unlink(missing_ok=True)
        raise
    sock.setblocking(False)
    return sock


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


async def serve(path: Path, handle: Handler) -> None:
    """Answer commands at ``path`` until cancelled; the socket file goes with it."""
    try:
        sock = bind(path)
    except OSError as exc:
        log.error("control-failed", f"no control channel (dewy rollback, pin, pause, ...): cannot listen at {path}: "
                  f"{exc.strerror or exc}; deploys go on")
        return
    answering: set[asyncio.Task] = set()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        answering.add(task)
        try:
            await _client(reader, writer, handle)
        finally:
            answering.discard(task)

    server = await asyncio.start_unix_server(client, sock=sock, limit=REQUEST_LIMIT)
    log.debug("control-listening", f"control channel at {path}", path=str(path))
    try:
        await server.serve_forever()
    finally:  # dewy stops: a command in flight (a rollback) is cancelled as a deploy cycle is, before the app stops
        server.close()
        for task in answering:
            task.cancel()
        await asyncio.gather(*answering, return_exceptions=True)
        path.unlink(missing_ok=True)


async def _client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler) -> None:
    try:
        uid = peer_uid(writer.get_extra_info("socket"))
        request = await _request(reader)  # read even when refused: closing on unread bytes would reset the answer
        if uid not in (0, os.geteuid()):
            log.warning("control-refused", f"refused a control command from uid {uid}: only root may control dewy",
                        uid=uid)
            answer = {"ok": False, "error": "permission denied: only root may control dewy"}
        elif isinstance(request, str):
            answer = {"ok": False, "error": request}
        else:
            answer = await handle(request, uid)
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
    except (OSError, asyncio.TimeoutError):
        pass  # the client went away: what it asked for happened (or not) and is logged either way
    finally:
        writer.close()


async def _request(reader: asyncio.StreamReader) -> dict | str:
    """The request, or what is wrong with it."""
    try:
        request = json.loads(await asyncio.wait_for(reader.readline(), READ_TIMEOUT))
    except ValueError:  # not JSON, or past REQUEST_LIMIT
        return "not a control request: one JSON object on one line"
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        return "not a control request: no \"command\""
    return request
