"""The CLI's side of the control channel: find the instance's socket, send one request, print the answer."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from dewy.control import addressable, socket_paths
from dewy.errors import DewyError

ANSWER_TIMEOUT = 600.0  # a rollback waits for the deploy in flight, then for the graceful restart


def instance_dir(name: str | None, directory: Path | None) -> Path:
    """The working directory of dewy@NAME (its config file says), else ``directory`` (or the cwd)."""
    if name:
        from dewy.status import instance_dir as of_name

        return of_name(name)
    return (directory or Path.cwd()).absolute()


def send(name: str | None, directory: Path | None, request: dict) -> dict:
    """``request`` to the daemon of NAME (or of ``directory``), its answer; DewyError if none answers."""
    where = instance_dir(name, directory)
    paths = socket_paths(name, where)
    path = next((p for p in paths if _exists(p)), None)
    if path is None:
        whom = f"dewy@{name}" if name else f"dewy in {where}"
        raise DewyError(f"{whom} is not running (no control socket at {' or '.join(map(str, paths))})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            with addressable(path) as address:
                sock.connect(address)
            sock.sendall(json.dumps(request).encode() + b"\n")
            line = sock.makefile("rb").readline()
        except PermissionError:
            raise DewyError(f"permission denied: {path} (only root may control dewy)") from None
        except OSError as exc:
            raise DewyError(f"cannot reach dewy at {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(line)
    except ValueError:
        raise DewyError(f"dewy at {path} closed the connection without an answer") from None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except PermissionError:  # the runtime directory is root's
        raise DewyError(f"permission denied: {path} (only root may control dewy)") from None


def main(name: str | None, directory: Path | None, request: dict, as_json: bool) -> int:
    answer = send(name, directory, request)
    if as_json:
        print(json.dumps(answer, indent=2))
    elif answer.get("ok"):
        print(answer.get("message", "done"))
        for tag, reason in (answer.get("quarantined") or {}).items() if request.get("clear") is None else ():
            print(f"  {tag}: {reason}")
    else:
        print(f"dewy: error: {answer.get('error')}", file=sys.stderr)
    return 0 if answer.get("ok") else 1
