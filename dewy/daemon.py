"""The daemon: the deploy cycle (docs/architecture.md), run once per interval, forever.

Reads top to bottom like the contract: ask the registry, skip what runs or is
quarantined, fetch and verify, before-hook, extract, switch ``current``,
restart the app (rolling back on failure), after-hook, report, prune.

Container mode (section 9) runs the same cycle with two steps swapped: the image is
pulled instead of fetched and extracted, and the replicas are rolled out
(:mod:`dewy.rollout`) instead of restarting an app generation.
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
from pathlib import Path
from typing import TypeVar

from dewy import log
from dewy.cache import CACHES, Cache
from dewy.cli import Settings
from dewy.config import secret_variables
from dewy.cosign import ImageVerifier, VerifiedImage
from dewy.errors import AppStartError, ArtifactNotReady, DewyError, HookError, UsageError
from dewy.faults import describe, on_disk
from dewy.hooks import run_hook
from dewy.notifiers import NOTIFIERS, Notifications
from dewy.registry import REGISTRIES, Registry, Release
from dewy.releases import PARTIAL_PREFIX, Releases
from dewy.service import PlainProcess, detect
from dewy.signing import SignatureRefused, Verification
from dewy.state import Deployed, State
from dewy.store import ArtifactStore, default_cache_dir
from dewy.supervisor import Supervisor
from dewy.tasks import Background
from dewy.urls import Url

T = TypeVar("T")

MAX_BACKOFF = 300.0
IDLE_BEAT = 1.0  # between cycles, how often the loop tells the watchdog it is fine
START_SLACK = 30.0  # a step's allowance beyond its configured timeouts (systemd jobs, process spawns)
POLL_ALLOWANCE = 300.0  # a registry poll (its reads have their own deadlines): beyond this it is wedged
THREAD_GRACE = 1.0  # at exit, how long a worker thread may take to finish
STOP_GRACE = 10.0  # container mode: how long connections through the host port may take to finish when dewy stops


@dataclass
class Backoff:
    """Delay before the next cycle: the interval when healthy, growing with jitter after failures."""

    interval: float
    failures: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        if self.failures == 0:
            return self.interval
        doublings = min(self.failures - 1, 64)  # past the cap anyway; 2 ** 1024 would not fit a float
        grown = min(self.interval * 2.0 ** doublings, max(MAX_BACKOFF, self.interval))
        return max(grown * random.uniform(0.8, 1.2), retry_after or 0.0)


class Liveness:
    """Is the main loop getting on? For systemd's watchdog, so that a wedged dewy is restarted (and adopts the app).

    The loop is a sequence of steps (a cycle's phases, the wait between cycles). A step must end
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


class Daemon:
    def __init__(self, settings: Settings, registry: Registry, cache: Cache, store: ArtifactStore | None,
                 releases: Releases | None, state: State, notifications: Notifications, host: PlainProcess,
                 supervisor: Supervisor | None = None, replicas=None, images: ImageVerifier | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.store = store
        self.releases = releases
        self.state = state
        self.notifications = notifications
        self.host = host
        self.supervisor = supervisor
        self.replicas = replicas  # container mode: dewy.rollout.Replicas
        self.images = images  # container mode with verify=cosign
        self.backoff = Backoff(settings.interval)
        self.stopping = asyncio.Event()
        self.liveness = Liveness()
        self.background = Background()

    @classmethod
    def from_settings(cls, settings: Settings, host: PlainProcess) -> Daemon:
        """Build every backend now, so a bad URL or directory fails at startup (exit 2), not on the first tick."""
        registry_url, verification = Verification.of(settings.registry, settings.trusted_keys)
        registry = REGISTRIES.load(REGISTRIES.url(registry_url), slot=settings.slot)
        cache_url = CACHES.url(settings.cache) if settings.cache else Url.parse("memory://")
        cache = CACHES.load(cache_url)
        ttl = getattr(cache, "ttl", None)
        if ttl:  # a shared cache with ttl=: one host of the fleet asks the registry per ttl, the rest read it
            from dewy.registry.shared import SharedRegistry

            registry = SharedRegistry(registry, cache, ttl, key=f"registry:{settings.registry}:{settings.slot or ''}")
        notifications = Notifications([NOTIFIERS.load(NOTIFIERS.url(n)) for n in settings.notifiers], app_name(settings))
        releases = store = None
        try:
            settings.dir.mkdir(parents=True, exist_ok=True)
            if settings.mode != "container":  # images live in the container runtime
                cache_dir = Path(cache_url.path) if cache_url.scheme == "file" else default_cache_dir()
                releases = Releases(settings.dir)
                store = ArtifactStore(cache_dir / "artifacts" if cache_url.scheme == "file" else cache_dir,
                                      verification.keys if verification else ())
        except OSError as exc:
            raise UsageError(f"cannot use {exc.filename}: {exc.strerror}") from None
        state = State.load(settings.dir / ".dewy" / "state.json")
        if settings.mode == "container":
            return cls(settings, registry, cache, store, releases, state, notifications, host,
                       replicas=container_replicas(settings, host, state),
                       images=ImageVerifier(verification.keys) if verification else None)
        supervisor = None
        if settings.mode == "server":
            from dewy.supervisor import Supervisor, recorded_holders

            sockets = host.sockets(settings.ports, recorded_holders(state.app)) if settings.ports else None
            supervisor = Supervisor(
                settings.app_command, sockets, workdir=settings.dir,
                settle=settings.settle_time, health_url_path=settings.health_path, health_timeout=settings.health_timeout,
                stop_timeout=settings.stop_timeout, env=settings.app.environment, placement=host.placement(settings),
                user=settings.app.user, group=settings.app.group, output=host.app_output(app_name(settings)),
                hidden=secret_variables(),
            )
        return cls(settings, registry, cache, store, releases, state, notifications, host, supervisor)

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
        if self.supervisor:
            self.background.start(self._track_app(), "recording the running app")
        code = 0
        try:
            await self._until_stopped(self._guarded(self._adopt_or_resume))
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
        """Wait ``delay`` for the next cycle (or a stop), telling the watchdog the loop is fine meanwhile."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        while not self.stopping.is_set() and (left := until - loop.time()) > 0:
            self.liveness.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), min(left, IDLE_BEAT))

    async def _shut_down(self, stop_app: bool) -> None:
        """Stop the app only when a stop was asked for and dewy is not being restarted; release everything."""
        try:
            if self.replicas:
                await self._stop_replicas(stop_app)
            if self.supervisor:
                if not stop_app or await self.host.restarting():
                    log.info("stopping", "dewy is restarting: the app keeps serving and the next dewy adopts it",
                             pid=self.supervisor.pid)
                else:
                    log.info("stopping", "stopping the app and dewy")
                    await self.supervisor.stop()
                    self.state.app = None
                    self.state.save()
        except DewyError as exc:
            log.error("stop-failed", str(exc))
        finally:
            await self.registry.aclose()
            await self.cache.aclose()
            await self.notifications.aclose()
            await self.host.aclose()

    async def _stop_replicas(self, stop_app: bool) -> None:
        """Container mode: connections through the host port finish first (bounded); then the replicas stop,
        unless dewy itself is restarting (systemd), in which case the next dewy adopts them."""
        grace = min(self.settings.drain_time, STOP_GRACE)
        try:
            if not stop_app or await self.host.restarting():
                log.info("stopping", "dewy is restarting: the replicas keep serving and the next dewy adopts them")
                await self.replicas.release(grace)
            else:
                log.info("stopping", "stopping the replicas and dewy")
                await self.replicas.stop(grace)
        except DewyError as exc:
            log.error("stop-failed", f"could not stop every replica: {exc}")
        finally:
            await self.replicas.runtime.aclose()

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

    def _record_app(self) -> None:
        """Record the serving generation (for adoption by a restarted dewy, and for ``dewy status``); a failed
        write is retried on the next change or tick."""
        app = self.supervisor.serving()
        if app != self.state.app:
            previous, self.state.app = self.state.app, app
            try:
                self.state.save()
            except DewyError:
                self.state.app = previous
                raise
            self.host.status(self.status())

    async def _track_app(self) -> None:
        while True:
            await self.supervisor.changed.wait()
            try:
                self._record_app()
            except DewyError as exc:
                log.error("state-save-failed", f"cannot record the running app: {exc}")

    def status(self) -> str:
        """systemd's STATUS= line: what is deployed, the app, the last check and its error."""
        deployed = self.state.current.tag if self.state.current else "nothing deployed yet"
        parts = [deployed]
        if self.supervisor and self.supervisor.pid:
            parts.append(f"app pid {self.supervisor.pid}, generation {self.supervisor.generation}")
        if self.replicas:
            parts.append(self.replicas.summary())
        if self.state.last_check:
            parts.append(f"last check {self.state.last_check[11:19]} UTC")
        if self.state.last_error:
            parts.append(f"last error: {self.state.last_error}")
        return "; ".join(parts)[:400]

    async def _adopt_or_resume(self) -> None:
        """Take over the generation a previous dewy left running (systemd restart), else start from ``current``.
        Container mode: take over the running replicas (found by label) and converge what a killed dewy left."""
        if self.replicas:
            try:
                with self.liveness.step(None):  # runtime calls, bounded by the SDK's timeouts
                    await self.replicas.adopt()
            except DewyError as exc:
                log.error("adopt-failed", f"cannot take over the running replicas yet: {exc}")
                self.replicas.adopt_recorded()
            return
        app = self.state.app
        if self.supervisor and app and self.supervisor.placement:
            if await self.supervisor.adopt(app):
                return
        await self._converge_app()

    def _restart_app(self) -> None:
        if self.replicas:
            log.info("signal", "SIGUSR1: replacing the replicas with fresh ones of the same image (rolling)")
            self.background.start(self._rolling_restart(), "the rolling restart")
            return
        if self.supervisor is None:
            log.info("signal", "SIGUSR1: no app to restart in assets mode")
            return
        log.info("signal", "SIGUSR1: restarting the app gracefully")
        self.background.start(self._graceful_restart(), "the graceful restart")

    async def _rolling_restart(self) -> None:
        try:
            await self.replicas.restart()
        except DewyError as exc:
            log.error("restart-failed", f"rolling restart failed, the running replicas keep serving: {exc}")

    async def _graceful_restart(self) -> None:
        try:
            await self.supervisor.restart()
            log.info("restarted", f"app restarted gracefully, generation {self.supervisor.generation}",
                     version=self.supervisor.version, pid=self.supervisor.pid)
        except DewyError as exc:
            log.error("restart-failed", f"restart failed, the running generation keeps serving: {exc}")

    async def _converge_app(self) -> None:
        """Server mode, before the first poll and on every tick: the app of ``current`` runs. Started if nothing
        runs (a host serves even if the registry is down), restarted onto ``current`` if it runs another release
        (dewy was killed between the switch and the restart), crash recovery resumed if it was lost."""
        if self.supervisor is None:
            return
        current = self.releases.current_dir()
        if current is None:
            return
        tag = self.state.tag_of_release(current.name) or current.name
        with self.liveness.step(self._start_allowance()):
            try:
                if self.supervisor.version is None:
                    await self.supervisor.start(current, tag)
                elif self.supervisor.release_dir and self.supervisor.release_dir.resolve() != current:
                    log.warning("app-behind", f"the app runs {self.supervisor.version} but current is {tag}: restarting it",
                                version=tag, previous_version=self.supervisor.version)
                    await self.supervisor.restart(current, tag)
                else:
                    self.supervisor.ensure_recovering()
            except AppStartError as exc:
                log.error("start-failed", f"the deployed release does not start: {exc}", version=tag)
        self._record_app()

    def _start_allowance(self) -> float:
        """How long starting a generation may take: settle and health check, plus stopping a failed one."""
        return self.settings.settle_time + self.settings.health_timeout + self.settings.stop_timeout + START_SLACK

    async def cycle(self) -> float:
        """One deploy cycle; returns how long to wait before the next."""
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
        await self._converge_app()
        if self.replicas:
            with self.liveness.step(None):
                await self.replicas.heal()
        with self.liveness.step(POLL_ALLOWANCE):
            release = await self.registry.current()
        if self._is_deployed(release):
            log.debug("up-to-date", f"{release.tag} is deployed", version=release.tag)
            return
        if release.cache_key in self.state.quarantine:
            log.debug("quarantined", f"{release.tag} is quarantined: {self.state.quarantine[release.cache_key]}", version=release.tag)
            return
        if self.store:
            self.store.check_ready(release)
        await self.deploy(release, await self._verify_image(release) if self.replicas else None)

    def _is_deployed(self, release: Release) -> bool:
        if self.replicas:
            return self.replicas.runs(release)
        deployed = self.state.current
        current = self.releases.current_dir()
        return bool(deployed and deployed.key == release.cache_key and current and current.name == deployed.release)

    async def deploy(self, release: Release, image: VerifiedImage | None = None) -> None:
        """Deploy ``release``; an image arrives verified (verify=cosign), an archive is verified here."""
        previous = self.state.current
        log.info("deploying", f"deploying {release.tag}", version=release.tag, previous_version=previous and previous.tag)
        env = {
            "DEWY_VERSION": release.tag,
            "DEWY_PREVIOUS_VERSION": previous.tag if previous else "",
            "DEWY_COMMAND": self.settings.mode,
        }
        if self.replicas:
            with self.liveness.step(None):
                await self.replicas.pull(release, *self._pull_options(), verified_id=image and image.image_id)
            env.update(DEWY_IMAGE=release.artifact_name, DEWY_IMAGE_DIGEST=release.id)
            await self._before_hook(env)
            with self.liveness.step(None):
                await self._roll_out(release)
            signed_by = str(image.signed) if image else None
            name, where = release.artifact_name, {"image": release.artifact_name, "digest": release.id or None,
                                                  "signed_by": signed_by}
            self.state.record(Deployed(release.tag, release.cache_key, name, datetime.now(timezone.utc).isoformat(),
                                       signed_by=signed_by))
            self.state.save()
        else:
            with self.liveness.step(None), on_disk(self.store.directory, f"the download of {release.artifact_name}"):
                artifact = await self._refusing(release, self.store.fetch(release))
            signed = self.store.signed.get(release.cache_key)
            name = self.releases.new_name()
            env.update(DEWY_RELEASE_DIR=str(self.releases.directory / name), DEWY_ARTIFACT=str(artifact))
            await self._before_hook(env)
            with self.liveness.step(None), on_disk(self.releases.directory, f"release {name}"):
                release_dir = await self._extract(artifact, name)
            deployed = Deployed(release.tag, release.cache_key, name, datetime.now(timezone.utc).isoformat(),
                                signed_by=str(signed) if signed else None)
            old_dir = self.releases.current_dir()
            self._switch(deployed, previous, release_dir)
            if self.supervisor:
                await self._start_generation(release, release_dir, old_dir, deployed, previous)
            where = {"release_dir": str(release_dir), "signed_by": deployed.signed_by}
        details = {"signed by": where["signed_by"]} if where["signed_by"] else {}
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
        if self.replicas:
            await self._prune_images()
        else:
            try:
                self._prune()
            except (OSError, DewyError) as exc:  # the deploy happened; pruning is tried again after the next one
                log.warning("prune-failed", f"could not prune old releases: {describe(exc)}")
        log.info("deployed", f"deployed {release.tag}", version=release.tag,
                 previous_version=previous and previous.tag, **where)
        await self.notifications.deployed(release.tag, previous and previous.tag, **details)

    async def _verify_image(self, release: Release) -> VerifiedImage | None:
        """verify=cosign: who signed the image's digest (before anything is pulled); None without verify=."""
        if self.images is None:
            return None
        registry = getattr(self.registry, "registry", self.registry)  # SharedRegistry wraps the real one
        with self.liveness.step(POLL_ALLOWANCE):
            return await self._refusing(release, self.images.verify(registry, release))

    async def _refusing(self, release: Release, verification: Awaitable[T]) -> T:
        """``verification``'s result; a release whose signature it refuses is quarantined: never fetched again."""
        try:
            return await verification
        except SignatureRefused as exc:
            self.state.quarantine[release.cache_key] = str(exc)
            self.state.save()
            await self._report(release, error=str(exc))
            raise

    def _switch(self, deployed: Deployed, previous: Deployed | None, release_dir: Path) -> None:
        """Record the new release, then point ``current`` at it. The state file names it first: wherever dewy is
        killed, the release ``current`` names has its version on record (DEWY_VERSION, no second extraction).
        If either step fails (a full disk), neither took effect."""
        self.state.record(deployed)
        try:
            self.state.save()
            with on_disk(self.releases.root, "the current link"):
                self.releases.switch(release_dir)
        except BaseException:
            self.state.forget(deployed, previous)
            self.releases.remove(release_dir)
            with contextlib.suppress(DewyError):
                self.state.save()
            raise

    async def _extract(self, artifact: Path, name: str) -> Path:
        """Unpack in a thread. A stop cannot interrupt a thread, so the directory it writes to is taken away
        (its next write fails, it ends) and whatever it left is removed: a stop leaves no partial release."""
        work = asyncio.ensure_future(asyncio.to_thread(self.releases.extract, artifact, name, self.settings.max_archive_size,
                                                       self.settings.max_archive_members))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            self.releases.remove(self.releases.directory / (PARTIAL_PREFIX + name))
            with contextlib.suppress(Exception):
                await work
            self.releases.remove(self.releases.directory / name)
            raise

    async def _before_hook(self, env: dict[str, str]) -> None:
        if self.settings.before_deploy_hook:
            with self.liveness.step(self.settings.hook_timeout + START_SLACK):
                await run_hook("before", self.settings.before_deploy_hook, cwd=self.settings.dir, env=env,
                               timeout=self.settings.hook_timeout)

    def _pull_options(self) -> tuple[tuple[str, str] | None, bool]:
        """Credentials (looked up now: a ``podman login`` needs no dewy restart) and TLS for the image pull,
        as the img:// registry uses them."""
        registry = getattr(self.registry, "registry", self.registry)  # SharedRegistry wraps the real one
        found = registry.credentials() if hasattr(registry, "credentials") else None
        credentials = (found.username, found.password) if found else None
        return credentials, not getattr(registry, "plain_http", False)

    async def _roll_out(self, release: Release) -> None:
        """Roll the replicas over to the new image; if a replica does not become healthy, the update was
        rolled back (the old replicas kept serving): quarantine the version."""
        try:
            await self.replicas.roll_out(release)
        except AppStartError as exc:
            self.state.quarantine[release.cache_key] = str(exc)
            self.state.save()
            log.error("rollback", f"{release.tag} did not become healthy and is quarantined; "
                      f"{self.replicas.version or 'nothing'} keeps serving: {exc}", version=release.tag,
                      previous_version=self.replicas.version, image=release.artifact_name)
            await self._report(release, error=str(exc))
            await self.notifications.error("rollback", f"{release.tag} did not start and was rolled back",
                                           version=release.tag, reason=str(exc))
            raise

    async def _prune_images(self) -> None:
        """Keep the images of the newest deploys (--keep-releases, 7) and what any replica runs."""
        keep = self.settings.keep_releases
        if len(self.state.history) > keep:
            self.state.history = self.state.history[-keep:]
            self.state.save()
        try:
            with self.liveness.step(None):
                await self.replicas.prune_images({d.tag for d in self.state.history})
        except Exception as exc:  # the deploy happened; pruning is tried again after the next one
            log.warning("image-prune-failed", f"could not prune images: {describe(exc)}")

    async def _start_generation(self, release: Release, release_dir: Path, old_dir: Path | None, deployed: Deployed,
                                previous: Deployed | None) -> None:
        """Restart onto the new release; if it does not come up, roll back and quarantine the version."""
        try:
            with self.liveness.step(self._start_allowance()):
                if self.supervisor.version is not None:
                    await self.supervisor.restart(release_dir, release.tag)
                else:
                    await self.supervisor.start(release_dir, release.tag)
        except AppStartError as exc:
            self._switch_back(release_dir, old_dir, deployed, previous)
            self.state.quarantine[release.cache_key] = str(exc)
            self.state.save()
            log.error("rollback", f"{release.tag} did not start and is quarantined; the previous version keeps serving: {exc}",
                      version=release.tag, release_dir=str(old_dir) if old_dir else None)
            await self._report(release, error=str(exc))
            await self.notifications.error("rollback", f"{release.tag} did not start and was rolled back", version=release.tag,
                                           reason=str(exc))
            raise
        except Exception:
            # Not the release's fault (the bus or a disk failed under the start): unless the new generation
            # serves already, undo the switch without quarantine, so the next cycle deploys it again, whole
            # (the deployed event, report, hooks and pruning included), once the fault is gone.
            if self.supervisor.version != release.tag:
                self._switch_back(release_dir, old_dir, deployed, previous)
                with contextlib.suppress(DewyError, OSError):
                    self.state.save()
            raise

    def _switch_back(self, release_dir: Path, old_dir: Path | None, deployed: Deployed, previous: Deployed | None) -> None:
        """``current`` back at the release that ran before, the new one removed and forgotten."""
        if old_dir:
            self.releases.switch(old_dir)
        else:
            self.releases.current.unlink(missing_ok=True)
        self.releases.remove(release_dir)
        self.state.forget(deployed, previous)

    async def _report(self, release: Release, error: str | None = None) -> None:
        """Best effort: the deploy (or its rollback) happened whether the registry hears of it or not."""
        try:
            with self.liveness.step(POLL_ALLOWANCE):
                await self.registry.report(release, self.settings.mode, error)
        except Exception as exc:
            log.warning("report-failed", f"could not record the deploy in the registry: {describe(exc)}",
                        version=release.tag)

    def _prune(self) -> None:
        """Keep the newest releases on disk and only their artifacts in the store; never remove a release that
        a living generation runs from (the old one drains after a restart)."""
        current = self.releases.current_dir()
        running = set(self.supervisor.release_dirs) if self.supervisor else set()
        self.releases.prune(self.settings.keep_releases, protect=running | ({current} if current else set()))
        on_disk = {p.name for p in self.releases.directory.iterdir()}
        kept = [d for d in self.state.history if d.release in on_disk]
        if kept != self.state.history:
            self.state.history = kept
            self.state.save()
        self.store.prune({d.key for d in self.state.history})


def app_name(settings: Settings) -> str:
    """The app's name in logs, journal fields, unit names and notifications: NAME of dewy@NAME, else the dir's name."""
    return settings.name or settings.dir.name


def container_replicas(settings: Settings, host: PlainProcess, state: State):
    """Container mode's runtime, proxy and replica set; the SDKs are imported here, only for dewy container."""
    from dewy.proxy import TcpProxy
    from dewy.rollout import ReplicaConfig, Replicas
    from dewy.runargs import parse_run_args
    from dewy.runtimes import load

    runtime = load(settings.runtime)
    config = ReplicaConfig(app=app_name(settings), replicas=settings.replicas, container_port=settings.container_port,
                           health_path=settings.health_path, health_timeout=settings.health_timeout,
                           drain_time=settings.drain_time, stop_timeout=settings.stop_timeout,
                           options=parse_run_args(settings.run_args))
    proxy = TcpProxy(host.sockets(settings.ports)) if settings.ports else None
    return Replicas(runtime, config, state, proxy)


def run(settings: Settings) -> int:
    host = detect()
    log.setup(settings.log_level, settings.log_format, handler=host.log_handler(app_name(settings)))
    daemon = Daemon.from_settings(settings, host)
    loop = asyncio.new_event_loop()  # asyncio.run() without its wait for the worker threads
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(daemon.serve())
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
