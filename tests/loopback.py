"""The plumbing every protocol-level test server shares: HTTP on 127.0.0.1, an ephemeral port, a thread."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class _Listener(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's 5 resets connections when a fleet of clients connects at once


class LoopbackServer:
    """Base of the GitHub, Slack and Consul test servers; handlers reach the server object as ``self.server.owner``."""

    def _serve(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._httpd = _Listener(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.port: int = self._httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Trickle(LoopbackServer):
    """Answers every request with 200 and a body of ``size`` bytes sent one byte per ``pause`` seconds:
    never silent long enough for a per-read timeout, never finished. Bounded: the last byte goes after
    size * pause seconds, or when the client has gone."""

    def __init__(self, size: int = 400, pause: float = 0.05, content_type: str = "application/octet-stream") -> None:
        self.started = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def _trickle(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                self.server.owner.started.set()  # type: ignore[attr-defined]
                try:
                    for _ in range(size):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(pause)  # the behaviour under test: a byte every so often
                except OSError:
                    pass  # the client gave up, as it should

            do_GET = do_HEAD = do_POST = _trickle  # noqa: N815 (http.server's naming)

            def log_message(self, *args: object) -> None:
                pass

        self._serve(Handler, "trickle")


class FixedAnswer(LoopbackServer):
    """Answers every request with 200 and the same JSON body, whatever its shape."""

    def __init__(self, body: object) -> None:
        payload = json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_DELETE = _answer  # noqa: N815 (http.server's naming)

            def log_message(self, *args: object) -> None:
                pass

        self._serve(Handler, "fixed-answer")
