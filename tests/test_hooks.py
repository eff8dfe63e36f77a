"""Deploy hooks: environment, output captured to the log, failure and timeout."""

from __future__ import annotations

import asyncio
import logging
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
