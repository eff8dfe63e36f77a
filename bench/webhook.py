"""Push against poll: time to the new version serving, after a webhook POST and after a publish with 10 s polling.

Two ``dewy server`` daemons in turn against the loopback GitHub test server (``ghr://``,
the test app, ``--settle-time 0.05 --health-path /health``), 10 releases each:

- push: ``-i 1h --webhook``: publish, then POST a signed GitHub ``release`` event to
  ``/github``; measured from the POST to the first answer of the new version on the app's
  port (a client asking every 10 ms).
- poll: ``-i 10`` (the default interval), no webhook; measured from the publish to the
  first answer of the new version.

Each publish comes a seeded random 0-10 s after the previous deploy, in both runs: the
publishes do not lock onto the poll's phase, and pushes are as far apart as releases
are (the webhook coalesces pushes less than 1 s apart). About 2.5 minutes.

Target: the push median under 2 s and under a fifth of the poll median.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SECRET = "bench-webhook-secret"
INTERVAL = 10.0
PUSH_TARGET = 2.0
RATIO_TARGET = 0.2
SERVING_TIMEOUT = 30.0


def artifact(tag: str) -> bytes:
    return c.tar_gz(c.app_release(tag))


def serving_after(port: int, tag: str, began: float) -> float:
    """Seconds from ``began`` (perf_counter) to the first answer ``tag`` on the app's port."""
    deadline = time.perf_counter() + SERVING_TIMEOUT
    while time.perf_counter() < deadline:
        try:
            if c.get(port, timeout=2)[1] == tag:
                return time.perf_counter() - began
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{tag} did not serve within {SERVING_TIMEOUT:g}s")


def push(hook: int, tag: str) -> None:
    body = json.dumps({"action": "published", "release": {"tag_name": tag}}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", hook, timeout=5)
    try:
        conn.request("POST", "/github", body=body, headers={"X-GitHub-Event": "release", "X-Hub-Signature-256": signature,
                                                             "Content-Type": "application/json"})
        status = conn.getresponse().status
    finally:
        conn.close()
    if status != 202:
        raise RuntimeError(f"the webhook answered {status} to a signed release event")


def daemon(github: c.GitHubServer, work: Path, repo: str, port: int, *extra: str) -> c.Dewy:
    return c.Dewy(
        ["server", "--registry", f"ghr://{c.OWNER}/{repo}", "-p", f"127.0.0.1:{port}", "--settle-time", "0.05",
         "--health-path", "/health", "--health-timeout", "10", "--stop-timeout", "5", "-d", str(work / repo),
         "-c", (work / f"{repo}-cache").as_uri(), *extra, "--", c.PYTHON, "current/app.py"],
        cwd=work, env={**c.github_env(github), "DEWY_WEBHOOK_SECRET": SECRET},
    )


def run(github: c.GitHubServer, work: Path, repo: str, releases: int, pushed: bool, rng: random.Random) -> list[float]:
    name = c.host_artifact()
    github.add_release(c.OWNER, repo, "v1.0.0", {name: artifact("v1.0.0")})
    port, hook = c.free_port(), c.free_port()
    extra = ("-i", "3600", "--webhook", f"127.0.0.1:{hook}") if pushed else ("-i", f"{INTERVAL:g}")
    dewy = daemon(github, work, repo, port, *extra)
    times = []
    try:
        dewy.wait_for("deployed", version="v1.0.0", timeout=60)
        if pushed:
            dewy.wait_for("webhook", already=True)
        for i in range(1, releases + 1):
            tag = f"v1.0.{i}"
            time.sleep(rng.uniform(0, INTERVAL))  # a publish at any moment of the polling period (both runs alike)
            github.add_release(c.OWNER, repo, tag, {name: artifact(tag)})
            began = time.perf_counter()
            if pushed:
                push(hook, tag)
            times.append(serving_after(port, tag, began))
            dewy.wait_for("deployed", version=tag, timeout=60)
    finally:
        dewy.stop()
        dewy.kill()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=10, help="releases per mode (default 10)")
    parser.add_argument("--seed", type=int, default=14, help="seed of the publish moments in the poll run")
    args = parser.parse_args()
    c.banner("webhook")
    with tempfile.TemporaryDirectory(prefix="dewy-bench-") as tmp, c.GitHubServer(token=c.TOKEN) as github:
        work = Path(tmp)
        pushed = run(github, work, "pushed", args.releases, True, random.Random(args.seed))
        polled = run(github, work, "polled", args.releases, False, random.Random(args.seed))
    rows = [(f"v1.0.{i + 1}", c.ms(p), c.ms(q)) for i, (p, q) in enumerate(zip(pushed, polled))]
    c.table("time to the new version serving, dewy server over ghr:// (loopback test server)", rows,
            ("release", "webhook POST -> serving (-i 1h)", f"publish -> serving (-i {INTERVAL:g})"))
    push_median, poll_median = c.median(pushed), c.median(polled)
    c.table("medians", [("webhook POST -> serving", c.ms(push_median)),
                        (f"publish -> serving, {INTERVAL:g} s polling", c.ms(poll_median)),
                        ("ratio", f"{push_median / poll_median:.3f}")], ("what", "median"))
    ok = c.verdict("webhook latency", push_median < PUSH_TARGET and push_median < RATIO_TARGET * poll_median,
                   f"push {c.ms(push_median)} vs poll {c.ms(poll_median)} (target: push < {c.ms(PUSH_TARGET)} and "
                   f"< {RATIO_TARGET:g}x poll)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
