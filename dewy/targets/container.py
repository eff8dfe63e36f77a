"""``dewy container``: the app as replicas of an image, behind the host port's proxy.

A deploy pulls the image the registry names (before the before-deploy hook), then
rolls the replicas over to it (:mod:`dewy.container.replicas`): new replicas next to the old ones,
health-checked, the proxy and the network alias switched at once, the old ones drained.
A replica that does not become healthy rolls the update back: the old replicas never
stopped serving. A restarted dewy adopts the replicas by their labels. The runtime's
SDK is imported here, only for this mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import ClassVar

from dewy import log
from dewy.container.proxy import TcpProxy
from dewy.container.replicas import ImageVersion, ReplicaConfig, Replicas
from dewy.container.runtimes.connect import load as load_runtime
from dewy.cosign import ImageVerifier
from dewy.errors import DewyError
from dewy.faults import describe
from dewy.host import Host
from dewy.liveness import Liveness
from dewy.progress import Progress
from dewy.registry import Registry, Release
from dewy.registry.img import ImageRegistry
from dewy.registry.shared import SharedRegistry
from dewy.settings import Settings
from dewy.signing import Verification
from dewy.state import Deployed, State
from dewy.targets import BaseTarget, Candidate, recalled
from dewy.urls import Url

STOP_GRACE = 10.0  # how long connections through the host port may take to finish when dewy stops


def image_of(release: Release) -> ImageVersion:
    """The image an img:// registry's release names: its artifact is the image reference, its id the digest."""
    return ImageVersion(release.tag, release.artifact_name, release.id)


@dataclass
class ContainerTarget(BaseTarget):
    """The app's replicas, the host port's proxy in front of them, and the images they run."""

    host: Host
    registry: Registry
    replicas: Replicas
    images: ImageVerifier | None = None  # verify=cosign: only images the trusted keys signed run

    restart_kind: ClassVar[str] = "the rolling restart"

    async def adopt(self) -> None:
        """Take over the running replicas (found by label) and converge what a killed dewy left; while the
        runtime cannot be asked, forward to the replicas the state file recorded."""
        try:
            with self.liveness.step(None):  # runtime calls, bounded by the SDK's timeouts
                await self.replicas.adopt()
        except DewyError as exc:
            log.error("adopt-failed", f"cannot take over the running replicas yet: {exc}")
            self.replicas.adopt_recorded()

    async def converge(self) -> None:
        with self.liveness.step(None):
            await self.replicas.heal()

    def is_current(self, release: Release) -> bool:
        return self.replicas.runs(image_of(release))

    async def ready(self, release: Release) -> None:
        """With verify=cosign, a digest not signed yet is waited for (cosign signs after the push)."""
        if self.images:
            with self.liveness.step(None):  # a registry read, bounded by its deadline
                await self.images.ready(self._images(), release)

    async def recall(self, deployed: Deployed) -> Candidate | None:
        """The image of an earlier deploy, if it is still present (by its reference: its digest is not recorded)."""
        release = recalled(deployed)
        reference = release.artifact_name
        with self.liveness.step(None):
            present = await self.replicas.runtime.images(reference.rpartition(":")[0])
        if not any(reference in image.tags for image in present):
            return None
        return Candidate(release, env={"DEWY_IMAGE": reference, "DEWY_IMAGE_DIGEST": ""},
                         deployed={"image": reference, "signed_by": deployed.signed_by}, rolled_back={"image": reference})

    async def prepare(self, release: Release, progress: Progress) -> Candidate:
        """With verify=cosign the digest's signature is checked before anything is pulled, and the pull must
        bring the verified image id (replicas start from it, not from a tag that may have moved since)."""
        image = image_of(release)
        verified = None
        if self.images:
            with self.liveness.step(None):  # registry reads, bounded by their deadlines
                verified = await self.images.verify(self._images(), release)
        with self.liveness.step(None):
            await self.replicas.pull(image, *self._pull_options(), progress, verified_id=verified and verified.image_id)
        return Candidate(release, env={"DEWY_IMAGE": image.reference, "DEWY_IMAGE_DIGEST": image.digest},
                         deployed={"image": image.reference, "digest": image.digest or None,
                                   "signed_by": str(verified.signed) if verified else None},
                         rolled_back={"image": image.reference})

    def _images(self) -> ImageRegistry:
        """The img:// registry (container mode deploys from img://: settings.check), unwrapped from a shared one."""
        return self.registry.origin if isinstance(self.registry, SharedRegistry) else self.registry

    def _pull_options(self) -> tuple[tuple[str, str] | None, bool]:
        """Credentials (looked up now: a ``podman login`` needs no dewy restart) and TLS for the image pull,
        as the img:// registry uses them."""
        images = self._images()
        found = images.credentials()
        credentials = (found.username, found.password) if found else None
        return credentials, not images.plain_http

    def discard(self, candidate: Candidate) -> None:
        """A pulled image that was not rolled out goes with the next image pruning."""

    async def activate(self, candidate: Candidate) -> None:
        release = candidate.release
        with self.liveness.step(None):
            await self.replicas.roll_out(image_of(release))
        self.state.record(Deployed(release.tag, release.cache_key, release.artifact_name,
                                   datetime.now(timezone.utc).isoformat(), signed_by=candidate.deployed.get("signed_by")))
        self.state.save()

    async def prune(self) -> None:
        """Keep the images of the newest deploys (--keep-releases) and what any replica runs."""
        keep = self.settings.keep_releases
        try:
            if len(self.state.history) > keep:
                self.state.history = self.state.history[-keep:]
                self.state.save()
            with self.liveness.step(None):
                await self.replicas.prune_images({d.tag for d in self.state.history})
        except Exception as exc:  # the deploy happened; pruning is tried again after the next one
            log.warning("image-prune-failed", f"could not prune images: {describe(exc)}")

    async def restart(self) -> None:
        log.info("signal", "SIGUSR1: replacing the replicas with fresh ones of the same image (rolling)")
        try:
            await self.replicas.restart()
        except DewyError as exc:
            log.error("restart-failed", f"rolling restart failed, the running replicas keep serving: {exc}")

    async def watch(self, changed: Callable[[], None]) -> None:
        """The replicas are recorded as they change (:class:`dewy.container.replicas.Replicas`)."""

    def status(self) -> str | None:
        return self.replicas.summary()

    async def stop(self, stop_app: bool) -> None:
        """Connections through the host port finish first (bounded); then the replicas stop, unless dewy itself
        is restarting (systemd), in which case the next dewy adopts them."""
        grace = min(self.settings.drain_time, STOP_GRACE)
        try:
            if not stop_app or await self.host.restarting():
                log.info("stopping", "dewy is restarting: the replicas keep serving and the next dewy adopts them")
                await self.replicas.hand_over(grace)
            else:
                log.info("stopping", "stopping the replicas and dewy")
                await self.replicas.stop(grace)
        except DewyError as exc:
            log.error("stop-failed", f"could not stop every replica: {exc}")
        finally:
            await self.replicas.runtime.aclose()


def build(settings: Settings, *, host: Host, state: State, liveness: Liveness, registry: Registry,
          cache_url: Url, verification: Verification | None) -> ContainerTarget:
    """The runtime (its SDK imported now: a missing one is a startup error), the proxy and the replica set."""
    runtime = load_runtime(settings.runtime)
    config = ReplicaConfig(app=settings.app_name, replicas=settings.replicas, container_port=settings.container_port,
                           mappings=list(settings.ports),  # container mode: PortMapping (settings.parse_port_mappings)
                           health_path=settings.health_path, health_timeout=settings.health_timeout,
                           drain_time=settings.drain_time, stop_timeout=settings.stop_timeout,
                           options=settings.run_options)
    with settings.given("ports"):
        proxy = TcpProxy(host.sockets([(m.host, m.port) for m in config.mappings]),
                         settings.proxy_idle_timeout) if settings.ports else None
    return ContainerTarget(settings, state, liveness, host, registry, Replicas(runtime, config, state, proxy),
                           ImageVerifier(verification.keys) if verification else None)
