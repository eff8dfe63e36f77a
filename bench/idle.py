"""Idle daemon memory and ``dewy --version`` start time.

1. RSS of an idle dewy polling ghr:// (loopback GitHub test server) at the
   default 10 s interval, after a few polls (VmRSS from /proc/PID/status), for
   ``dewy server`` (with the test HTTP app, whose memory is not counted) and
   ``dewy assets``. Target: <= 40 MB each.
2. ``.venv/bin/dewy --version`` wall time, median of 20 runs. Target: < 150 ms.
   Anchor: ``python -c pass`` (the interpreter's own floor), same runs.

If RSS is over target, the modules an idle server daemon has imported are
listed (from an identical probe daemon that dumps sys.modules on SIGUSR2), with
the largest memory mappings of the measured daemon.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

RSS_TARGET = 40 << 20
VERSION_TARGET = 0.150
PROBE = Path(__file__).resolve().parent / "_probe"
DEWY_SCRIPT = Path(c.PYTHON).parent / "dewy"


def start_daemon(kind: str, work: Path, github: c.GitHubServer, extra_env: dict[str, str] | None = None) -> c.Dewy:
    """An idle dewy at the default interval; server mode runs the test app on a held port."""
    home = work / kind
    home.mkdir()
    args = [kind, "--registry", f"ghr://{c.OWNER}/{c.REPO}", "-d", str(home / "app"), "-c", (home / "cache").as_uri()]
    if kind != "assets":
        args[0] = "server"
        args += ["-p", f"127.0.0.1:{c.free_port()}", "--settle-time", "0.1", "--health-path", "/health",
                 "--", c.PYTHON, "current/app.py"]
    return c.Dewy(args, cwd=home, env={**c.github_env(github), **(extra_env or {})})


def smaps_top(pid: int, count: int = 8) -> list[tuple[str, int]]:
    """Resident memory per mapping name (file, [heap], anonymous), largest first."""
    totals: Counter[str] = Counter()
    name = "?"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                fields = line.split()
                name = fields[5] if len(fields) > 5 else "[anonymous]"
            elif first == "Rss:":
                totals[name] += int(line.split()[1]) * 1024
    return totals.most_common(count)


def timed_runs(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - began)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=35, help="how long the daemons idle (default 35)")
    parser.add_argument("--runs", type=int, default=20, help="dewy --version runs (default 20)")
    parser.add_argument("--modules", action="store_true", help="list the imported modules even under target")
    args = parser.parse_args()
    c.banner("idle")
    results: list[bool | None] = []

    with tempfile.TemporaryDirectory(prefix="dewy-bench-") as tmp, c.GitHubServer(token=c.TOKEN) as github:
        work = Path(tmp)
        github.add_release(c.OWNER, c.REPO, "v1.0.0", {c.host_artifact(): c.tar_gz(c.app_release("v1.0.0"))})
        dump = work / "modules"
        daemons = {
            "server": start_daemon("server", work, github),
            "assets": start_daemon("assets", work, github),
            "probe": start_daemon("probe", work, github, {"PYTHONPATH": str(PROBE), "DEWY_BENCH_MODULES": str(dump)}),
        }
        rows, failed = [], {}
        try:
            for kind, dewy in daemons.items():
                try:
                    dewy.wait_for("deployed", version="v1.0.0", timeout=60)
                except AssertionError as exc:
                    failed[kind] = str(exc).splitlines()[0][:300]
            began = time.monotonic()
            samples: dict[str, list[int]] = {k: [] for k in daemons}
            while time.monotonic() - began < args.seconds:
                time.sleep(min(5, max(args.seconds - (time.monotonic() - began), 0)))
                for kind, dewy in daemons.items():
                    if kind not in failed and dewy.process.poll() is None:
                        samples[kind].append(c.proc_status(dewy.process.pid)["VmRSS"])
            polls = {}
            for kind, dewy in daemons.items():
                records = c.drain(dewy)
                polls[kind] = sum(1 for r in records if r.get("event") == "up-to-date")
                gets = [r for r in records if r.get("event") == "github"]
                if kind in failed:
                    continue
                if dewy.process.poll() is not None:
                    failed[kind] = f"dewy exited ({dewy.process.returncode}) while idle"
                    continue
                status = c.proc_status(dewy.process.pid)
                rows.append((f"dewy {kind}" if kind != "probe" else "dewy server (probe, sitecustomize)",
                             polls[kind], len(gets), c.mb(status["VmRSS"]), c.mb(status.get("RssAnon", 0)),
                             c.mb(status.get("RssFile", 0)), c.mb(status["VmHWM"]),
                             " ".join(f"{s / (1 << 20):.1f}" for s in samples[kind])))
            measured = {kind: c.proc_status(d.process.pid)["VmRSS"] for kind, d in daemons.items()
                        if kind not in failed and kind != "probe"}
            mappings = {kind: smaps_top(daemons[kind].process.pid) for kind in measured}
            modules: list[str] = []
            probe = daemons["probe"]
            if "probe" not in failed:
                probe.process.send_signal(signal.SIGUSR2)
                target = Path(f"{dump}.{probe.process.pid}")
                for _ in range(100):
                    if target.exists():
                        modules = target.read_text().split()
                        break
                    time.sleep(0.05)
        finally:
            for dewy in daemons.values():
                try:
                    dewy.stop(timeout=20)
                finally:
                    dewy.kill()

    c.table(f"idle dewy on ghr:// at the default interval (10 s), after {args.seconds:g} s idle",
            rows, ("daemon", "polls", "API GETs", "VmRSS", "RssAnon", "RssFile", "VmHWM", "VmRSS every 5 s (MB)"))
    for kind, problem in failed.items():
        print(f"  {kind}: could not be measured: {problem}")
    for kind in ("server", "assets"):
        if kind in measured:
            results.append(c.verdict(f"idle RSS, dewy {kind}", measured[kind] <= RSS_TARGET,
                                     f"{c.mb(measured[kind])} (target <= {c.mb(RSS_TARGET)})"))
        else:
            results.append(c.verdict(f"idle RSS, dewy {kind}", False, "not measured: " + failed.get(kind, "?")))

    over = any(v > RSS_TARGET for v in measured.values())
    if (over or args.modules) and modules:
        packages = Counter(m.split(".")[0] for m in modules)
        print(f"\nmodules imported by an idle dewy server daemon: {len(modules)} in {len(packages)} top-level packages")
        print("  by package (modules): " + ", ".join(f"{p} {n}" for p, n in packages.most_common(25)))
        heavy = [p for p in ("httpx", "httpcore", "h11", "h2", "anyio", "ssl", "certifi", "idna", "sniffio", "email",
                             "http", "json", "tarfile", "zipfile", "lzma", "bz2", "semver", "asyncio", "concurrent",
                             "urllib", "logging", "argparse", "dataclasses", "typing", "ipaddress") if p in packages]
        print("  notable: " + ", ".join(heavy))
        print("  all: " + " ".join(modules))
    if over or args.modules:
        for kind, top in mappings.items():
            print(f"\nlargest resident mappings of dewy {kind}:")
            for name, size in top:
                print(f"  {size / (1 << 20):7.1f} MB  {name}")

    runs = args.runs
    dewy_times = timed_runs([str(DEWY_SCRIPT), "--version"], runs)
    floor = timed_runs([c.PYTHON, "-c", "pass"], runs)
    version_median, floor_median = c.median(dewy_times), c.median(floor)
    c.table(f"start time, median of {runs} runs", [
        (f"{DEWY_SCRIPT.relative_to(c.ROOT) if DEWY_SCRIPT.is_relative_to(c.ROOT) else DEWY_SCRIPT} --version",
         c.ms(version_median), c.ms(min(dewy_times)), c.ms(max(dewy_times))),
        ("python -c pass (anchor floor)", c.ms(floor_median), c.ms(min(floor)), c.ms(max(floor))),
        ("dewy's own cost above the floor", c.ms(version_median - floor_median), "", ""),
    ], ("command", "median", "min", "max"))
    results.append(c.verdict("dewy --version", version_median < VERSION_TARGET,
                             f"{c.ms(version_median)} (target < {c.ms(VERSION_TARGET)}; python -c pass {c.ms(floor_median)})"))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
