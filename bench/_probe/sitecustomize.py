"""Loaded by Python at startup when bench/_probe is on PYTHONPATH (idle.py's probe daemon only).

With DEWY_BENCH_MODULES=PREFIX set, SIGUSR2 makes the process write its sys.modules to
PREFIX.<pid> (one name a line), so idle.py can list what an idle daemon has imported.
"""

import os
import signal
import sys

_prefix = os.environ.get("DEWY_BENCH_MODULES")

if _prefix:
    def _dump(signum, frame):
        path = f"{_prefix}.{os.getpid()}"
        with open(path + ".tmp", "w") as out:
            out.write("\n".join(sorted(sys.modules)) + "\n")
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR2, _dump)
