"""``dewy server``: assets mode (:mod:`dewy.targets.assets`) and the app, run from ``current``.

The app runs as numbered generations on the listening sockets dewy holds
(:mod:`dewy.server.supervisor`). A deploy switches ``current`` and starts a new generation
next to the serving one; the old one is stopped only once the new one is ready. If the
new one does not come up, ``current`` is switched back and the old generation never
stopped serving. A restarted dewy adopts the generation its predecessor recorded in the
state file, once it has proven that the pid is still that process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from dewy import log
from dewy.config import secret_variables
from dewy.errors import AppStartError, DewyError
from dewy.host import Host
from dewy.liveness import START_SLACK, Liveness
from dewy.registry import Registry
from dewy.server.supervisor import Supervisor, recorded_holders
from dewy.settings import Settings
from dewy.signing import Verification
from dewy.state import AppGeneration, State
from dewy.targets.assets import AssetsTarget, Unpackable, release_storage
from dewy.urls import Url


@dataclass
class ServerTarget(AssetsTarget):
    """Releases on disk, ``current``, and the app's generations running from it."""

    restart_kind: ClassVar[str] = "the graceful restart"

    host: Host
    supervisor: Supervisor

    async def adopt(self) -> None:
        """Take over the generation a previous dewy left running (a systemd restart), else start from ``current``."""
        app = self.state.app
        if isinstance(app, AppGeneration) and self.supervisor.placement and await self.supervisor.adopt(app):
            return
        await self.converge()

    async def converge(self) -> None:
        """Before the first poll and on every tick: the app of ``current`` runs. Started if nothing runs (a host
        serves even if the registry is down), restarted onto ``current`` if it runs another release (dewy was
        killed between the switch and the restart), crash recovery resumed if it was lost."""
        current = self.releases.current_dir()
        if current is None:
            return
        tag = self.state.tag_of_release(current.name) or current.name
        supervisor = self.supervisor
        with self.liveness.step(self.start_allowance()):
            try:
                if supervisor.version is None:
                    await supervisor.start(current, tag)
                elif supervisor.release_dir and supervisor.release_dir.resolve() != current:
                    log.warning("app-behind", f"the app runs {supervisor.version} but current is {tag}: restarting it",
                                version=tag, previous_version=supervisor.version)
                    await supervisor.restart(current, tag)
                else:
                    supervisor.ensure_recovering()
            except AppStartError as exc:
                log.error("start-failed", f"the deployed release does not start: {exc}", version=tag)
        self._record_app()

    def start_allowance(self) -> float:
        """How long starting a generation may take: settle and health check, plus stopping a failed one."""
        return self.settings.settle_time + self.settings.health_timeout + self.settings.stop_timeout + START_SLACK

    async def activate(self, candidate: Unpackable) -> None:
        """Switch ``current``, then restart onto it; if the new generation does not come up, switch back."""
        switched = await self._complete_and_switch(candidate)
        tag = candidate.release.tag
        try:
            await self._start_generation(switched.release_dir, tag)
        except AppStartError:
            self._switch_back(switched)
            raise
        except Exception:
            # Not the release's fault (the bus or a disk failed under the start): unless the new generation
            # serves already, undo the switch without quarantine, so the next cycle deploys it again, whole
            # (the deployed event, report, hooks and pruning included), once the fault is gone.
            if self.supervisor.version != tag:
                self._switch_back(switched)
                with contextlib.suppress(DewyError, OSError):
                    self.state.save()
            raise

    async def _start_generation(self, release_dir: Path, tag: str) -> None:
        with self.liveness.step(self.start_allowance()):
            if self.supervisor.version is not None:
                await self.supervisor.restart(release_dir, tag)
            else:
                await self.supervisor.start(release_dir, tag)

    def _in_use(self) -> set[Path]:
        """Every living generation's release (the old one drains after a restart)."""
        return set(self.supervisor.release_dirs)

    async def restart(self) -> None:
        log.info("signal", "SIGUSR1: restarting the app gracefully")
        try:
            await self.supervisor.restart()
            log.info("restarted", f"app restarted gracefully, generation {self.supervisor.generation}",
                     version=self.supervisor.version, pid=self.supervisor.pid)
        except DewyError as exc:
            log.error("restart-failed", f"restart failed, the running generation keeps serving: {exc}")

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

    async def watch(self, changed: Callable[[], None]) -> None:
        while True:
            await self.supervisor.changed.wait()
            try:
                self._record_app()
            except DewyError as exc:
                log.error("state-save-failed", f"cannot record the running app: {exc}")
            changed()

    def status(self) -> str | None:
        if not self.supervisor.pid:
            return None
        return f"app pid {self.supervisor.pid}, generation {self.supervisor.generation}"

    async def stop(self, stop_app: bool) -> None:
        """Stop the app only when a stop was asked for and dewy is not being restarted (systemd)."""
        if not stop_app or await self.host.restarting():
            log.info("stopping", "dewy is restarting: the app keeps serving and the next dewy adopts it",
                     pid=self.supervisor.pid)
            return
        log.info("stopping", "stopping the app and dewy")
        await self.supervisor.stop()
        self.state.app = None
        self.state.save()


def build(settings: Settings, *, host: Host, state: State, liveness: Liveness, registry: Registry,
          cache_url: Url, verification: Verification | None) -> ServerTarget:
    releases, store = release_storage(settings, cache_url, verification)
    with settings.given("ports"):
        sockets = host.sockets(settings.ports, recorded_holders(state.app)) if settings.ports else None
    supervisor = Supervisor(
        settings.app_command, sockets, workdir=settings.dir,
        settle=settings.settle_time, health_url_path=settings.health_path, health_timeout=settings.health_timeout,
        stop_timeout=settings.stop_timeout, env=settings.app.environment, placement=host.placement(settings),
        user=settings.app.user, group=settings.app.group, output=host.app_output(settings.app_name), hidden=secret_variables(),
    )
    return ServerTarget(settings, state, liveness, releases, store, host, supervisor)
