"""Deploy latency after detection: a 10 MB artifact from the loopback GitHub test server.

dewy: time from its ``deploying`` log event (a new version detected) to its
``app-healthy`` event (the new generation answered its health check on the held
socket: the new version serves), for an upgrade: download, verify, extract,
switch ``current``, start the new generation, health check. The bookkeeping that
follows (SIGTERM to the old generation, which drains in the background, state
file, audit record upload, pruning) is printed too but is not in the ratio: the
anchor does none of it.
Anchor: ``curl -sL <asset URL> | tar xz -C DIR`` of the same artifact, plus the
app's own start time (spawned on a bound socket until its first 200 on /health).
Target: dewy's median within 1.5x of the anchor's median.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

PAYLOAD = 10 << 20
TARGET_RATIO = 1.5


def artifact(tag: str) -> bytes:
    """The test app plus 10 MB of incompressible data, as .tar.gz (about 10 MB)."""
    return c.tar_gz(c.app_release(tag, {"payload.bin": os.urandom(PAYLOAD)}))


def anchor(url: str, work: Path) -> tuple[float, float]:
    """curl | tar xz of the asset, then the app's start time; returns both in seconds."""
    dest = work / f"anchor-{time.monotonic_ns()}"
    dest.mkdir()
    began = time.perf_counter()
    done = subprocess.run(["sh", "-c", f"curl -sfL -H 'Accept: application/octet-stream' '{url}' | tar xz -C '{dest}'"])
    fetched = time.perf_counter() - began
    if done.returncode != 0 or not (dest / "app.py").exists():
        raise RuntimeError(f"anchor curl | tar failed (exit {done.returncode})")
    port = c.free_port()
    sock = c.listen(port)
    try:
        began = time.perf_counter()
        app = c.spawn_app(dest / "app.py", sock, cwd=dest)
        try:
            c.wait_http_ok(port)
            started = time.perf_counter() - began
        finally:
            c.stop_process(app)
    finally:
        sock.close()
    subprocess.run(["rm", "-rf", str(dest)], check=True)
    return fetched, started


def between(records: list[dict], first: str, last: str) -> float | None:
    times = {r["event"]: c.event_time(r) for r in records if r.get("event") in (first, last)}
    return times[last] - times[first] if first in times and last in times else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="upgrades measured (default 5)")
    args = parser.parse_args()
    c.banner("deploy_latency")

    rows, dewy_times, anchor_times, breakdown, anchor_parts, cycle = [], [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="dewy-bench-") as tmp, c.GitHubServer(token=c.TOKEN) as github:
        work = Path(tmp)
        name = c.host_artifact()
        github.add_release(c.OWNER, c.REPO, "v1.0.0", {name: artifact("v1.0.0")})
        port = c.free_port()
        dewy = c.Dewy(
            ["server", "--registry", f"ghr://{c.OWNER}/{c.REPO}", "-i", "0.5", "-p", f"127.0.0.1:{port}",
             "--settle-time", "0.05", "--health-path", "/health", "--health-timeout", "10", "--stop-timeout", "5",
             "-d", str(work / "app"), "-c", (work / "cache").as_uri(), "--", c.PYTHON, "current/app.py"],
            cwd=work, env=c.github_env(github),
        )
        try:
            dewy.wait_for("deployed", version="v1.0.0", timeout=60)
            first = (between(dewy.seen, "deploying", "deployed"), between(dewy.seen, "deploying", "app-healthy"))
            for i in range(1, args.repeat + 1):
                tag = f"v1.0.{i}"
                release = github.add_release(c.OWNER, c.REPO, tag, {name: artifact(tag)})
                start = len(dewy.seen)
                dewy.wait_for("deploying", version=tag, timeout=60)
                dewy.wait_for("deployed", version=tag, timeout=60)
                records = dewy.seen[start:]
                total = between(records, "deploying", "app-healthy")
                status, body = c.get(port)
                if body != tag:
                    raise RuntimeError(f"after deploying {tag} the app answers {status} {body!r}")
                url = f"{github.url}/repos/{c.OWNER}/{c.REPO}/releases/assets/{release.assets[0].id}"
                fetched, started = anchor(url, work)
                dewy_times.append(total)
                anchor_times.append(fetched + started)
                parts = [between(records, a, b) for a, b in (("deploying", "downloaded"), ("downloaded", "app-starting"),
                                                             ("app-starting", "app-healthy"), ("app-healthy", "deployed"))]
                cycle.append(between(records, "deploying", "deployed"))
                breakdown.append(parts)
                anchor_parts.append((fetched, started))
                rows.append((tag, c.ms(total), *("?" if p is None else c.ms(p) for p in parts),
                             c.ms(fetched), c.ms(started), c.ms(fetched + started), f"{total / (fetched + started):.2f}x"))
        finally:
            dewy.stop()
            dewy.kill()

    c.table(f"deploy latency, {PAYLOAD >> 20} MB incompressible .tar.gz over ghr:// (loopback test server), upgrades",
            rows, ("release", "dewy to serving", "download", "extract+switch", "start+health", "bookkeeping", "curl|tar",
                   "app start", "anchor total", "ratio"))
    if None not in first:
        print(f"(not in the medians) first deploy, no old generation to stop: v1.0.0 {c.ms(first[0])}, "
              f"of which deploying -> app-healthy {c.ms(first[1])}")
    dewy_median, anchor_median = c.median(dewy_times), c.median(anchor_times)
    ratio = dewy_median / anchor_median
    stages = ("download + sha256 + fsync", "extract + switch current", "start new generation + health check",
              "after serving: retire old, state, audit record, prune")
    stage_rows = [(f"  dewy: {stage}", c.ms(c.median([p[i] for p in breakdown if p[i] is not None])))
                  for i, stage in enumerate(stages) if any(p[i] is not None for p in breakdown)]
    c.table("medians", [("dewy deploying -> new version serving", c.ms(dewy_median)), *stage_rows,
                        ("dewy deploying -> deployed (whole cycle)", c.ms(c.median(cycle))),
                        ("anchor curl | tar xz + app start", c.ms(anchor_median)),
                        ("  anchor: curl | tar xz", c.ms(c.median([a for a, _ in anchor_parts]))),
                        ("  anchor: app start to first 200 on /health", c.ms(c.median([b for _, b in anchor_parts]))),
                        ("ratio", f"{ratio:.2f}x (target <= {TARGET_RATIO}x)")], ("what", "median"))
    ok = c.verdict("deploy latency", ratio <= TARGET_RATIO,
                   f"dewy {c.ms(dewy_median)} vs anchor {c.ms(anchor_median)} = {ratio:.2f}x (target <= {TARGET_RATIO}x)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
