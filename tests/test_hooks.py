"""Deploy hooks: environment, output captured to the log, failure and timeout."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import pytest

from dewy.errors import HookError
from dewy.hooks import run_hook


def hook(command, tmp_path, timeout=10.0):
    return asyncio.run(run_hook("before", command, cwd=tmp_path, env={"DEWY_VERSION": "v1.2.3"}, timeout=timeout))


def test_output_and_environment_reach_the_log(tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dewy")
    logging.getLogger("dewy").propagate = True
    hook('echo "deploying $DEWY_VERSION in $(pwd)"; echo oops >&2', tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert f"deploying v1.2.3 in {tmp_path}" in messages
    assert "oops" in messages


def test_non_zero_exit_is_an_error_with_its_last_line(tmp_path) -> None:
    with pytest.raises(HookError, match=r"exited with status 3: disk full"):
        hook("echo checking; echo disk full; exit 3", tmp_path)


def alive(pid: int) -> bool:
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_timeout_kills_the_whole_hook(tmp_path) -> None:
    pidfile = tmp_path / "child.pid"
    with pytest.raises(HookError, match="timed out after 0.5s"):
        hook(f"sleep 30 & echo $! > {pidfile}; wait", tmp_path, timeout=0.5)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5  # SIGKILL is delivered at once; teardown may take a moment
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid), "the hook's background child must be killed too"


def test_timeout_of_a_hook_whose_shell_already_exited_is_still_a_hook_error(tmp_path) -> None:
    # the shell is gone (reaped) while a process it left in a session of its own keeps the output open:
    # its process group is empty when the timeout kills it
    async def main() -> None:
        with pytest.raises(HookError, match=r"timed out after 0.5s and was killed"):
            await run_hook("before", f"setsid sh -c 'echo $$ > {tmp_path}/pid; exec sleep 3' &", cwd=tmp_path,
                           env={}, timeout=0.5)
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)
        await asyncio.sleep(0.1)  # the loop sees the output pipe close before it is closed itself

    asyncio.run(main())


def test_a_cancelled_hook_is_killed_with_what_it_started(tmp_path) -> None:
    async def main() -> None:
        task = asyncio.create_task(run_hook("before", f"sleep 30 & echo $! > {tmp_path}/pid; wait", cwd=tmp_path,
                                            env={}, timeout=60))
        while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text().strip():
            await asyncio.sleep(0.01)  # the hook is running
        task.cancel()  # dewy stops during the hook
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 10))
    assert not running(int((tmp_path / "pid").read_text()))


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits to be reaped by whatever adopts it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
