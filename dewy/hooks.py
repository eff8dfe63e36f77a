"""Deploy hooks: operator shell commands run around a deploy, their output in dewy's log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from dewy import log
from dewy.errors import HookError

OUTPUT_LIMIT = 64 * 1024
EXCERPT_LIMIT = 1500  # what notifications quote of a hook's output


async def run_hook(kind: str, command: str, *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run ``/bin/sh -c command``; HookError on non-zero exit or timeout. Output is logged line by line;
    the end of it is returned (and carried by the HookError as ``output``) for notifications."""
    process = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", command, cwd=cwd, env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        await _kill(process)
        raise HookError(f"{kind} hook {command!r} timed out after {timeout:g}s and was killed") from None
    except asyncio.CancelledError:  # dewy stops: the hook and whatever it started go with the cycle
        await asyncio.shield(_kill(process))
        raise
    text = output[-OUTPUT_LIMIT:].decode("utf-8", "replace")
    for line in text.splitlines():
        log.info(f"{kind}-hook-output", line, hook=kind)
    if process.returncode != 0:
        last = text.strip().splitlines()[-1:] or ["no output"]
        error = HookError(f"{kind} hook {command!r} exited with status {process.returncode}: {last[0]}")
        error.output = text[-EXCERPT_LIMIT:]
        raise error
    log.info(f"{kind}-hook", f"{kind} hook succeeded", hook=kind)
    return text[-EXCERPT_LIMIT:]


async def _kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the hook's whole session (it may have exited already, leaving its children) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
