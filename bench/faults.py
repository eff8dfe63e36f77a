"""The fault matrix: every fault of tests/faultmatrix.py injected around a real dewy, one row each.

    .venv/bin/python bench/faults.py              # all rows (about 4 minutes)
    .venv/bin/python bench/faults.py disk_full_download    # some of them

Per fault: requests that failed while it lasted (a client loop on the app's port), whether the old
version kept serving, how long dewy took to recover by itself once the fault cleared (to the next
deploy), and what was left half-done. Target for every row: 0 failed, kept serving, recovered, no
leftovers. The tmpfs rows need root.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _common import banner, table, verdict  # noqa: F401 (puts the repository on sys.path first)

from tests import faultmatrix  # noqa: E402
from tests.faultinject import HANG, TRICKLE  # noqa: E402

SCENARIOS = {
    "disk_full_download": (lambda d: faultmatrix.disk_full(d, "download"), True),
    "disk_full_extraction": (lambda d: faultmatrix.disk_full(d, "extraction"), True),
    "read_only_download": (lambda d: faultmatrix.read_only_during_deploy(d, "download"), True),
    "read_only_switch": (lambda d: faultmatrix.read_only_during_deploy(d, "switch"), True),
    "registry_hangs": (lambda d: faultmatrix.registry_unresponsive(d, HANG), False),
    "registry_trickles": (lambda d: faultmatrix.registry_unresponsive(d, TRICKLE), False),
    "registry_outage": (faultmatrix.registry_outage, False),
    "sigterm_download": (faultmatrix.sigterm_during_download, False),
    "kill_9": (faultmatrix.kill_9_during_deploys, False),
}
NOT_SEEN = "n/a"  # a fault with no client loop: in process (the fast-forwarded outage), or dewy killed with its app


def requests(outcome: faultmatrix.Outcome) -> str:
    if outcome.requests == 0:
        return NOT_SEEN
    return f"{len(outcome.failed)} of {outcome.requests}"


def recovery(outcome: faultmatrix.Outcome) -> str:
    if outcome.recovered_in is None:
        return "no"
    unit = " (fast-forwarded clock)" if isinstance(outcome, faultmatrix.Endured) else ""
    return f"{outcome.recovered_in:.1f} s{unit}"


def notes(outcome: faultmatrix.Outcome) -> str:
    if isinstance(outcome, faultmatrix.Stopped):
        return f"stopped {outcome.stop_seconds:.1f} s after SIGTERM (exit {outcome.exit_code})"
    if isinstance(outcome, faultmatrix.Endured):
        gaps = [b - a for a, b in zip(outcome.polls, outcome.polls[1:])]
        tail = f", polls {min(gaps[20:]):.0f}-{max(gaps[20:]):.0f} s apart at the cap" if len(gaps) > 20 else ""
        return f"{len(outcome.polls)} polls over {(outcome.polls[-1] - outcome.polls[0]) / 86400:.1f} days{tail}, " \
               f"{outcome.error_notifications} error notifications" + (f"; {outcome.errors[0]['msg']}" if outcome.errors else "")
    if isinstance(outcome, faultmatrix.Crashed):
        broken = [e["msg"] for e in outcome.errors]
        return f"kills landed in: {', '.join(sorted(set(outcome.killed_in)))}" + (f"; {broken[0]}" if broken else "")
    first = next((e["msg"] for e in outcome.errors if e.get("event") == "deploy-failed"), None)
    return f"dewy said: {first}" if first else ""


def run(name: str) -> tuple[tuple, bool | None]:
    scenario, needs_root = SCENARIOS[name]
    if needs_root and os.geteuid() != 0:
        return (name, "-", "-", "-", "-", "needs root (a tmpfs)"), None
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"dewy-fault-{name}-") as workdir:
        try:
            outcome = scenario(Path(workdir))
        except Exception as exc:  # dewy died, or waited forever: the row says so
            reason = str(exc).splitlines()[0][:300]
            print(f"{name}: {''.join(traceback.format_exception_only(exc)).strip()[:2000]}", flush=True)
            return (name, "-", "no", "no", "-", f"scenario failed: {reason}"), False
    serving = "yes" if outcome.kept_serving else "no"
    left = str(len(outcome.leftovers)) if outcome.leftovers else "none"
    ok = outcome.ok
    print(f"{name}: {time.monotonic() - began:.0f} s", flush=True)
    return (outcome.fault, requests(outcome), serving, recovery(outcome), left, notes(outcome)), ok


def main(argv: list[str]) -> int:
    names = argv or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown fault(s) {unknown}; choose from {list(SCENARIOS)}", file=sys.stderr)
        return 2
    banner("fault matrix: faults around a real dewy server, app under a client loop")
    rows, verdicts = [], []
    for name in names:
        row, ok = run(name)
        rows.append(row)
        verdicts.append((name, ok, row))
    table("fault matrix", rows, ("fault", "failed requests", "app kept serving", "recovered after the fault",
                                 "leftovers", "notes"))
    print()
    for name, ok, row in verdicts:
        verdict(name, ok, f"failed {row[1]}, kept serving {row[2]}, recovered {row[3]}, leftovers {row[4]}")
    return 0 if all(ok is not False for _, ok, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
