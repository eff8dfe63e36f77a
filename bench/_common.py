"""Shared bits of the benchmarks: repo imports, figures tables, /proc readers, the test app and its anchors.

Every benchmark imports this first: it puts the repository root on sys.path so
that ``tests.harness``, ``tests.conftest`` and ``tests.github_server`` are reused
as they are (the benchmarks drive a real dewy process exactly as the tests do).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import host_artifact, publish, tar_gz  # noqa: E402,F401
from tests.github_server import GitHubServer  # noqa: E402,F401
from tests.harness import APP, ClientLoop, Dewy, free_port, get  # noqa: E402,F401

PYTHON = sys.executable
TOKEN = "bench-token"
OWNER, REPO = "bench", "app"


# -- output --------------------------------------------------------------------------------

def table(title: str, rows: list[tuple], headers: tuple[str, ...]) -> None:
    """Print a small aligned table."""
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(cells[0], widths)))
    print(line)
    for row in cells[1:]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def banner(title: str) -> None:
    """The benchmark's name and how busy the machine is (other work on it makes figures noisy)."""
    load = os.getloadavg()
    print(f"== {title} ({os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} before the run)")


def verdict(name: str, ok: bool | None, detail: str) -> bool | None:
    """One line per target; None means the benchmark could not be run here (skipped)."""
    word = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    print(f"[{word}] {name}: {detail}")
    return ok


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def mb(size: float) -> str:
    return f"{size / (1 << 20):.1f} MB"


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- /proc ---------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """Vm* and Rss* fields of /proc/PID/status in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, writing 5 to clear_refs); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def free_disk(path: Path) -> int:
    return shutil.disk_usage(path).free


# -- log events ----------------------------------------------------------------------------

def event_time(record: dict) -> float:
    """A dewy JSON log record's own timestamp (ms resolution) as epoch seconds."""
    return datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()


def drain(dewy: Dewy) -> list[dict]:
    """Everything dewy logged that no wait_for consumed yet (non-blocking), also appended to ``seen``.

    After the harness's ``kill()`` these are already in ``seen``: slice ``seen`` from a mark instead.
    """
    records = []
    while not dewy.events.empty():
        record = dewy.events.get_nowait()
        dewy.seen.append(record)
        records.append(record)
    return records


# -- the test app --------------------------------------------------------------------------

def app_release(version: str, extra: dict[str, bytes | str] | None = None) -> dict[str, bytes | str]:
    """The files of a release of the test HTTP app (tests/apps/httpapp.py)."""
    return {"app.py": APP.read_text(), "VERSION": version, **(extra or {})}


def listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


def spawn_app(app: Path, sock: socket.socket, cwd: Path, generation: int = 1) -> subprocess.Popen:
    """The app on ``sock`` the Server::Starter way (SERVER_STARTER_PORT names the inherited fd)."""
    fd = sock.fileno()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "SERVER_STARTER_", "DEWY_"))}
    env.update(SERVER_STARTER_PORT=f"127.0.0.1:{sock.getsockname()[1]}={fd}", SERVER_STARTER_GENERATION=str(generation))
    return subprocess.Popen([PYTHON, str(app)], cwd=cwd, env=env, pass_fds=(fd,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_http_ok(port: int, path: str = "/health", timeout: float = 15) -> float:
    """Seconds until ``path`` answers 2xx (connections queue in the backlog meanwhile)."""
    began = time.monotonic()
    deadline = began + timeout
    while time.monotonic() < deadline:
        try:
            status, _ = get(port, path, timeout=max(deadline - time.monotonic(), 0.1))
            if 200 <= status < 300:
                return time.monotonic() - began
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"nothing answered 2xx on 127.0.0.1:{port}{path} within {timeout}s")


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def github_env(github: GitHubServer) -> dict[str, str]:
    return {"GITHUB_API_URL": github.url, "GITHUB_TOKEN": TOKEN, "GH_TOKEN": ""}

