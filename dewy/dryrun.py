"""``--dry-run``: poll the registry as the daemon would and log what it would deploy; change nothing.

Nothing of the deploy machinery is built: no sockets are bound, no app is started or adopted, no
file is written (the state file is only read, for what is deployed and quarantined). So a dry run
can watch beside the dewy that serves the same directory, to try a registry URL or a constraint.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import datetime
from pathlib import Path

from dewy import log
from dewy.faults import describe
from dewy.host import Host
from dewy.registry import REGISTRIES, Registry, Release
from dewy.schedule import Schedule
from dewy.settings import Settings
from dewy.signing import Verification
from dewy.state import State
from dewy.urls import Url


def verdict(release: Release, state_path: Path, schedule: Schedule) -> str:
    """What the daemon would do with ``release``, the registry's newest, given the state file and the
    deploy window and minimum release age."""
    state = State(state_path)
    if state_path.exists():
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            state = State.load(state_path)
    deployed = state.current
    if deployed and deployed.key == release.cache_key:
        return f"{release.tag} is deployed: nothing to do"
    if release.cache_key in state.quarantine:
        return f"{release.tag} is quarantined ({state.quarantine[release.cache_key]}): nothing to do"
    held = "paused" if state.paused else f"pinned on {state.pin.tag}" if state.pin else None
    would = f"would deploy {release.tag} (deployed: {deployed.tag if deployed else 'nothing'})"
    if held:
        return f"{would}, once no longer {held}"
    now = schedule.clock()
    seen = datetime.fromisoformat(state.waiting.seen) if state.waiting and state.waiting.key == release.cache_key else now
    hold = schedule.hold(release, now, seen) if deployed else None
    return f"{would}, once it no longer waits: {hold.reason}" if hold else would


async def watch(settings: Settings, host: Host) -> int:
    """Poll every interval until SIGINT/SIGTERM; under systemd ready at once, the verdict as STATUS=, the
    watchdog pinged while waiting."""
    with settings.given("registry"):
        registry_url, _ = Verification.of(settings.registry, settings.trusted_keys)
        registry: Registry = REGISTRIES.load(REGISTRIES.url(registry_url), slot=settings.slot)
    schedule = Schedule.of(settings.deploy_window, settings.min_release_age, asyncio.Event())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    log.info("started", f"dewy {settings.mode} --dry-run watching {Url.parse(settings.registry)}: nothing is changed",
             dir=str(settings.dir))
    host.ready("dry run: nothing is changed")
    beat = host.watchdog_interval()
    said = None
    try:
        while not stopping.is_set():
            try:
                release = await registry.current()
                line, fields = verdict(release, settings.dir / ".dewy" / "state.json", schedule), {"version": release.tag}
            except Exception as exc:
                line, fields = f"the registry cannot be read: {describe(exc)}", {}
            (log.info if line != said else log.debug)("dry-run", line, **fields)
            if line != said:
                host.status(f"dry run: {line}"[:400])
            said = line
            until = loop.time() + settings.interval
            while not stopping.is_set() and (left := until - loop.time()) > 0:
                if beat:
                    host.ping()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), min(left, beat or left))
    finally:
        host.stopping()
        await registry.aclose()
        await host.aclose()
    return 0
