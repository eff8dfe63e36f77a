"""The replicas of ``dewy container``: rolling updates, rollback, drain, adoption, healing, image pruning.

A rollout of a new image:

1. Pull the image (the daemon does this before the before-deploy hook).
2. Start the new replicas one by one next to the old ones, on dewy's network
   ``dewy-APP`` (created with DNS if missing), labelled ``dewy.app``, ``dewy.version``,
   ``dewy.replica``, ``dewy.digest``, ``dewy.image``, ``dewy.rollout`` and ``dewy.ports``
   (the container ports, :mod:`dewy.container.ports`) beside the user's labels, named
   ``APP-VERSION-N-ROLLOUT``, and wait for each to be healthy (:mod:`dewy.container.health`).
   They carry no alias yet: nothing sends them traffic before they are checked.
3. All healthy: give the new replicas the app's network alias (``APP`` and any
   ``--network-alias``), switch the host port's proxy to them in one assignment, and
   take the alias off the old replicas. Container clients resolving the alias now get
   new replicas only; for a moment both sets answer, never neither.
4. Keep the old replicas running for ``--drain-time`` so that connections already
   made to them (through the proxy, or by container clients) finish, then stop them
   (SIGTERM, SIGKILL after ``--stop-timeout``) and remove them. This runs in the
   background: the next deploy does not wait for it.

A replica that exits or fails its health check rolls the whole update back: the new
replicas are removed, the old ones never stopped serving, and the daemon quarantines
the tag. The switch is all at once (surge, not one-by-one replacement): clients never
see two versions through the proxy, and a failure at any replica leaves nothing to undo
on the old side.

Moving an alias without cutting connections: a network alias can only be changed by
disconnecting the container from the network and connecting it again. dewy reconnects
with the same IP and MAC address (``static_ips``/``static_mac``), so established TCP
connections to that replica survive (the kernel keeps the sockets; the address is back
within milliseconds). Docker allows that only on networks created with a subnet, which
is how dewy creates ``dewy-APP`` there. If the runtime still refuses the address, the
replica is connected with a new one and connections open to it are cut (logged as
``alias-address``).

Adoption (a restarted dewy, or one that was killed): the runtime is asked for every
container labelled ``dewy.app=APP``. The replicas recorded as serving in the state file
keep serving (no redeploy, no restart); replicas of a rollout that was interrupted are
removed; old replicas that were draining finish their drain; unknown ones are drained
and removed. Aliases are corrected both ways. If the state file is lost, the running
replicas of the deployed (else the highest) version are adopted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from dewy import log
from dewy.container.health import check, wait_healthy
from dewy.container.ports import LABEL_PORTS, ContainerPorts, PortMapping, needs_image, resolve
from dewy.container.proxy import TcpProxy
from dewy.container.runtimes import (
    LABEL_APP, LABEL_DIGEST, LABEL_IMAGE, LABEL_REPLICA, LABEL_ROLLOUT, LABEL_VERSION, Container,
    ContainerRuntimeError, PullProgress, ReplicaSpec, Runtime,
)
from dewy.errors import AppStartError, DewyError
from dewy.progress import SAMPLE, Progress
from dewy.runargs import RunOptions
from dewy.state import DrainingEntry, ReplicaEntry, ReplicaSet, RolloutEntry, State
from dewy.tasks import Background
from dewy.versions import parse_tag

NAME_CHARS = re.compile(r"[^a-zA-Z0-9_.-]+")
SERVING_CHECK_TIMEOUT = 3.0  # a serving replica's check on each poll (a vanished address never answers)


def container_name(text: str) -> str:
    """``text`` as a container or network name component."""
    cleaned = NAME_CHARS.sub("-", text).strip("-.")
    return cleaned or "app"


@dataclass(frozen=True)
class ImageVersion:
    """One version of the app's image: what a rollout starts replicas of."""

    tag: str
    reference: str  # what the runtime pulls: HOST[:PORT]/REPO:TAG
    digest: str  # the manifest digest (sha256:...), "" if not known


@dataclass
class ReplicaConfig:
    app: str
    replicas: int
    container_port: int | None  # None: the image's EXPOSE
    mappings: list[PortMapping]  # the held sockets, in order, each with its container port if given
    health_path: str | None
    health_timeout: float
    drain_time: float
    stop_timeout: float
    options: RunOptions

    @property
    def network(self) -> str:
        return f"dewy-{container_name(self.app)}"

    @property
    def aliases(self) -> list[str]:
        return [container_name(self.app), *self.options.aliases]


class Replicas:
    """The app's containers: the serving set, the draining sets, and the proxy in front of them."""

    def __init__(self, runtime: Runtime, config: ReplicaConfig, state: State, proxy: TcpProxy | None) -> None:
        self.runtime = runtime
        self.config = config
        self.state = state
        self.proxy = proxy
        self.serving: list[Container] = []
        self.version: str | None = None
        self.digest: str = ""
        self.image: str | None = None
        self.ports: ContainerPorts | None = None  # what the serving replicas were started for
        self.pinned: dict[str, str] = {}  # manifest digest -> the verified image id its replicas start from
        self.health: dict[str, str | None] = {}  # container id -> None (healthy) or why not
        self._draining: dict[str, tuple[Container, datetime]] = {}
        self._drains = Background()
        self._rollout: RolloutEntry | None = None
        self._cleanup = Background()  # removals that need not hold anything up
        self._lock = asyncio.Lock()
        self.adopted = False  # the runtime was asked what runs (else only the state file's record is known)

    # -- what runs -------------------------------------------------------------------------

    def runs(self, image: ImageVersion) -> bool:
        """Is ``image`` what the serving replicas run (same tag and, if known, same digest)?"""
        if not self.serving or self.version != image.tag:
            return False
        return not image.digest or not self.digest or self.digest == image.digest

    def summary(self) -> str:
        if not self.serving:
            return "no replicas serving"
        healthy = sum(1 for c in self.serving if self.health.get(c.id) is None)
        text = f"{len(self.serving)} replicas of {self.version} ({healthy} healthy)"
        if self._draining:
            text += f", {len(self._draining)} draining"
        return text

    def _labels(self) -> dict[str, str]:
        return {LABEL_APP: self.config.app}

    def _record(self) -> None:
        """The replicas in the state file: for ``dewy status`` and for adoption by the next dewy.
        Written only when something changed (every tick re-checks health; the file is fsynced)."""
        record = ReplicaSet(
            runtime=self.runtime.name,
            network=self.config.network,
            aliases=self.config.aliases,
            ports=[f"{h}:{p}" for h, p in self.proxy.addresses] if self.proxy else [],
            version=self.version,
            digest=self.digest,
            image=self.image,
            replicas=[ReplicaEntry(c.id, c.name, c.replica, c.version, c.ip, c.status, self.health.get(c.id) is None,
                                   self.health.get(c.id)) for c in self.serving],
            draining=[DrainingEntry(c.id, c.name, c.version, until.isoformat()) for c, until in self._draining.values()],
            rollout=self._rollout,
        )
        if record != self.state.app:
            self.state.app = record
            self.state.save()

    def _route(self) -> None:
        """The proxy forwards to the healthy serving replicas (to all running ones if none is healthy)."""
        if self.proxy is None or self.ports is None:
            return
        healthy = [c for c in self.serving if c.ip and c.running and self.health.get(c.id) is None]
        chosen = healthy or [c for c in self.serving if c.ip and c.running]
        self.proxy.set_routes([(c.ip, port) for c in chosen] for port in self.ports.forward)

    async def _ports_for(self, image: ImageVersion) -> ContainerPorts:
        """The container ports for a replica of ``image`` (its EXPOSE asked only when the settings leave one open)."""
        config = self.config
        exposed = None
        if needs_image(config.mappings, config.container_port):
            exposed = await self.runtime.exposed_ports(self.pinned.get(image.digest, image.reference))
        return resolve(config.mappings, config.container_port, exposed, image.reference)

    @staticmethod
    def _ports_of(container: Container) -> ContainerPorts | None:
        return ContainerPorts.from_label(container.labels.get(LABEL_PORTS))

    def _static_ports(self) -> ContainerPorts | None:
        """The container ports when the settings alone say them (no image to ask)."""
        config = self.config
        if needs_image(config.mappings, config.container_port):
            return None
        return resolve(config.mappings, config.container_port, None, "")

    # -- adoption --------------------------------------------------------------------------

    def adopt_recorded(self) -> None:
        """The runtime cannot be asked yet (its API socket is down): serve through the replicas the state
        file recorded, which are probably still running; :meth:`heal` adopts properly once it can."""
        record = self._recorded()
        if record and record.replicas:
            self.version, self.digest, self.image = record.version, record.digest or "", record.image
            self.serving = [Container(r.id, r.name, {LABEL_VERSION: r.version, LABEL_REPLICA: str(r.replica)},
                                      "running", ip=r.ip) for r in record.replicas]
            self.ports = self._static_ports()  # else known once the runtime answers (the replicas' label)
            self._route()
            log.warning("replicas-recorded", f"forwarding to the {len(self.serving)} replicas of {self.version} "
                        "recorded in the state file until the runtime answers", version=self.version)
        if self.proxy:
            self.proxy.start()

    def _recorded(self) -> ReplicaSet | None:
        return self.state.app if isinstance(self.state.app, ReplicaSet) else None

    def _serving_image(self) -> ImageVersion | None:
        return ImageVersion(self.version, self.image, self.digest) if self.version and self.image else None

    async def pull(self, image: ImageVersion, credentials: tuple[str, str] | None, tls_verify: bool,
                   progress: Progress, verified_id: str | None = None) -> None:
        """Pull ``image``, telling ``progress`` how far it is (bytes where the runtime says, else the time taken).
        ``verified_id``: the image id whose signature was checked; the pull must bring exactly it (not what a
        tag moved since then names), and the replicas then start from that id."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.info("pulling", f"pulling {image.reference}", version=image.tag, image=image.reference)
        pulled = PullProgress()
        pulling = asyncio.ensure_future(self.runtime.pull(image.reference, credentials, tls_verify, pulled))
        try:
            while not (await asyncio.wait({pulling}, timeout=SAMPLE))[0]:
                counted = pulled.counted()
                progress.update("pulling", *counted) if counted else progress.elapsed("pulling")
        finally:
            pulling.cancel()  # a stop: the runtime's thread ends with its call
        image_id = pulling.result()
        log.info("pulled", f"pulled {image.reference} in {loop.time() - started:.1f}s", version=image.tag,
                 image=image.reference, image_id=image_id)
        if verified_id is not None:
            if image_id.removeprefix("sha256:") != verified_id.removeprefix("sha256:"):
                raise ContainerRuntimeError(
                    f"{image.reference}: the pull brought image {image_id}, not the verified {verified_id} of"
                    f" {image.digest} (the tag was moved since it was checked); nothing started, checked again next poll")
            self.pinned[image.digest] = image_id
        await self._ports_for(image)  # an image whose port is not clear fails here, before any hook runs

    async def restart(self) -> None:
        """A rolling restart: fresh replicas of the serving image replace the running ones (SIGUSR1)."""
        image = self._serving_image()
        if image is None:
            raise DewyError("no replicas are serving: nothing to restart")
        await self.roll_out(image)

    async def adopt(self) -> None:
        """Take over what a previous dewy left running (see the module docstring); start the proxy."""
        async with self._lock:
            network = self.config.network
            found = await self.runtime.list(self._labels(), network)
            record = self._recorded()
            by_id = {c.id: c for c in found}
            rollout = record.rollout if record else None
            interrupted = rollout.id if rollout else None
            serving = [by_id[r.id] for r in (record.replicas if record else []) if r.id in by_id]
            if record and serving:
                self.version, self.digest, self.image = record.version, record.digest or "", record.image
            else:
                serving = self._guess_serving(found, interrupted)
                if serving:
                    first = serving[0]
                    self.version, self.digest, self.image = first.version, first.digest, first.labels.get(LABEL_IMAGE)
            self.serving = sorted(serving, key=lambda c: c.replica)
            if self.serving:  # what they were started for, if for these host ports (an older dewy set no label)
                started_for = self._ports_of(self.serving[0])
                fits = started_for is not None and len(started_for.forward) == len(self.config.mappings)
                self.ports = started_for if fits else await self._ports_for(
                    ImageVersion(self.version or "", self.image or "", self.digest))
            draining = {d.id: d.until for d in (record.draining if record else [])}
            now = datetime.now(timezone.utc)
            removed = []
            serving_ids = {c.id for c in self.serving}
            for container in found:
                if container.id in serving_ids:
                    continue
                if container.id in draining:
                    self._drain([container], datetime.fromisoformat(draining[container.id]))
                elif (interrupted and container.rollout == interrupted) or not container.running:
                    removed.append(container)
                else:
                    self._drain([container], now + timedelta(seconds=self.config.drain_time))
            if self.serving:
                log.info("replicas-adopted", f"adopted {len(self.serving)} running replicas of {self.version}",
                         version=self.version, replicas=[c.name for c in self.serving])
            self._route()  # the host port forwards to the adopted replicas at once; their checks follow
            if self.proxy:
                self.proxy.start()
            if removed:
                self._cleanup.start(self._remove_leftovers(removed, interrupted, rollout.version if rollout else None),
                                    "removing the replicas of an interrupted rollout")
            self._rollout = None
            await self._ensure_running()
            await self._fix_aliases()
            await self._check_all()
            self._route()
            self._record()
            self.adopted = True

    async def _remove_leftovers(self, containers: list[Container], interrupted: str | None, version: str | None) -> None:
        """In the background of an adoption (the proxy serves meanwhile): what a killed dewy left half-done."""
        for container in containers:
            await self._remove(container, "half-started replica of an interrupted rollout"
                               if interrupted and container.rollout == interrupted else f"replica that is {container.status}")
        if interrupted:
            log.warning("rollout-interrupted", f"the rollout of {version} was interrupted (dewy stopped); "
                        "its replicas were removed, it starts again", version=version, removed=len(containers))

    def _guess_serving(self, found: list[Container], interrupted: str | None) -> list[Container]:
        """Without a record of the serving replicas: the running ones of the deployed, else the highest, version."""
        running = [c for c in found if c.running and not (interrupted and c.rollout == interrupted)]
        if not running:
            return []
        versions = {c.version for c in running}
        deployed = self.state.current.tag if self.state.current else None
        if deployed in versions:
            version = deployed
        else:
            version = max(versions, key=lambda v: (parse_tag(v) is not None, parse_tag(v) or parse_tag("0.0.0")))
        return [c for c in running if c.version == version]

    async def _ensure_running(self) -> None:
        """Start serving replicas that exited (a crash, a host reboot); log what cannot be started."""
        for index, container in enumerate(self.serving):
            if container.running:
                continue
            log.warning("replica-restarting", f"replica {container.name} is {container.status}; starting it again",
                        container=container.name, exit_code=container.exit_code)
            try:
                await self.runtime.start(container.id)
                fresh = await self.runtime.inspect(container.id, self.config.network)
            except ContainerRuntimeError as exc:
                log.error("replica-restart-failed", f"cannot start replica {container.name}: {exc}",
                          container=container.name)
                continue
            if fresh:
                self.serving[index] = fresh

    async def _fix_aliases(self) -> None:
        """Serving replicas carry the app's aliases, no other replica does."""
        wanted = set(self.config.aliases)
        for index, container in enumerate(self.serving):
            if container.running and not wanted <= set(container.aliases):
                self.serving[index] = await self._set_aliases(container, self.config.aliases) or container
        for container, _ in list(self._draining.values()):
            if wanted & set(container.aliases):
                await self._set_aliases(container, [])

    # -- a rollout -------------------------------------------------------------------------

    async def roll_out(self, image: ImageVersion) -> None:
        """Replace the serving replicas by replicas of ``image``; AppStartError after a rollback."""
        async with self._lock:
            config = self.config
            ports = await self._ports_for(image)
            await self.runtime.ensure_network(config.network, self._labels())
            rollout = secrets.token_hex(3)
            self._rollout = RolloutEntry(rollout, image.tag, image.digest, image.reference,
                                         datetime.now(timezone.utc).isoformat())
            self._record()  # before the first container exists: a restarted dewy knows what to clean up
            log.info("rollout-started", f"rolling out {image.tag}: {config.replicas} new replicas next to "
                     f"{len(self.serving)} serving", version=image.tag, image=image.reference,
                     previous_version=self.version)
            started: list[Container] = []
            try:
                for replica in range(1, config.replicas + 1):
                    started.append(await self._start_replica(image, replica, rollout, ports))
                fresh = []
                for container in started:  # all healthy: now they may get traffic
                    fresh.append(await self._set_aliases(container, config.aliases, required=True) or container)
                started = fresh
            except BaseException as exc:
                await asyncio.shield(self._roll_back(image, started, rollout, exc))
                raise
            old = self.serving
            self.serving = started
            self.version, self.digest, self.image = image.tag, image.digest, image.reference
            self.ports = ports
            self.health = {c.id: None for c in started}
            self._route()  # the switch: new connections go to the new replicas from here on
            self._rollout = None
            until = datetime.now(timezone.utc) + timedelta(seconds=config.drain_time)
            self._drain(old, until)
            self._record()
            for container in old:
                await self._set_aliases(container, [])
            log.info("rollout-switched", f"{image.tag} serves: {len(started)} replicas; {len(old)} old replicas "
                     f"drain for {config.drain_time:g}s", version=image.tag,
                     replicas=[c.name for c in started], draining=[c.name for c in old])

    async def _start_replica(self, image: ImageVersion, replica: int, rollout: str, ports: ContainerPorts) -> Container:
        config = self.config
        name = f"{container_name(config.app)}-{container_name(image.tag)}-{replica}-{rollout}"
        labels = {LABEL_APP: config.app, LABEL_VERSION: image.tag, LABEL_REPLICA: str(replica),
                  LABEL_DIGEST: image.digest, LABEL_IMAGE: image.reference, LABEL_ROLLOUT: rollout, LABEL_PORTS: ports.label}
        spec = ReplicaSpec(self.pinned.get(image.digest, image.reference), name, config.network, labels, config.options)
        container_id = await self.runtime.create(spec)
        log.info("replica-starting", f"starting replica {replica} of {image.tag}", container=name, version=image.tag)
        try:
            await self.runtime.start(container_id)
        except ContainerRuntimeError as exc:
            await self._remove_id(container_id, name)
            raise AppStartError(f"replica {replica} of {image.tag} did not start: {exc}") from None
        try:
            return await wait_healthy(self.runtime, container_id, config.network, port=ports.health,
                                      path=config.health_path, timeout=config.health_timeout,
                                      what=f"replica {replica} of {image.tag} ({name})")
        except BaseException:
            await asyncio.shield(self._remove_id(container_id, name))
            raise

    async def _roll_back(self, image: ImageVersion, started: list[Container], rollout: str, exc: BaseException) -> None:
        """Remove the new replicas (also those not yet listed, by their rollout label); the old ones serve on."""
        leftovers = {c.id: c for c in started}
        with contextlib.suppress(DewyError):
            for container in await self.runtime.list({LABEL_APP: self.config.app, LABEL_ROLLOUT: rollout},
                                                     self.config.network):
                leftovers[container.id] = container
        for container in leftovers.values():
            await self._remove(container, f"rollback of {image.tag}")
        self._rollout = None
        self._record()
        reason = "dewy is stopping" if isinstance(exc, asyncio.CancelledError) else str(exc)
        log.warning("rollout-aborted", f"the rollout of {image.tag} was rolled back ({reason}); "
                    f"{self.version or 'nothing'} keeps serving", version=image.tag, serving=self.version)

    async def _set_aliases(self, container: Container, aliases: list[str], required: bool = False) -> Container | None:
        """Reconnect ``container`` to dewy's network with ``aliases``, keeping its IP and MAC address."""
        network = self.config.network
        try:
            await self.runtime.disconnect(container.id, network)
        except ContainerRuntimeError as exc:
            if required:
                raise
            log.warning("alias-failed", f"cannot change the aliases of {container.name}: {exc}", container=container.name)
            return None
        try:
            await self.runtime.connect(container.id, network, aliases, container.ip, container.mac)
        except ContainerRuntimeError as exc:
            log.warning("alias-address", f"the runtime did not give {container.name} its address back ({exc}); "
                        "connections to it were cut", container=container.name)
            await self.runtime.connect(container.id, network, aliases, None, None)
        fresh = await self.runtime.inspect(container.id, network)
        log.debug("aliases", f"{container.name} now answers to {', '.join(aliases) or 'no alias'}",
                  container=container.name, ip=fresh.ip if fresh else None)
        return fresh

    # -- draining and removal --------------------------------------------------------------

    def _drain(self, containers: list[Container], until: datetime) -> None:
        if not containers:
            return
        for container in containers:
            self._draining[container.id] = (container, until)
        self._drains.start(self._drain_then_remove(containers, until), f"draining {len(containers)} old replicas")

    async def _drain_then_remove(self, containers: list[Container], until: datetime) -> None:
        delay = (until - datetime.now(timezone.utc)).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)
        backends = []
        for container in containers:
            ports = self._ports_of(container) or self.ports
            backends += [(container.ip, port) for port in ports.forward] if container.ip and ports else []
        in_flight = self.proxy.active(backends) if self.proxy else 0
        log.info("replicas-drained", f"drain time over for {len(containers)} old replicas; stopping them"
                 + (f" ({in_flight} connections through the proxy still open)" if in_flight else ""),
                 replicas=[c.name for c in containers], open_connections=in_flight)
        await asyncio.gather(*(self._stop_and_remove(c) for c in containers))
        for container in containers:
            self._draining.pop(container.id, None)
        self._record()

    async def _stop_and_remove(self, container: Container, why: str | None = None) -> None:
        try:
            await self.runtime.stop(container.id, self.config.stop_timeout)
        except ContainerRuntimeError as exc:
            log.warning("replica-stop-failed", f"cannot stop {container.name}: {exc}", container=container.name)
        await self._remove(container, why or f"old replica of {container.version}, drained")

    async def _remove(self, container: Container, why: str) -> None:
        await self._remove_id(container.id, container.name, why)

    async def _remove_id(self, container_id: str, name: str, why: str = "") -> None:
        try:
            await self.runtime.remove(container_id)
            log.info("replica-removed", f"removed {name}" + (f" ({why})" if why else ""), container=name)
        except ContainerRuntimeError as exc:
            log.warning("replica-remove-failed", f"cannot remove {name}: {exc}", container=name)

    # -- every tick ------------------------------------------------------------------------

    async def heal(self) -> None:
        """Restart exited serving replicas, replace vanished ones, re-check health, re-route the proxy."""
        if not self.adopted:
            await self.adopt()
            return
        if self._lock.locked():
            return
        async with self._lock:
            if not self.serving:
                return
            refreshed = []
            for container in self.serving:
                fresh = await self.runtime.inspect(container.id, self.config.network)
                if fresh is None:
                    log.warning("replica-vanished", f"replica {container.name} no longer exists", container=container.name)
                    continue
                refreshed.append(fresh)
            self.serving = refreshed
            await self._ensure_running()
            await self._replace_missing()
            before = dict(self.health)
            await self._check_all()
            for container in self.serving:
                reason = self.health.get(container.id)
                if reason != before.get(container.id, None):
                    if reason:
                        log.warning("replica-unhealthy", f"replica {container.name} is unhealthy: {reason}",
                                    container=container.name, reason=reason)
                    else:
                        log.info("replica-healthy", f"replica {container.name} is healthy again", container=container.name)
            self._route()
            self._record()

    async def _replace_missing(self) -> None:
        """Start replicas of the serving image for indices that vanished (removed by hand, say)."""
        image = self._serving_image()
        if image is None or self.ports is None:
            return
        present = {c.replica for c in self.serving}
        for replica in range(1, self.config.replicas + 1):
            if replica in present:
                continue
            try:
                container = await self._start_replica(image, replica, secrets.token_hex(3), self.ports)
                self.serving.append(await self._set_aliases(container, self.config.aliases) or container)
                log.info("replica-replaced", f"replica {replica} of {self.version} replaced", container=container.name)
            except DewyError as exc:
                log.error("replica-replace-failed", f"cannot replace replica {replica}: {exc}")
        self.serving.sort(key=lambda c: c.replica)

    async def _check_all(self) -> None:
        if self.ports is None:
            return
        results = await asyncio.gather(*(check(self.runtime, c, self.ports.health, self.config.health_path,
                                               timeout=SERVING_CHECK_TIMEOUT) for c in self.serving),
                                       return_exceptions=True)
        self.health = {c.id: (str(r) if isinstance(r, BaseException) else r) for c, r in zip(self.serving, results)}

    # -- images ----------------------------------------------------------------------------

    async def prune_images(self, keep_tags: set[str]) -> None:
        """Remove this app's images except those of ``keep_tags`` and those any replica still uses."""
        if not self.image:
            return
        repository = self.image.rpartition(":")[0]
        in_use = {c.labels.get(LABEL_IMAGE) for c in self.serving}
        in_use |= {c.labels.get(LABEL_IMAGE) for c, _ in self._draining.values()}
        for image in await self.runtime.images(repository):
            if any(t.rpartition(":")[2] in keep_tags or t in in_use for t in image.tags):
                continue
            for tag in image.tags:  # by name: an image with a second tag cannot be removed by its ID
                try:
                    await self.runtime.remove_image(tag)
                    log.info("image-pruned", f"removed image {tag}", image=tag)
                except ContainerRuntimeError as exc:
                    log.warning("image-prune-failed", f"cannot remove image {tag}: {exc}")

    # -- dewy stops ------------------------------------------------------------------------

    async def hand_over(self, grace: float) -> None:
        """dewy restarts (systemd): stop taking connections, let those in flight finish (up to ``grace``),
        leave every replica running for the next dewy, which adopts them and resumes the drains."""
        if self.proxy:
            self.proxy.stop_accepting()
            left = await self.proxy.drain(grace)
            self.proxy.close()
            if left:
                log.warning("proxy-cut", f"{left} connections through the host port were still open and are cut")
        await self._drains.cancel()
        await self._cleanup.cancel()  # the next dewy finds what is left and removes it

    async def stop(self, grace: float) -> None:
        """dewy stops: finish in-flight proxied connections (up to ``grace``), then stop and remove every replica."""
        await self.hand_over(grace)
        async with self._lock:
            known = {c.id: c for c in self.serving + [c for c, _ in self._draining.values()]}
            with contextlib.suppress(DewyError):  # also what an adoption's cleanup did not get to
                for container in await self.runtime.list(self._labels(), self.config.network):
                    known.setdefault(container.id, container)
            everything = list(known.values())
            log.info("replicas-stopping", f"stopping {len(everything)} replicas", replicas=[c.name for c in everything])
            await asyncio.gather(*(self._stop_and_remove(c, "dewy is stopping") for c in everything))
            self.serving, self._draining = [], {}
            self.version = None
            self.state.app = None
            self.state.save()
