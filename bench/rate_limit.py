"""GitHub API rate-limit cost of polling while nothing changes.

dewy assets polls ghr:// every 0.2 s for about 20 s against the loopback GitHub
test server holding 250 releases (3 pages of 100). After dewy's first full poll
that follows its deploy (the deploy's audit-record upload changes the listing
once), every request the server counted against the primary rate limit is
counted, and extrapolated to one hour at that interval and at the default 10 s.
The server is GitHub-faithful here: a 304 to If-None-Match is free only for a
request with an Authorization header, so dewy runs with GITHUB_TOKEN.
Anchor: the same 3 pages polled unconditionally with curl (what a naive poller pays).
Target: dewy 0 counted requests.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

RELEASES = 250
INTERVAL = 0.2


def naive_poller(github: c.GitHubServer, polls: int) -> tuple[int, int, float]:
    """curl each page of the listing unconditionally, ``polls`` times; returns (requests, counted, seconds)."""
    used, sent = github.rate_limit_used, 0
    began = time.monotonic()
    for _ in range(polls):
        for page in (1, 2, 3):
            url = f"{github.url}/repos/{c.OWNER}/{c.REPO}/releases?per_page=100&page={page}"
            subprocess.run(["curl", "-sf", "-o", "/dev/null", "-H", f"Authorization: Bearer {c.TOKEN}",
                            "-H", "Accept: application/vnd.github+json", url], check=True)
            sent += 1
        time.sleep(INTERVAL)
    return sent, github.rate_limit_used - used, time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="how long dewy polls in all (default 20)")
    args = parser.parse_args()
    c.banner("rate_limit")

    with tempfile.TemporaryDirectory(prefix="dewy-bench-") as tmp, c.GitHubServer(token=c.TOKEN) as github:
        work = Path(tmp)
        data = c.tar_gz({"index.html": "<h1>hello</h1>"})
        for i in range(RELEASES):
            github.add_release(c.OWNER, c.REPO, f"v1.{i // 100}.{i % 100}", {c.host_artifact(): data})
        newest = f"v1.{(RELEASES - 1) // 100}.{(RELEASES - 1) % 100}"
        began = time.monotonic()
        dewy = c.Dewy(["assets", "--registry", f"ghr://{c.OWNER}/{c.REPO}", "-i", str(INTERVAL), "-d", str(work / "site"),
                       "-c", (work / "cache").as_uri()], cwd=work, env=c.github_env(github))
        try:
            dewy.wait_for("deployed", version=newest, timeout=30)
            dewy.wait_for("up-to-date", version=newest, timeout=30)  # the first full poll after the deploy
            used0, seen0, window0 = github.rate_limit_used, len(github.requests), time.monotonic()
            mark = len(dewy.seen)
            setup_requests = seen0
            setup_counted = used0
            time.sleep(max(args.seconds - (window0 - began), 5))
            with github._lock:
                used1, window = github.rate_limit_used, list(github.requests[seen0:])
            window1 = time.monotonic()
            alive = dewy.process.poll() is None
        finally:
            dewy.stop()
            dewy.kill()
        c.drain(dewy)
        records = dewy.seen[mark:]  # harness's kill() moves the unread records into seen
        polls = sum(1 for r in records if r.get("event") == "up-to-date")
        errors = [r.get("msg") for r in records if r.get("event") == "deploy-failed"]
        anchor_sent, anchor_counted, anchor_seconds = naive_poller(github, 10)

    counted = used1 - used0
    seconds = window1 - window0
    per_hour = counted / seconds * 3600
    per_poll = counted / polls if polls else float("nan")
    statuses = Counter(f"{r.method} {r.path.split('?')[0].rsplit('/', 1)[-1]}?{'page' if 'page=' in r.path else ''} {r.status}"
                       for r in window)
    anchor_per_poll = anchor_counted / 10
    c.table(f"requests counted against the rate limit while nothing changes ({RELEASES} releases = 3 pages)", [
        ("dewy, -i 0.2 (conditional, authorized)", f"{seconds:.1f} s", polls, len(window), counted,
         f"{per_poll:.2f}", f"{per_hour:.0f}", f"{per_poll * 360:.0f}"),
        ("anchor: curl, unconditional, 10 polls", f"{anchor_seconds:.1f} s", 10, anchor_sent, anchor_counted,
         f"{anchor_per_poll:.2f}", f"{anchor_counted / anchor_seconds * 3600:.0f}", f"{anchor_per_poll * 360:.0f}"),
    ], ("poller", "window", "polls", "requests", "counted", "counted/poll", "per hour at this rate", "per hour at 10 s"))
    print(f"\nbefore the window (startup, deploy, audit-record upload, first full poll): {setup_requests} requests, "
          f"{setup_counted} counted")
    print("dewy's requests in the window by status: " + ", ".join(f"{k}: {n}" for k, n in sorted(statuses.items())))
    if errors:
        print(f"dewy reported {len(errors)} failed cycles, e.g. {errors[0]}")
    ok = alive and polls > 0 and counted == 0
    c.verdict("rate limit while idle", ok, f"{counted} requests counted in {polls} polls over {seconds:.1f} s = "
              f"{per_hour:.0f}/hour at -i {INTERVAL} (target 0)" + ("" if alive else "; dewy exited"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
