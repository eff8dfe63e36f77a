"""Progress of long work (a download, an extraction), told every few seconds once it takes a while.

"downloading v2.0.0: 412 MiB of 1.0 GiB, 180 MiB/s, 4 s left" goes to the log, to systemd's
STATUS= line, and to ``dewy status`` through a small file beside the state file (written
without fsync: it only matters while dewy runs, and is removed when the work ends).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from dewy.fsutil import TEMP_PREFIX
from dewy.spool import AnySpool, Reader

SAMPLE = 1.0  # how often long work is looked at: a line is due only every INTERVAL
QUIET = 5.0  # work that ends sooner tells nothing
INTERVAL = 5.0  # between two lines

Report = Callable[[str, dict], None]


class Progress:
    """Bytes done of one piece of work; ``report`` gets a line (and its numbers) when one is due by ``clock``."""

    def __init__(self, version: str, report: Report, clock: Callable[[], float] = time.monotonic,
                 quiet: float = QUIET, interval: float = INTERVAL) -> None:
        self.version = version
        self.report = report
        self.clock = clock
        self.interval = interval
        self.phase = ""
        self.done = 0
        self.total: int | None = None
        now = clock()
        self.began = now
        self.due = now + quiet
        self.mark = (now, 0)  # (time, bytes done) when the rate was last measured: it is the recent rate

    def update(self, phase: str, done: int, total: int | None) -> None:
        now = self.clock()
        if phase != self.phase:
            if self.phase:  # another kind of bytes: the rate starts again
                self.mark = (now, done)
            self.phase = phase
        self.done, self.total = done, total
        if now < self.due:
            return
        self.due = now + self.interval
        since, before = self.mark
        rate = (done - before) / (now - since) if now > since else None
        self.mark = (now, done)
        line = f"{phase} {self.version}: {size(done)}" + (f" of {size(total)}" if total else "")
        fields: dict = {"phase": phase, "bytes": done, "total": total}
        if rate is not None:
            line += f", {size(rate)}/s"
            fields["rate"] = int(rate)
            if total and rate > 0:
                left = max(total - done, 0) / rate
                line += f", {duration(left)} left"
                fields["eta"] = round(left)
        self.report(line, fields)

    def elapsed(self, phase: str) -> None:
        """Work whose size nobody tells (an image pull through Podman 4's API): how long it has taken so far."""
        now = self.clock()
        if now < self.due:
            return
        self.due = now + self.interval
        self.phase = phase
        taken = now - self.began
        self.report(f"{phase} {self.version}: {duration(taken)} so far", {"phase": phase, "elapsed": round(taken)})

    def sample(self, spool: AnySpool, extractor: Reader | None) -> None:
        """From a fetch: the download while bytes arrive, then the extraction catching up with them."""
        if spool.done and extractor is not None:
            self.update("extracting", extractor.tell(), spool.size)
        else:
            self.update("downloading", spool.size, spool.total)


def size(count: float) -> str:
    """412 MiB, 1.0 GiB: whole units below a GiB, a tenth above."""
    if count >= 1024**3:
        return f"{count / 1024**3:.1f} GiB"
    for scale, unit in ((1024**2, "MiB"), (1024, "KiB")):
        if count >= scale:
            return f"{count / scale:.0f} {unit}"
    return f"{count:.0f} B"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class ProgressFile:
    """Where ``dewy status`` finds the line of the work in progress, with the pid that writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, line: str) -> None:
        temp = self.path.with_name(f"{TEMP_PREFIX}{self.path.name}-{os.getpid()}")  # a kill -9 leaves it: removed at start
        try:
            temp.write_text(json.dumps({"pid": os.getpid(), "line": line, "at": datetime.now(timezone.utc).isoformat()}))
            os.replace(temp, self.path)
        except OSError:
            temp.unlink(missing_ok=True)  # a full disk: status just shows less

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass

    def read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
