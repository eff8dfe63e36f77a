"""Run every benchmark in turn, print its figures as they come, then a summary of the verdicts.

    .venv/bin/python bench/run_all.py [NAME ...]     # default: all, in the order below

Exit code 0 when every target is met (or skipped), 1 otherwise. About 10-11 minutes in all.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ORDER = ["deploy_latency", "idle", "big_artifact", "rate_limit", "graceful_restart", "container_rollout", "faults", "webhook"]


def main(argv: list[str]) -> int:
    names = argv or ORDER
    unknown = [n for n in names if n.removesuffix(".py") not in ORDER]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {ORDER}", file=sys.stderr)
        return 2
    summary: list[tuple[str, int, float, list[str]]] = []
    for name in (n.removesuffix(".py") for n in names):
        print(f"\n######## bench/{name}.py", flush=True)
        began = time.monotonic()
        process = subprocess.Popen([sys.executable, str(BENCH / f"{name}.py")], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        verdicts = []
        for line in process.stdout:
            print(line, end="", flush=True)
            if line.startswith(("[PASS]", "[FAIL]", "[SKIP]")):
                verdicts.append(line.rstrip())
        code = process.wait()
        summary.append((name, code, time.monotonic() - began, verdicts))
    print("\n######## summary")
    for name, code, seconds, verdicts in summary:
        print(f"{name} ({seconds:.0f} s, exit {code})")
        for verdict in verdicts or ["[FAIL] no verdict printed (crashed?)"]:
            print(f"  {verdict}")
    return 0 if all(code == 0 for _, code, _, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
