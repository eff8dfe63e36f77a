"""Progress of long work: nothing for short work, then a line every few seconds with bytes, rate and time left
(a fake clock), shown in systemd's STATUS= line and by ``dewy status`` while the work lasts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from dewy.daemon import Daemon, Liveness
from dewy.host import PlainProcess
from dewy.progress import Progress, ProgressFile
from tests.conftest import publish
from tests.test_daemon import settings

MiB, GiB = 1 << 20, 1 << 30


class Clock:
    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_quiet_for_short_work_then_a_line_every_interval_with_rate_and_time_left() -> None:
    clock, lines = Clock(), []
    progress = Progress("v2.0.0", lambda line, fields: lines.append((clock.now, line, fields)), clock=clock)
    for second in range(0, 16):  # sampled every second, 40 MiB/s of 1 GiB
        clock.now = second
        progress.update("downloading", second * 40 * MiB, GiB)
    assert [at for at, _, _ in lines] == [5, 10, 15]
    assert lines[0][1] == "downloading v2.0.0: 200 MiB of 1.0 GiB, 40 MiB/s, 21 s left"
    assert lines[0][2] == {"phase": "downloading", "bytes": 200 * MiB, "total": GiB, "rate": 40 * MiB, "eta": 21}


def test_work_of_no_known_size_tells_the_time_it_has_taken() -> None:
    clock, lines = Clock(), []
    progress = Progress("v2.0.0", lambda line, fields: lines.append((line, fields)), clock=clock)
    for second in range(0, 11):  # an image pull whose runtime tells no bytes, sampled every second
        clock.now = second
        progress.elapsed("pulling")
    assert lines == [("pulling v2.0.0: 5 s so far", {"phase": "pulling", "elapsed": 5}),
                     ("pulling v2.0.0: 10 s so far", {"phase": "pulling", "elapsed": 10})]


def test_the_rate_is_the_recent_one_and_a_stall_shows_as_zero() -> None:
    clock, lines = Clock(), []
    progress = Progress("v2.0.0", lambda line, fields: lines.append(line), clock=clock)
    clock.now = 5
    progress.update("downloading", 900 * MiB, None)  # 180 MiB/s so far; the size was not announced
    clock.now = 10
    progress.update("downloading", 900 * MiB, None)
    assert lines == ["downloading v2.0.0: 900 MiB, 180 MiB/s", "downloading v2.0.0: 900 MiB, 0 B/s"]


def test_a_new_phase_measures_its_own_rate() -> None:
    clock, lines = Clock(), []
    progress = Progress("v2.0.0", lambda line, fields: lines.append(line), clock=clock)
    clock.now = 4
    progress.update("downloading", GiB, GiB)
    progress.update("extracting", 412 * MiB, GiB)  # the extraction catching up with the bytes
    clock.now = 5
    progress.update("extracting", 592 * MiB, GiB)
    assert lines == ["extracting v2.0.0: 592 MiB of 1.0 GiB, 180 MiB/s, 2 s left"]


class Recording(PlainProcess):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def status(self, text: str) -> None:
        self.lines.append(text)


def test_a_deploy_shows_its_progress_in_status_then_clears_it(tmp_path) -> None:
    publish(tmp_path / "registry", "v1.0.0", {"index.html": "one", "big.bin": os.urandom(4 * MiB)})

    async def main() -> Recording:
        host = Recording()
        daemon = Daemon.from_settings(settings(tmp_path), host)
        daemon.liveness = Liveness(clock=Clock(step=10.0))  # every sample is 10 s after the last: each one is told
        assert await daemon.cycle() == daemon.settings.interval
        return host

    seen = asyncio.run(main()).lines
    working = [line for line in seen if "v1.0.0: " in line]
    assert working and re.fullmatch(r"nothing deployed yet; (downloading|extracting) v1\.0\.0: \d+ MiB of 4 MiB.*", working[0])
    assert "v1.0.0: " not in seen[-1], "the line goes when the work ends"
    assert not (tmp_path / "site" / ".dewy" / "progress.json").exists()


def status(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dewy", "status", "-d", str(site)], capture_output=True, text=True,
                          timeout=30)


def test_dewy_status_shows_the_work_of_a_running_dewy_only(tmp_path) -> None:
    site = tmp_path / "site"
    (site / ".dewy").mkdir(parents=True)
    (site / ".dewy" / "state.json").write_text(json.dumps({"current": None}))
    shown = ProgressFile(site / ".dewy" / "progress.json")
    shown.write("downloading v2.0.0: 412 MiB of 1.0 GiB, 180 MiB/s, 3 s left")  # written by this (running) process
    assert "in progress:  downloading v2.0.0: 412 MiB of 1.0 GiB, 180 MiB/s, 3 s left" in status(site).stdout
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    record = json.loads(shown.path.read_text())
    shown.path.write_text(json.dumps({**record, "pid": int(dead)}))  # what a killed dewy left
    assert "in progress" not in status(site).stdout
