"""Failed requests across graceful restarts under load: dewy vs Server::Starter vs a naive restart.

The same app (tests/apps/httpapp.py, which takes its socket from LISTEN_FDS or
SERVER_STARTER_PORT) and the same load, a bounded Python client loop (the
harness's ClientLoop, timed) in a few threads, each doing one GET / per
connection and counting every connection error and non-2xx answer:

- dewy server -p 127.0.0.1:PORT --health-path /health, restarted N times by SIGUSR1;
- Perl ``start_server --port 127.0.0.1:PORT -- APP`` restarted N times by SIGHUP;
- naive: SIGTERM the app, wait for it to exit, start it again on a freshly bound port.

Printed per contender: requests, failed requests, longest gap between two
successful answers, slowest request. Target: dewy 0 failed.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

PAUSE = 0.5  # steady load between two restarts
STOP_WAIT = 5.0  # how long an old generation may take to exit after SIGTERM before it counts as stuck


class TimedClientLoop(c.ClientLoop):
    """The harness's client loop, also recording when each successful answer arrived and the slowest request."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.done_at: list[float] = []
        self.failed_at: list[float] = []  # wall clock, to match dewy's log timestamps
        self.slowest = 0.0

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_requests):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            began = time.monotonic()
            try:
                status, _ = c.get(self.port)
            except OSError as exc:
                self.failures.append(type(exc).__name__)
                self.failed_at.append(time.time())
                continue
            ended = time.monotonic()
            self.slowest = max(self.slowest, ended - began)
            if 200 <= status < 300:
                self.ok += 1
                self.done_at.append(ended)
            else:
                self.failures.append(f"HTTP {status}")
                self.failed_at.append(time.time())


def under_load(port: int, clients: int, restarts: int, restart_once) -> dict:
    """Run ``restart_once(k)`` for k = 1..restarts with the client loops going; returns the figures."""
    loops = [TimedClientLoop(port, max_requests=2_000_000, max_seconds=150) for _ in range(clients)]
    for loop in loops:
        loop.__enter__()
    began = time.monotonic()
    took = []
    try:
        time.sleep(PAUSE)
        for k in range(1, restarts + 1):
            started = time.monotonic()
            restart_once(k)
            took.append(time.monotonic() - started)
            time.sleep(PAUSE)
    finally:
        for loop in loops:
            loop.__exit__(None, None, None)
    seconds = time.monotonic() - began
    done = sorted(t for loop in loops for t in loop.done_at)
    failures = [f for loop in loops for f in loop.failures]
    return {
        "ok": sum(loop.ok for loop in loops), "failed": len(failures),
        "failed_at": sorted(t for loop in loops for t in loop.failed_at), "kinds": Counter(failures),
        "gap": max((b - a for a, b in zip(done, done[1:])), default=float("nan")),
        "slowest": max(loop.slowest for loop in loops), "seconds": seconds, "restart": c.median(took), "restart_max": max(took),
    }


def run_dewy(work: Path, port: int, clients: int, restarts: int) -> dict:
    registry = work / "registry"
    c.publish(registry, "v1.0.0", c.app_release("v1.0.0"))
    dewy = c.Dewy(["server", "--registry", registry.as_uri(), "-i", "5", "-p", f"127.0.0.1:{port}",
                   "--settle-time", "0.2", "--health-path", "/health", "--stop-timeout", f"{STOP_WAIT:g}",
                   "-d", str(work / "dewy"), "-c", (work / "cache").as_uri(), "--", c.PYTHON, "current/app.py"],
                  cwd=work)
    failed_restarts = []
    try:
        dewy.wait_for("deployed", version="v1.0.0", timeout=60)
        c.wait_http_ok(port)

        def restart(k: int) -> None:
            dewy.process.send_signal(signal.SIGUSR1)
            record = dewy.wait_for(("restarted", "restart-failed"), timeout=30)
            if record["event"] != "restarted":
                failed_restarts.append(record.get("msg"))

        figures = under_load(port, clients, restarts, restart)
        generations = sorted({r["generation"] for r in dewy.seen if r.get("event") == "app-ready"})
        kills = [c.event_time(r) for r in dewy.seen if r.get("event") == "app-killed"]
        figures["stuck"] = len(kills)
        near_kill = sum(1 for t in figures["failed_at"] if any(abs(t - k) < 0.5 for k in kills))
        starting = {r["generation"]: c.event_time(r) for r in dewy.seen if r.get("event") == "app-starting"}
        healthy = [c.event_time(r) - starting[r["generation"]] for r in dewy.seen
                   if r.get("event") == "app-healthy" and r["generation"] in starting and r["generation"] > 1]
    finally:
        dewy.stop()
        dewy.kill()
    figures["note"] = f"generations {generations[0]}..{generations[-1]}" + (
        f"; spawn -> healthy median {c.ms(c.median(healthy))}, max {c.ms(max(healthy))}" if healthy else "") + (
        f"; {near_kill} of the failures within 0.5 s of dewy SIGKILLing an old generation that ignored SIGTERM"
        if kills and figures["failed"] else "") + (
        f"; {len(failed_restarts)} restarts failed: {failed_restarts[0]}" if failed_restarts else "")
    return figures


def status_lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def run_start_server(work: Path, port: int, clients: int, restarts: int) -> dict:
    release = work / "start_server"
    release.mkdir()
    (release / "app.py").write_text(c.APP.read_text())
    (release / "VERSION").write_text("v1.0.0")
    status = work / "start_server.status"
    server = subprocess.Popen(["start_server", f"--port=127.0.0.1:{port}", f"--status-file={status}",
                               "--", c.PYTHON, str(release / "app.py")],
                              cwd=release, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c.wait_http_ok(port)

        stuck = []

        def restart(k: int) -> None:
            server.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 1 + STOP_WAIT  # its --interval, then the old worker's exit
            while time.monotonic() < deadline:  # done when only generation k+1 is listed
                lines = status_lines(status)
                if len(lines) == 1 and lines[0].split(":")[0] == str(k + 1):
                    return
                time.sleep(0.01)
            stuck.append(status_lines(status))  # start_server sends TERM once and never escalates: go on

        figures = under_load(port, clients, restarts, restart)
        figures["stuck"] = len(stuck)
    finally:
        c.stop_process(server, timeout=15)
    figures["note"] = "default --interval (1 s) before the old worker is stopped" + (
        f"; {len(stuck)} restarts unfinished after {1 + STOP_WAIT:g} s, e.g. workers {stuck[0]}" if stuck else "")
    return figures


def run_naive(work: Path, port: int, clients: int, restarts: int) -> dict:
    release = work / "naive"
    release.mkdir()
    (release / "app.py").write_text(c.APP.read_text())
    (release / "VERSION").write_text("v1.0.0")

    def start(generation: int) -> subprocess.Popen:
        sock = c.listen(port)  # the app alone holds its socket, so it closes when the app exits
        try:
            return c.spawn_app(release / "app.py", sock, cwd=release, generation=generation)
        finally:
            sock.close()

    app = [start(1)]
    killed = []
    try:
        c.wait_http_ok(port)

        def restart(k: int) -> None:
            app[0].terminate()
            try:
                app[0].wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                killed.append(k)
                app[0].kill()
                app[0].wait(5)
            app[0] = start(k + 1)
            c.wait_http_ok(port)

        figures = under_load(port, clients, restarts, restart)
        figures["stuck"] = len(killed)
    finally:
        c.stop_process(app[0])
    figures["note"] = "SIGTERM, wait for exit, bind and start again" + (
        f"; SIGKILLed {len(killed)} apps still running {STOP_WAIT:g} s after SIGTERM" if killed else "")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=10, help="restarts per contender (default 10)")
    parser.add_argument("--clients", type=int, default=2, help="client threads (default 2)")
    args = parser.parse_args()
    c.banner("graceful_restart")

    contenders = [("dewy (SIGUSR1)", run_dewy)]
    if shutil.which("start_server"):
        contenders.append(("start_server (SIGHUP)", run_start_server))
    else:
        print("start_server not found (apt-get install -y libserver-starter-perl): Server::Starter row skipped")
    contenders.append(("naive stop-then-start", run_naive))

    rows, figures = [], {}
    with tempfile.TemporaryDirectory(prefix="dewy-bench-") as tmp:
        for label, run in contenders:
            work = Path(tmp) / label.split()[0].replace("-", "_")
            work.mkdir()
            figures[label] = f = run(work, c.free_port(), args.clients, args.restarts)
            kinds = ", ".join(f"{k} x{n}" for k, n in f["kinds"].most_common(3)) or "-"
            rows.append((label, args.restarts, f"{f['restart']:.2f} / {f['restart_max']:.2f} s", f"{f['seconds']:.1f} s", f["ok"] + f["failed"], f["failed"], kinds,
                         c.ms(f["gap"]), c.ms(f["slowest"]), f.get("stuck", "?")))
    c.table(f"{args.restarts} restarts under load ({args.clients} client threads, one GET / per connection, "
            f"{PAUSE:g} s between restarts)", rows,
            ("contender", "restarts", "restart median / max", "time", "requests", "failed", "failure kinds", "longest gap", "slowest request",
             f"old gen alive {STOP_WAIT:g} s after TERM"))
    for label, f in figures.items():
        print(f"  {label}: {f['note']}")
    dewy = figures["dewy (SIGUSR1)"]
    ok = c.verdict("graceful restart", dewy["failed"] == 0 and "failed:" not in dewy["note"],
                   f"dewy {dewy['failed']} failed of {dewy['ok'] + dewy['failed']} requests across {args.restarts} "
                   f"restarts, longest gap {c.ms(dewy['gap'])} (target 0 failed)"
                   + (f"; {dewy['stuck']} old generations outlived SIGTERM by {STOP_WAIT:g} s and were SIGKILLed"
                      if dewy.get("stuck") else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
