"""The daemon: the deploy cycle (docs/architecture.md), run once per interval, forever.

Reads top to bottom like the contract: ask the registry, skip what is deployed or
quarantined, prepare the release, before-hook, activate it (rolling back and quarantining
when it does not come up), after-hook, report, prune. What each step does to this host is
the mode's deploy target (:mod:`dewy.targets`): the cycle itself is the same for all modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from dewy import log, targets, telemetry
from dewy.cache import CACHES, Cache
from dewy.control.commands import Control
from dewy.errors import AppStartError, ArtifactNotReady, DewyError, HookError, UsageError
from dewy.faults import describe
from dewy.fsutil import remove_temp_files
from dewy.hooks import run_hook
from dewy.host import Host, detect
from dewy.liveness import START_SLACK, Liveness
from dewy.notifiers import NOTIFIERS, Notifications
from dewy.progress import Progress, ProgressFile
from dewy.registry import REGISTRIES, Registry, Release
from dewy.schedule import Schedule
from dewy.settings import Settings
from dewy.signing import SignatureRefused, Verification
from dewy.state import Pause, State
from dewy.targets import Candidate, DeployTarget
from dewy.tasks import Background
from dewy.urls import Url
from dewy.webhook import Webhook

if TYPE_CHECKING:
    from dewy.fleet.coordinator import Coordinator

MAX_BACKOFF = 300.0
IDLE_BEAT = 1.0  # between cycles, how often the loop tells the watchdog it is fine
POLL_ALLOWANCE = 300.0  # a registry poll (its reads have their own deadlines): beyond this it is wedged
THREAD_GRACE = 1.0  # at exit, how long a worker thread may take to finish


@dataclass
class Backoff:
    """Delay before the next cycle: the interval when healthy, growing with jitter after failures."""

    interval: float
    failures: int = 0
    cap: float = MAX_BACKOFF  # --poll-backoff-max

    def next_delay(self, retry_after: float | None = None) -> float:
        if self.failures == 0:
            return self.interval
        doublings = min(self.failures - 1, 64)  # past the cap anyway; 2 ** 1024 would not fit a float
        grown = min(self.interval * 2.0 ** doublings, max(self.cap, self.interval))
        return max(grown * random.uniform(0.8, 1.2), retry_after or 0.0)


class Daemon:
    def __init__(self, settings: Settings, registry: Registry, cache: Cache, state: State, notifications: Notifications,
                 host: Host, target: DeployTarget, liveness: Liveness, webhook: Webhook | None = None,
                 fleet: Coordinator | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.state = state
        self.notifications = notifications
        self.host = host
        self.target = target
        self.liveness = liveness
        self.fleet = fleet  # --rollout: the fleet admits this host to a new release (dewy.fleet)
        self.backoff = Backoff(settings.interval, cap=settings.poll_backoff_max)
        self.stopping = asyncio.Event()
        self.background = Background()
        self.activity: str | None = None  # long work in progress ("downloading v2.0.0: 412 MiB of 1.0 GiB, ...")
        self.poll_now = asyncio.Event()  # a poll before the interval is up: a webhook, a deploy window opening
        self.schedule = Schedule.of(settings.deploy_window, settings.min_release_age, self.poll_now)
        self.webhook = webhook
        self.control = Control(state, target, self.switch, self.poll_now, self.release, self.deploy)
        self.control.fleet = fleet  # dewy pause|resume|rollback --fleet

    @classmethod
    def from_settings(cls, settings: Settings, host: Host) -> Daemon:
        """Build every backend now, so a bad URL or directory fails at startup (exit 2), not on the first tick."""
        with settings.given("registry"):
            registry_url, verification = Verification.of(settings.registry, settings.trusted_keys)
            registry = REGISTRIES.load(REGISTRIES.url(registry_url), slot=settings.slot)
        with settings.given("cache"):
            cache_url = CACHES.url(settings.cache) if settings.cache else Url.parse("memory://")
            cache = CACHES.load(cache_url)
        ttl = getattr(cache, "ttl", None)
        if ttl:  # a shared cache with ttl=: one host of the fleet asks the registry per ttl, the rest read it
            from dewy.registry.shared import SharedRegistry

            registry = SharedRegistry(registry, cache, ttl, key=f"registry:{settings.registry}:{settings.slot or ''}")
        notifiers = []
        for index, url in enumerate(settings.notifiers):
            with settings.given(f"notifiers[{index}]"):
                notifiers.append(NOTIFIERS.load(NOTIFIERS.url(url)))
        notifications = Notifications(notifiers, settings.app_name)
        try:
            settings.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot use {exc.filename}: {exc.strerror}") from None
        state = State.load(settings.dir / ".dewy" / "state.json")
        remove_temp_files(state.path.parent)  # what a kill -9 left of a state or progress file being written
        liveness = Liveness()
        target = targets.load(settings, host=host, state=state, liveness=liveness, registry=registry,
                              cache_url=cache_url, verification=verification)
        with settings.given("webhook"):
            webhook = Webhook.from_settings(settings) if settings.webhook else None
        fleet = None
        if settings.rollout:
            from dewy.fleet.coordinator import Coordinator

            fleet = Coordinator.of(settings, cache, state, notifications, target)
        return cls(settings, registry, cache, state, notifications, host, target, liveness, webhook, fleet)

    async def serve(self) -> int:
        """Cycle until a stop is requested; 0 then. An internal error (a bug) ends dewy with 1 but, as a
        restart does, leaves the app running for the next dewy to adopt."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("signal", "SIGHUP ignored"))
        loop.add_signal_handler(signal.SIGUSR1, self._restart_app)
        log.info("started", f"dewy {self.settings.mode} watching {Url.parse(self.settings.registry)}",
                 dir=str(self.settings.dir))
        self.background.start(self._watchdog(), "the watchdog")
        self.background.start(self.target.watch(lambda: self.host.status(self.status())), "recording the running app")
        self.background.start(self.control.serve(self.settings.dir), "the control channel")
        if self.webhook:
            self.background.start(self.webhook.run(self.poll_now), "the webhook")
        code = 0
        try:
            await self._until_stopped(self._guarded(self.target.adopt))
            self.host.ready(self.status())
            while not self.stopping.is_set():
                delay = await self._until_stopped(self.cycle())
                if delay is None:
                    break
                self.host.status(self.status())
                await self._idle(delay)
        except Exception as exc:  # a bug outside any cycle: dewy ends, the app does not
            log.error("internal-error", f"dewy stops: {describe(exc)}")
            log.debug("internal-error", traceback.format_exc())
            code = 1
        finally:
            self.host.stopping()
            await self.background.cancel()
            await self._shut_down(stop_app=code == 0)
        return code

    async def _until_stopped(self, step):
        """Await ``step`` unless a stop is requested first: then it is cancelled (its cleanup runs) and None returned."""
        task = asyncio.ensure_future(step)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        log.info("stopping", "stop requested: cancelling the deploy cycle in flight")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def _idle(self, delay: float) -> None:
        """Wait ``delay`` for the next cycle (or a stop, or ``poll_now``), telling the watchdog the loop is fine
        meanwhile. ``poll_now`` is cleared here: set again during the cycle, it means one more poll."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        woken = [asyncio.ensure_future(self.stopping.wait()), asyncio.ensure_future(self.poll_now.wait())]
        try:
            while not any(w.done() for w in woken) and (left := until - loop.time()) > 0:
                self.liveness.beat()
                await asyncio.wait(woken, timeout=min(left, IDLE_BEAT), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in woken:
                waiting.cancel()
        self.poll_now.clear()

    async def _shut_down(self, stop_app: bool) -> None:
        """Stop the app only when a stop was asked for and dewy is not being restarted; release everything."""
        try:
            await self.target.stop(stop_app)
        except DewyError as exc:
            log.error("stop-failed", str(exc))
        finally:
            if self.fleet:
                await self.fleet.aclose()
            await self.registry.aclose()
            await self.cache.aclose()
            await self.notifications.aclose()
            await self.host.aclose()

    async def _watchdog(self) -> None:
        """WATCHDOG=1 while the main loop gets on (see Liveness): a frozen loop or a step stuck on a call
        stops the pings and systemd restarts dewy."""
        interval = self.host.watchdog_interval()
        while interval:
            if self.liveness.alive(interval):
                self.host.ping()
            else:
                log.error("watchdog", f"the deploy cycle has been stuck for "
                          f"{self.liveness.clock() - self.liveness.last:.0f}s: no watchdog ping, systemd restarts dewy")
            await asyncio.sleep(interval)

    def status(self) -> str:
        """systemd's STATUS= line: what is deployed, what runs, the last check and its error."""
        parts = [self.state.current.tag if self.state.current else "nothing deployed yet"]
        if self.activity:
            parts.append(self.activity)
        parts += self.control.status()
        if self.state.fleet_paused:
            parts.append("fleet paused")
        running = self.target.status()
        if running:
            parts.append(running)
        if self.state.last_check:
            parts.append(f"last check {self.state.last_check[11:19]} UTC")
        if self.state.last_error:
            parts.append(f"last error: {self.state.last_error}")
        if self.state.waiting:
            parts.append(self.state.waiting.reason)
        return "; ".join(parts)[:400]

    def _restart_app(self) -> None:
        self.background.start(self.target.restart(), self.target.restart_kind)

    async def cycle(self) -> float:
        """One deploy cycle (operators' commands wait for it); returns how long to wait before the next."""
        async with self.control.turn():
            return await self._guarded(self.tick)

    async def _guarded(self, step: Callable) -> float:
        """Run one step of the loop as a cycle: whatever it raises (but a stop) is that cycle's error: logged
        in one line, notified (within the error limit), counted for the backoff and retried."""
        retry_after = None
        error = None
        try:
            with self.liveness.step(0.0):
                await step()
            self.backoff.failures = 0
            await self.notifications.cycle_succeeded()
        except ArtifactNotReady as exc:
            log.info("waiting", str(exc))
        except Exception as exc:
            error = describe(exc)
            self.backoff.failures += 1
            retry_after = getattr(exc, "retry_after", None)
            log.error("deploy-failed", error, failures=self.backoff.failures)
            if not isinstance(exc, DewyError):
                log.debug("deploy-failed", traceback.format_exc())
            if not isinstance(exc, AppStartError):  # a rollback was notified as such
                output = {"hook output": exc.output} if isinstance(exc, HookError) and exc.output else {}
                await self.notifications.error("error", error, **output)
        self._record_check(error)
        return self.backoff.next_delay(retry_after)

    def _record_check(self, error: str | None) -> None:
        """Keep the last check and its error in the state file for ``dewy status``: at once when the error
        changes, else at most once a minute (no disk write every poll). A full disk only delays it."""
        now = datetime.now(timezone.utc)
        previous = datetime.fromisoformat(self.state.last_check) if self.state.last_check else None
        self.state.last_check = now.isoformat()
        if error != self.state.last_error or previous is None or (now - previous).total_seconds() >= 60:
            self.state.last_error = error
            try:
                self.state.save()
            except DewyError as exc:
                if error is None:  # else that error was just reported (it is probably the same disk)
                    log.error("state-save-failed", str(exc))

    async def tick(self) -> None:
        await self.target.converge()
        with self.liveness.step(POLL_ALLOWANCE), log.attempt("poll", "asked the registry"):
            release = await self.registry.current()
        if self.fleet:
            held = not self.target.is_current(release) and self._held(release)
            await self.fleet.hold(release.tag if held else None)
            if held:
                return  # the rollout passes this host by until its own gates let the release through
            release = await self.fleet.gate(release)
            self._record_fleet_pause()
            if release is None:
                return  # not this host's turn, paused or quarantined for the fleet: nothing is fetched
        if self.target.is_current(release):
            log.debug("up-to-date", f"{release.tag} is deployed", version=release.tag)
            self.schedule.settled(self.state)
            return
        if release.cache_key in self.state.quarantine:
            log.debug("quarantined", f"{release.tag} is quarantined: {self.state.quarantine[release.cache_key]}", version=release.tag)
            return
        if self._held(release):
            return
        await self.deploy(release)

    async def release(self, tag: str) -> Release:
        """The registry's release ``tag`` (``dewy pin``), asked with a poll's allowance of the watchdog."""
        with self.liveness.step(POLL_ALLOWANCE):
            return await self.registry.release(tag)

    def _record_fleet_pause(self) -> None:
        """Keep the fleet's pause, as the gate read it, in the state file for ``dewy status`` (written when it changes)."""
        paused = self.fleet.paused
        recorded = paused and Pause(datetime.fromtimestamp(paused.at, timezone.utc).isoformat(), paused.uid, paused.host)
        if recorded != self.state.fleet_paused:
            self.state.fleet_paused = recorded
            self.state.save()

    def _held(self, release: Release) -> bool:
        """Pinned or paused (the operator), outside the deploy window or too young (the schedule)."""
        return self.control.holds(release) or self.schedule.holds(release, self.state)

    async def deploy(self, release: Release) -> None:
        """Fetch, verify and switch to ``release``: the registry's newest, or the one ``dewy pin`` names."""
        await self.target.ready(release)
        previous = self.state.current
        log.info("deploying", f"deploying {release.tag}", version=release.tag, previous_version=previous and previous.tag)
        try:
            with self._progress(release) as progress:
                candidate = await self.target.prepare(release, progress)
        except SignatureRefused as exc:  # never fetched again
            self.state.quarantine[release.cache_key] = str(exc)
            self.state.save()
            await self._report(release, error=str(exc))
            raise
        await self.switch(candidate)

    async def switch(self, candidate: Candidate) -> None:
        """Hooks, activate (or the rollback), report, prune: a fetched release, or one kept on disk (dewy rollback)."""
        release, previous = candidate.release, self.state.current
        env = {
            "DEWY_VERSION": release.tag,
            "DEWY_PREVIOUS_VERSION": previous.tag if previous else "",
            "DEWY_COMMAND": self.settings.mode,
            **candidate.env,
        }
        try:
            await self._before_hook(env)
            await self.target.activate(candidate)
        except AppStartError as exc:  # undone by the target: what ran before keeps serving
            await self._rolled_back(candidate, exc)
            raise
        finally:
            self.target.discard(candidate)
        signed_by = candidate.deployed.get("signed_by")
        details = {"signed by": signed_by} if signed_by else {}
        if self.settings.after_deploy_hook:
            try:
                with self.liveness.step(self.settings.hook_timeout + START_SLACK):
                    output = await run_hook("after", self.settings.after_deploy_hook, cwd=self.settings.dir, env=env,
                                            timeout=self.settings.hook_timeout)
                if output.strip():
                    details["after hook output"] = output
            except HookError as exc:
                log.error("after-hook-failed", str(exc), version=release.tag)
                await self.notifications.error("error", f"{release.tag} is deployed but {exc}", version=release.tag,
                                               **({"hook output": exc.output} if exc.output else {}))
        await self._report(release)
        await self.target.prune()
        log.info("deployed", f"deployed {release.tag}", version=release.tag,
                 previous_version=previous and previous.tag, **candidate.deployed)
        await self.notifications.deployed(release.tag, previous and previous.tag, **details)

    @contextlib.contextmanager
    def _progress(self, release: Release) -> Iterator[Progress]:
        """Long work says how far it is (log, STATUS=, ``dewy status``) until it ends."""
        shown = ProgressFile(self.state.path.with_name("progress.json"))

        def tell(line: str, fields: dict) -> None:  # dewy status and STATUS= show it by the time it is logged
            self.activity = line
            shown.write(line)
            self.host.status(self.status())
            log.info("progress", line, version=release.tag, **fields)
        try:
            yield Progress(release.tag, tell, clock=self.liveness.clock)
        finally:
            if self.activity:
                self.activity = None
                shown.clear()
                self.host.status(self.status())

    async def _rolled_back(self, candidate: Candidate, exc: AppStartError) -> None:
        """The new version did not come up and was undone: quarantine it, and say so."""
        release = candidate.release
        self.state.quarantine[release.cache_key] = str(exc)
        self.state.save()
        serving = self.state.current.tag if self.state.current else None
        log.error("rollback", f"{release.tag} did not start and is quarantined; {serving or 'nothing'} keeps serving: {exc}",
                  version=release.tag, previous_version=serving, **candidate.rolled_back)
        await self._report(release, error=str(exc))
        await self.notifications.error("rollback", f"{release.tag} did not start and was rolled back", version=release.tag,
                                       reason=str(exc))

    async def _before_hook(self, env: dict[str, str]) -> None:
        if self.settings.before_deploy_hook:
            with self.liveness.step(self.settings.hook_timeout + START_SLACK):
                await run_hook("before", self.settings.before_deploy_hook, cwd=self.settings.dir, env=env,
                               timeout=self.settings.hook_timeout)

    async def _report(self, release: Release, error: str | None = None) -> None:
        """Best effort: the deploy (or its rollback) happened whether the fleet and the registry hear of it or not
        (each is told even if the other could not be)."""
        with self.liveness.step(POLL_ALLOWANCE):
            if self.fleet:
                await _best_effort("tell the fleet of the deploy", self.fleet.report(release, error), release)
            await _best_effort("record the deploy in the registry",
                               self.registry.report(release, self.settings.mode, error), release)


async def _best_effort(what: str, report: Awaitable[None], release: Release) -> None:
    """Await ``report``; its failure is one warning line (the deploy happened either way)."""
    try:
        await report
    except Exception as exc:
        log.warning("report-failed", f"could not {what}: {describe(exc)}", version=release.tag)


def run(settings: Settings) -> int:
    host = detect()
    log.setup(settings.log_level, settings.log_format, handler=host.log_handler(settings.app_name))
    if settings.dry_run:
        from dewy.dryrun import watch

        return asyncio.run(watch(settings, host))
    daemon = Daemon.from_settings(settings, host)
    loop = asyncio.new_event_loop()  # asyncio.run() without its wait for the worker threads
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(telemetry.serving(settings, daemon.serve))
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    _leave_blocked_threads(code)
    return code


def _leave_blocked_threads(code: int) -> None:
    """A blocking call that a stop cancelled (an extraction, an SDK download or pull) may still run in a worker
    thread, and Python waits for worker threads at exit: after TimeoutStopSec systemd would SIGKILL dewy. Its result
    is discarded and what it leaves is cleaned up at the next start, so the process ends now instead."""
    deadline = time.monotonic() + THREAD_GRACE
    busy = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for thread in busy:
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = [t for t in busy if t.is_alive()]
    if busy:
        log.info("stopping", f"leaving {len(busy)} blocking operation(s) unfinished", threads=[t.name for t in busy])
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
