"""The daemon: the deploy cycle of DESIGN.md section 5, run once per interval, forever.

Reads top to bottom like the contract: ask the registry, skip what runs or is
quarantined, fetch and verify, before-hook, extract, switch ``current``,
restart the app (rolling back on failure), after-hook, report, prune.

Container mode (section 9) runs the same cycle with two steps swapped: the image is
pulled instead of fetched and extracted, and the replicas are rolled out
(:mod:`dewy.rollout`) instead of restarting an app generation.
"""

from __future__ import annotations

import asyncio
import random
import signal
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dewy import log
from dewy.cache import CACHES, Cache
from dewy.cli import Settings
from dewy.config import secret_variables
from dewy.errors import AppStartError, ArtifactNotReady, DewyError, HookError, UsageError
from dewy.hooks import run_hook
from dewy.notifiers import NOTIFIERS, Notifications
from dewy.registry import REGISTRIES, Registry, Release
from dewy.releases import Releases
from dewy.service import PlainProcess, detect
from dewy.state import Deployed, State
from dewy.store import ArtifactStore, default_cache_dir
from dewy.supervisor import Supervisor
from dewy.urls import Url

MAX_BACKOFF = 300.0
STOP_GRACE = 10.0  # container mode: how long connections through the host port may take to finish when dewy stops


@dataclass
class Backoff:
    """Delay before the next cycle: the interval when healthy, growing with jitter after failures."""

    interval: float
    failures: int = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        if self.failures == 0:
            return self.interval
        grown = min(self.interval * 2 ** (self.failures - 1), max(MAX_BACKOFF, self.interval))
        return max(grown * random.uniform(0.8, 1.2), retry_after or 0.0)


class Daemon:
    def __init__(self, settings: Settings, registry: Registry, cache: Cache, store: ArtifactStore | None,
                 releases: Releases | None, state: State, notifications: Notifications, host: PlainProcess,
                 supervisor: Supervisor | None = None, replicas=None) -> None:
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
        self.backoff = Backoff(settings.interval)
        self.stopping = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Settings, host: PlainProcess) -> Daemon:
        """Build every backend now, so a bad URL or directory fails at startup (exit 2), not on the first tick."""
        registry = REGISTRIES.load(REGISTRIES.url(settings.registry), slot=settings.slot)
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
            if settings.command != "container":  # images live in the container runtime
                cache_dir = Path(cache_url.path) if cache_url.scheme == "file" else default_cache_dir()
                releases = Releases(settings.dir)
                store = ArtifactStore(cache_dir / "artifacts" if cache_url.scheme == "file" else cache_dir)
        except OSError as exc:
            raise UsageError(f"cannot use {exc.filename}: {exc.strerror}") from None
        state = State.load(settings.dir / ".dewy" / "state.json")
        if settings.command == "container":
            return cls(settings, registry, cache, store, releases, state, notifications, host,
                       replicas=container_replicas(settings, host, state))
        supervisor = None
        if settings.command == "server":
            from dewy.supervisor import Supervisor

            supervisor = Supervisor(
                settings.app_command, host.sockets(settings.ports) if settings.ports else None, workdir=settings.dir,
                settle=settings.settle_time, health_url_path=settings.health_path, health_timeout=settings.health_timeout,
                stop_timeout=settings.stop_timeout, env=settings.app.environment, placement=host.placement(settings),
                user=settings.app.user, group=settings.app.group, output=host.app_output(app_name(settings)),
                hidden=secret_variables(),
            )
        return cls(settings, registry, cache, store, releases, state, notifications, host, supervisor)

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: log.info("signal", "SIGHUP ignored"))
        loop.add_signal_handler(signal.SIGUSR1, self._restart_app)
        log.info("started", f"dewy {self.settings.command} watching {Url.parse(self.settings.registry)}",
                 dir=str(self.settings.dir))
        background = [asyncio.create_task(self._watchdog())]
        try:
            await self._adopt_or_resume()
            if self.supervisor:
                background.append(asyncio.create_task(self._track_app()))
            self.host.ready(self.status())
            while not self.stopping.is_set():
                delay = await self.cycle()
                self.host.status(self.status())
                try:
                    await asyncio.wait_for(self.stopping.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.host.stopping()
            for task in background:
                task.cancel()
            if self.replicas:
                await self._stop_replicas()
            if self.supervisor:
                if await self.host.restarting():
                    log.info("stopping", "dewy is restarting: the app keeps serving and the next dewy adopts it",
                             pid=self.supervisor.pid)
                else:
                    log.info("stopping", "stopping the app and dewy")
                    await self.supervisor.stop()
                    self.state.app = None
                    self.state.save()
            await self.registry.aclose()
            await self.cache.aclose()
            await self.notifications.aclose()
            await self.host.aclose()
        return 0

    async def _stop_replicas(self) -> None:
        """Container mode: connections through the host port finish first (bounded); then the replicas stop,
        unless dewy itself is restarting (systemd), in which case the next dewy adopts them."""
        grace = min(self.settings.drain_time, STOP_GRACE)
        try:
            if await self.host.restarting():
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
        """WATCHDOG=1 from the event loop itself: a frozen or blocked dewy stops pinging and systemd restarts it."""
        interval = self.host.watchdog_interval()
        while interval:
            self.host.ping()
            await asyncio.sleep(interval)

    async def _track_app(self) -> None:
        """Record the serving generation (for adoption by a restarted dewy, and for ``dewy status``)."""
        while True:
            await self.supervisor.changed.wait()
            app = self.supervisor.serving()
            if app != self.state.app:
                self.state.app = app
                self.state.save()
                self.host.status(self.status())

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
                await self.replicas.adopt()
            except DewyError as exc:
                log.error("adopt-failed", f"cannot take over the running replicas yet: {exc}")
                self.replicas.adopt_recorded()
            return
        app = self.state.app
        if self.supervisor and app and self.supervisor.placement:
            if await self.supervisor.adopt(app["pid"], app.get("unit"), app["generation"], app["version"],
                                           Path(app["release_dir"])):
                return
        await self._resume_current()

    def _restart_app(self) -> None:
        if self.replicas:
            log.info("signal", "SIGUSR1: replacing the replicas with fresh ones of the same image (rolling)")
            asyncio.get_running_loop().create_task(self._rolling_restart())
            return
        if self.supervisor is None:
            log.info("signal", "SIGUSR1: no app to restart in assets mode")
            return
        log.info("signal", "SIGUSR1: restarting the app gracefully")
        asyncio.get_running_loop().create_task(self._graceful_restart())

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

    async def _resume_current(self) -> None:
        """Start the app from ``current`` if it is not running: before the first poll (a host serves even
        if the registry is down), and on later ticks if that start failed."""
        if self.supervisor is None:
            return
        current = self.releases.current_dir()
        if current is None or self.supervisor.version is not None:
            return
        tag = self.state.tag_of_release(current.name) or current.name
        try:
            await self.supervisor.start(current, tag)
        except AppStartError as exc:
            log.error("start-failed", f"the deployed release does not start: {exc}", version=tag)

    async def cycle(self) -> float:
        """One deploy cycle; returns how long to wait before the next. Never raises a DewyError."""
        retry_after = None
        error = None
        try:
            await self.tick()
            self.backoff.failures = 0
            await self.notifications.cycle_succeeded()
        except ArtifactNotReady as exc:
            log.info("waiting", str(exc))
        except DewyError as exc:
            error = str(exc)
            self.backoff.failures += 1
            retry_after = getattr(exc, "retry_after", None)
            log.error("deploy-failed", str(exc), failures=self.backoff.failures)
            if not isinstance(exc, AppStartError):  # a rollback was notified as such
                output = {"hook output": exc.output} if isinstance(exc, HookError) and exc.output else {}
                await self.notifications.error("error", str(exc), **output)
        self._record_check(error)
        return self.backoff.next_delay(retry_after)

    def _record_check(self, error: str | None) -> None:
        """Keep the last check and its error in the state file for ``dewy status``: at once when the error
        changes, else at most once a minute (no disk write every poll)."""
        now = datetime.now(timezone.utc)
        previous = datetime.fromisoformat(self.state.last_check) if self.state.last_check else None
        self.state.last_check = now.isoformat()
        if error != self.state.last_error or previous is None or (now - previous).total_seconds() >= 60:
            self.state.last_error = error
            self.state.save()

    async def tick(self) -> None:
        await self._resume_current()
        if self.replicas:
            await self.replicas.heal()
        release = await self.registry.current()
        if self._is_deployed(release):
            log.debug("up-to-date", f"{release.tag} is deployed", version=release.tag)
            return
        if release.cache_key in self.state.quarantine:
            log.debug("quarantined", f"{release.tag} is quarantined: {self.state.quarantine[release.cache_key]}", version=release.tag)
            return
        await self.deploy(release)

    def _is_deployed(self, release: Release) -> bool:
        if self.replicas:
            return self.replicas.runs(release)
        deployed = self.state.current
        return bool(deployed and deployed.key == release.cache_key and self.releases.current_dir())

    async def deploy(self, release: Release) -> None:
        previous = self.state.current
        log.info("deploying", f"deploying {release.tag}", version=release.tag, previous_version=previous and previous.tag)
        env = {
            "DEWY_VERSION": release.tag,
            "DEWY_PREVIOUS_VERSION": previous.tag if previous else "",
            "DEWY_COMMAND": self.settings.command,
        }
        if self.replicas:
            await self.replicas.pull(release, *self._pull_options())
            env.update(DEWY_IMAGE=release.artifact_name, DEWY_IMAGE_DIGEST=release.id)
            await self._before_hook(env)
            await self._roll_out(release)
            name, where = release.artifact_name, {"image": release.artifact_name, "digest": release.id or None}
        else:
            artifact = await self.store.fetch(release)
            name = self.releases.new_name()
            env.update(DEWY_RELEASE_DIR=str(self.releases.directory / name), DEWY_ARTIFACT=str(artifact))
            await self._before_hook(env)
            release_dir = await asyncio.to_thread(self.releases.extract, artifact, name, self.settings.max_archive_size,
                                                  self.settings.max_archive_members)
            old_dir = self.releases.current_dir()
            self.releases.switch(release_dir)
            if self.supervisor:
                await self._start_generation(release, release_dir, old_dir)
            where = {"release_dir": str(release_dir)}
        self.state.record(Deployed(release.tag, release.cache_key, name, datetime.now(timezone.utc).isoformat()))
        self.state.save()
        details = {}
        if self.settings.after_deploy_hook:
            try:
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
            self._prune()
        log.info("deployed", f"deployed {release.tag}", version=release.tag,
                 previous_version=previous and previous.tag, **where)
        await self.notifications.deployed(release.tag, previous and previous.tag, **details)

    async def _before_hook(self, env: dict[str, str]) -> None:
        if self.settings.before_deploy_hook:
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
            await self.replicas.prune_images({d.tag for d in self.state.history})
        except DewyError as exc:
            log.warning("image-prune-failed", f"could not prune images: {exc}")

    async def _start_generation(self, release: Release, release_dir: Path, old_dir: Path | None) -> None:
        """Restart onto the new release; if it does not come up, roll back and quarantine the version."""
        try:
            if self.supervisor.version is not None:
                await self.supervisor.restart(release_dir, release.tag)
            else:
                await self.supervisor.start(release_dir, release.tag)
        except AppStartError as exc:
            if old_dir:
                self.releases.switch(old_dir)
            else:
                self.releases.current.unlink(missing_ok=True)
            self.releases.remove(release_dir)
            self.state.quarantine[release.cache_key] = str(exc)
            self.state.save()
            log.error("rollback", f"{release.tag} did not start and is quarantined; the previous version keeps serving: {exc}",
                      version=release.tag, release_dir=str(old_dir) if old_dir else None)
            await self._report(release, error=str(exc))
            await self.notifications.error("rollback", f"{release.tag} did not start and was rolled back", version=release.tag,
                                           reason=str(exc))
            raise

    async def _report(self, release: Release, error: str | None = None) -> None:
        try:
            await self.registry.report(release, self.settings.command, error)
        except DewyError as exc:
            log.warning("report-failed", f"could not record the deploy in the registry: {exc}", version=release.tag)

    def _prune(self) -> None:
        """Keep the newest releases on disk and only their artifacts in the store."""
        current = self.releases.current_dir()
        self.releases.prune(self.settings.keep_releases, {current} if current else set())
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
    return asyncio.run(daemon.serve())
