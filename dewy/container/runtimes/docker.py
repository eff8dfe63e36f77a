"""Docker through the Docker Engine API (the ``docker`` Python library); also Podman's Docker-compatible API."""

from __future__ import annotations

from typing import Any

from dewy.container.runtimes import (
    Container, Image, PullProgress, ReplicaSpec, failed, from_inspect, in_thread, missing_sdk,
    tcp_ports,
)
from dewy.runargs import RunOptions


class DockerRuntime:
    name = "docker"

    def __init__(self, url: str) -> None:
        try:
            import docker
        except ImportError:
            raise missing_sdk("docker", "docker") from None
        self.url = url
        self._docker = docker
        # version pinned so that creating the client does not call the API (dewy may start before dockerd)
        self.client = docker.DockerClient(base_url=url, version="1.41", timeout=120)
        self.api = self.client.api

    def _not_found(self, exc: BaseException) -> bool:
        return isinstance(exc, self._docker.errors.NotFound)

    async def pull(self, reference: str, credentials: tuple[str, str] | None, tls_verify: bool,
                   progress: PullProgress) -> str:
        """The engine decides about TLS (its insecure-registries; loopback is insecure by default)."""

        def pull() -> str:
            repository, _, tag = reference.rpartition(":")
            auth = {"username": credentials[0], "password": credentials[1]} if credentials else None
            for line in self.api.pull(repository, tag=tag, stream=True, decode=True, auth_config=auth):
                failed(line, f"docker pull {reference}")
                progress.seen(line)
            return self.api.inspect_image(reference)["Id"]

        return await in_thread(f"docker pull {reference}", pull)

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        """A user-defined bridge network (Docker's embedded DNS: aliases resolve) with a pinned subnet.

        Docker reconnects a container with its old address (what keeps connections open while dewy moves
        the alias) only on networks whose subnet was given at creation: dewy lets Docker pick a free
        subnet, then creates the network again with that subnet given explicitly.
        """

        def ensure() -> None:
            if self.api.networks(names=[name]):
                return
            try:
                created = self.api.create_network(name, driver="bridge", labels=labels, check_duplicate=True)
                config = (self.api.inspect_network(created["Id"]).get("IPAM") or {}).get("Config") or []
                pools = [self._docker.types.IPAMPool(subnet=c["Subnet"], gateway=c.get("Gateway"))
                         for c in config if c.get("Subnet")]
                if pools:
                    self.api.remove_network(created["Id"])
                    self.api.create_network(name, driver="bridge", labels=labels, check_duplicate=True,
                                            ipam=self._docker.types.IPAMConfig(pool_configs=pools))
            except Exception:
                if not self.api.networks(names=[name]):
                    raise

        await in_thread(f"docker network create {name}", ensure)

    async def create(self, spec: ReplicaSpec) -> str:
        kwargs = _create_kwargs(spec.options, self._docker)
        container = await in_thread(f"docker create {spec.name}", self.client.containers.create, spec.image,
                                    name=spec.name, labels={**spec.options.labels, **spec.labels},
                                    network=spec.network, detach=True, **kwargs)
        return container.id

    async def start(self, container_id: str) -> None:
        await in_thread(f"docker start {container_id[:12]}", self.api.start, container_id)

    async def inspect(self, container_id: str, network: str) -> Container | None:
        def inspect() -> dict | None:
            try:
                return self.api.inspect_container(container_id)
            except Exception as exc:
                if self._not_found(exc):
                    return None
                raise

        data = await in_thread(f"docker inspect {container_id[:12]}", inspect)
        return from_inspect(data, network) if data else None

    async def list(self, labels: dict[str, str], network: str) -> list[Container]:
        entries = await in_thread("docker ps", self.api.containers, all=True,
                                  filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        found = []
        for entry in entries:
            container = await self.inspect(entry["Id"], network)
            if container:
                found.append(container)
        return found

    async def connect(self, container_id: str, network: str, aliases: list[str], ip: str | None, mac: str | None) -> None:
        await in_thread(f"docker network connect {network} {container_id[:12]}", self.api.connect_container_to_network,
                        container_id, network, aliases=aliases or None, ipv4_address=ip, mac_address=mac)

    async def disconnect(self, container_id: str, network: str) -> None:
        await in_thread(f"docker network disconnect {network} {container_id[:12]}",
                        self.api.disconnect_container_from_network, container_id, network)

    async def run_healthcheck(self, container_id: str) -> str | None:
        """Docker runs HEALTHCHECKs itself: report what it last found."""
        return None

    async def stop(self, container_id: str, timeout: float) -> None:
        def stop() -> None:
            try:
                self.api.stop(container_id, timeout=int(timeout))
            except Exception as exc:
                if not self._not_found(exc):
                    raise

        await in_thread(f"docker stop {container_id[:12]}", stop)

    async def remove(self, container_id: str) -> None:
        def remove() -> None:
            try:
                self.api.remove_container(container_id, force=True, v=True)
            except Exception as exc:
                if not self._not_found(exc):
                    raise

        await in_thread(f"docker rm {container_id[:12]}", remove)

    async def images(self, repository: str) -> list[Image]:
        def images() -> list[Image]:
            found = []
            for entry in self.api.images(name=repository):
                tags = [t for t in entry.get("RepoTags") or [] if t.rpartition(":")[0] == repository]
                if tags:
                    found.append(Image(entry["Id"], tags, str(entry.get("Created", ""))))
            return found

        return await in_thread(f"docker images {repository}", images)

    async def exposed_ports(self, image: str) -> list[int]:
        return await in_thread(f"docker image inspect {image}", lambda: tcp_ports(self.api.inspect_image(image).get("Config")))

    async def remove_image(self, reference: str) -> None:
        def remove() -> None:
            try:
                self.api.remove_image(reference)
            except Exception as exc:
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if not self._not_found(exc) and status != 409:
                    raise

        await in_thread(f"docker rmi {reference}", remove)

    async def aclose(self) -> None:
        self.client.close()


def _create_kwargs(options: RunOptions, docker: Any) -> dict[str, Any]:
    """RunOptions as the docker library's containers.create() keywords."""
    kwargs: dict[str, Any] = {}
    if options.environment:
        kwargs["environment"] = dict(options.environment)
    volumes, tmpfs = [], {}
    for mount in options.mounts:
        if mount.type == "tmpfs":
            tmpfs[mount.target] = ",".join(mount.options)
        else:
            modes = ["ro" if mount.read_only else "rw", *mount.options]
            volumes.append(f"{mount.source}:{mount.target}:{','.join(modes)}")
    if volumes:
        kwargs["volumes"] = volumes
    if tmpfs:
        kwargs["tmpfs"] = tmpfs
    simple = {"user": options.user, "working_dir": options.workdir, "entrypoint": options.entrypoint, "command": options.command,
              "mem_limit": options.memory, "mem_reservation": options.memory_reservation,
              "nano_cpus": options.nano_cpus, "pids_limit": options.pids_limit, "shm_size": options.shm_size,
              "hostname": options.hostname, "stop_signal": options.stop_signal}
    kwargs.update({k: v for k, v in simple.items() if v is not None})
    for key in ("group_add", "cap_add", "cap_drop", "security_opt"):
        if getattr(options, key):
            kwargs[key] = list(getattr(options, key))
    if options.read_only:
        kwargs["read_only"] = True
    if options.init:
        kwargs["init"] = True
    if options.extra_hosts:
        kwargs["extra_hosts"] = dict(options.extra_hosts)
    return kwargs

