"""Is the main loop getting on? For systemd's watchdog, so that a wedged dewy is restarted (and adopts the app)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

START_SLACK = 30.0  # a step's allowance beyond its configured timeouts (systemd jobs, process spawns)


class Liveness:
    """The loop is a sequence of steps (a cycle's phases, the wait between cycles). A step must end
    within the watchdog period plus its ``allowance``: what its own deadlines allow (a hook's
    timeout, an app start's health timeout). ``None`` marks a step bounded by progress rather
    than time (a download, an extraction). A step past its allowance is stuck on something that
    never returns, and the pings stop.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()
        self.allowance: float | None = 0.0

    def beat(self) -> None:
        self.last = self.clock()

    @contextlib.contextmanager
    def step(self, allowance: float | None) -> Iterator[None]:
        self.beat()
        previous, self.allowance = self.allowance, allowance
        try:
            yield
        finally:
            self.allowance = previous
            self.beat()

    def alive(self, period: float) -> bool:
        return self.allowance is None or self.clock() - self.last <= period + self.allowance
