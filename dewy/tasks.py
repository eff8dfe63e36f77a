"""Tasks nobody awaits (a SIGUSR1 restart, a crash recovery, a cleanup): kept referenced and never silent.

asyncio holds only a weak reference to a task, and an exception of a task nobody awaits is
printed at garbage collection, if ever. These are kept until done and their failures logged.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Coroutine
from typing import Any

from dewy import log
from dewy.faults import describe


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def start(self, coroutine: Coroutine[Any, Any, Any], what: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(done, what))
        return task

    def __len__(self) -> int:
        """How many are still running."""
        return len(self._tasks)

    def _finished(self, task: asyncio.Task, what: str) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("task-failed", f"{what} failed: {describe(exc)}")
        log.debug("task-failed", "".join(traceback.format_exception(exc)))

    async def cancel(self) -> None:
        """Cancel every task still running and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
