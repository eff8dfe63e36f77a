"""A tiny HTTP app for dewy's tests (stdlib only): serves on sockets it inherits from dewy.

Sockets: LISTEN_FDS/LISTEN_PID (only if LISTEN_PID is this process) or SERVER_STARTER_PORT;
with neither it runs as a plain worker that serves nothing and waits for SIGTERM.

    GET /           the version, no newline: RELEASE/VERSION, else $DEWY_VERSION, else "unknown"
    GET /health     200, or 503 while RELEASE/UNHEALTHY exists
    GET /env        JSON: pid, cwd, version, env, fds open at start, {fd: bound address}
    GET /sleep?s=N  answers after N seconds (an in-flight request for graceful-stop tests)

RELEASE is $DEWY_RELEASE_DIR, else this file's directory (the release it was extracted into).
Knobs, files in RELEASE: CRASH (exit 3 at once), START_DELAY (seconds to wait before serving),
IGNORE_TERM (ignore SIGTERM, to exercise SIGKILL after the stop timeout).
``--report PATH`` writes the /env JSON to PATH once serving (the way to observe a plain worker).

SIGTERM: stop accepting, finish in-flight requests, exit 0. The shared listening sockets are
only closed, never shut down, since the next generation accepts from them too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def open_fds() -> list[int]:
    def is_open(fd: int) -> bool:
        try:
            os.fstat(fd)
        except OSError:  # includes the fd listdir used, closed by now
            return False
        return True

    return sorted(fd for fd in map(int, os.listdir("/proc/self/fd")) if is_open(fd))


FDS_AT_START = open_fds()
RELEASE = Path(os.environ.get("DEWY_RELEASE_DIR") or Path(__file__).resolve().parent)


def version() -> str:
    file = RELEASE / "VERSION"
    return file.read_text().strip() if file.exists() else os.environ.get("DEWY_VERSION", "unknown")


def inherited_fds() -> list[int]:
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
        return list(range(3, 3 + int(os.environ["LISTEN_FDS"])))
    if os.environ.get("SERVER_STARTER_PORT"):
        return [int(item.rpartition("=")[2]) for item in os.environ["SERVER_STARTER_PORT"].split(";")]
    return []


def report(sockets: dict[int, socket.socket]) -> dict:
    return {
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "version": version(),
        "env": dict(os.environ),
        "fds": FDS_AT_START,
        "sockets": {str(fd): list(sock.getsockname()[:2]) for fd, sock in sockets.items()},
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "httpapp"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/":
            self.answer(200, version())
        elif url.path == "/health":
            healthy = not (RELEASE / "UNHEALTHY").exists()
            self.answer(200 if healthy else 503, "ok" if healthy else "unhealthy")
        elif url.path == "/env":
            self.answer(200, json.dumps(report(self.server.app_sockets)), "application/json")
        elif url.path == "/sleep":
            time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
            self.answer(200, "slept")
        else:
            self.answer(404, "not found")

    def answer(self, status: int, body: str, content_type: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() then waits for in-flight requests


def serve(sock: socket.socket, sockets: dict[int, socket.socket]) -> Server:
    server = Server(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    # Non-blocking: another generation may take a connection between poll() and accept().
    sock.setblocking(False)
    server.socket = sock
    server.app_sockets = sockets
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}).start()
    return server


def main(argv: list[str]) -> int:
    if (RELEASE / "CRASH").exists():
        print("httpapp: CRASH file present, exiting", file=sys.stderr)
        return 3
    if (RELEASE / "IGNORE_TERM").exists():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        # Blocked here, so the server threads inherit the block and only sigtimedwait() in this
        # thread takes SIGTERM (a Python handler would wait for the main thread to wake up).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    delay = RELEASE / "START_DELAY"
    if delay.exists() and signal.sigtimedwait({signal.SIGTERM}, float(delay.read_text())):
        return 0
    sockets = {fd: socket.socket(fileno=fd) for fd in inherited_fds()}
    servers = [serve(sock, sockets) for sock in sockets.values()]
    print(f"httpapp {version()} (pid {os.getpid()}) serving on {len(servers)} socket(s)", file=sys.stderr, flush=True)
    if "--report" in argv:
        target = Path(argv[argv.index("--report") + 1])
        target.with_suffix(".tmp").write_text(json.dumps(report(sockets)))
        target.with_suffix(".tmp").rename(target)
    if (RELEASE / "IGNORE_TERM").exists():
        threading.Event().wait()
    signal.sigwait({signal.SIGTERM})
    for server in servers:
        server.shutdown()
    for server in servers:
        server.server_close()  # joins the request threads: in-flight requests finish
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
