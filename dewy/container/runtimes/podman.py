"""Podman through its libpod REST API (the ``podman`` Python library), e.g. ``podman.socket``."""

from __future__ import annotations

import json
import signal
from typing import Any

from dewy.container.runtimes import (
    Container, ContainerRuntimeError, Image, PullProgress, ReplicaSpec, failed, from_inspect, in_thread, missing_sdk,
    tcp_ports,
)
from dewy.runargs import RunOptions

CPU_PERIOD = 100_000  # microseconds; --cpus N is a quota of N periods


class PodmanRuntime:
    name = "podman"

    def __init__(self, url: str) -> None:
        try:
            import podman
        except ImportError:
            raise missing_sdk("podman", "podman") from None
        self.url = url
        self.client = podman.PodmanClient(base_url=url, timeout=120)

    def _check(self, response: Any, where: str) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise ContainerRuntimeError(f"{where}: HTTP {response.status_code}: {message.strip()[:400]}")
        return response

    async def pull(self, reference: str, credentials: tuple[str, str] | None, tls_verify: bool,
                   progress: PullProgress) -> str:
        def pull() -> str:
            repository, _, tag = reference.rpartition(":")
            auth = {"username": credentials[0], "password": credentials[1]} if credentials else None
            image_id = None
            for line in self.client.images.pull(repository, tag=tag, tls_verify=tls_verify, auth_config=auth,
                                                stream=True, decode=True):
                failed(line, f"podman pull {reference}")
                progress.seen(line)
                if "images" in line and isinstance(line.get("id"), str):  # libpod's last line names the image
                    image_id = line["id"]
            return image_id or self.client.images.get(reference).id  # the compat form's lines name no image

        return await in_thread(f"podman pull {reference}", pull)

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        def ensure() -> None:
            if not self.client.networks.exists(name):
                try:
                    self.client.networks.create(name, driver="bridge", dns_enabled=True, labels=labels)
                except Exception:
                    if not self.client.networks.exists(name):  # created concurrently is fine
                        raise

        await in_thread(f"podman network create {name}", ensure)

    async def create(self, spec: ReplicaSpec) -> str:
        kwargs = _create_kwargs(spec.options)
        container = await in_thread(f"podman create {spec.name}", self.client.containers.create, spec.image,
                                    name=spec.name, labels={**spec.options.labels, **spec.labels},
                                    networks={spec.network: {}}, **kwargs)
        return container.id

    async def start(self, container_id: str) -> None:
        def start() -> None:
            self._check(self.client.api.post(f"/containers/{container_id}/start"), f"podman start {container_id[:12]}")

        await in_thread(f"podman start {container_id[:12]}", start)

    async def inspect(self, container_id: str, network: str) -> Container | None:
        def inspect() -> dict | None:
            response = self.client.api.get(f"/containers/{container_id}/json")
            if response.status_code == 404:
                return None
            return self._check(response, f"podman inspect {container_id[:12]}").json()

        data = await in_thread(f"podman inspect {container_id[:12]}", inspect)
        return from_inspect(data, network) if data else None

    async def list(self, labels: dict[str, str], network: str) -> list[Container]:
        def ids() -> list[str]:
            filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
            response = self._check(self.client.api.get("/containers/json", params={"all": "true", "filters": filters}),
                                   "podman ps")
            return [entry["Id"] for entry in response.json() or []]

        found = []
        for container_id in await in_thread("podman ps", ids):
            container = await self.inspect(container_id, network)
            if container:
                found.append(container)
        return found

    async def connect(self, container_id: str, network: str, aliases: list[str], ip: str | None, mac: str | None) -> None:
        body: dict[str, Any] = {"container": container_id, "aliases": aliases}
        if ip:
            body["static_ips"] = [ip]
        if mac:
            body["static_mac"] = mac

        def connect() -> None:
            self._check(self.client.api.post(f"/networks/{network}/connect", data=json.dumps(body)),
                        f"podman network connect {network} {container_id[:12]}")

        await in_thread(f"podman network connect {network}", connect)

    async def disconnect(self, container_id: str, network: str) -> None:
        def disconnect() -> None:
            self._check(self.client.api.post(f"/networks/{network}/disconnect",
                                             data=json.dumps({"Container": container_id})),
                        f"podman network disconnect {network} {container_id[:12]}")

        await in_thread(f"podman network disconnect {network}", disconnect)

    async def run_healthcheck(self, container_id: str) -> str | None:
        """``podman healthcheck run``: Podman schedules HEALTHCHECKs with systemd timers, which a host
        without systemd (or a container) does not have, so dewy runs the check itself."""

        def run() -> str | None:
            response = self.client.api.get(f"/containers/{container_id}/healthcheck")
            if response.status_code == 409:  # no HEALTHCHECK defined, or not running
                return None
            self._check(response, f"podman healthcheck run {container_id[:12]}")
            return (response.json() or {}).get("Status")

        return await in_thread(f"podman healthcheck run {container_id[:12]}", run)

    async def stop(self, container_id: str, timeout: float) -> None:
        def stop() -> None:
            response = self.client.api.post(f"/containers/{container_id}/stop", params={"timeout": int(timeout)},
                                            timeout=timeout + 30)
            if response.status_code not in (304, 404):
                self._check(response, f"podman stop {container_id[:12]}")

        await in_thread(f"podman stop {container_id[:12]}", stop)

    async def remove(self, container_id: str) -> None:
        def remove() -> None:
            response = self.client.api.delete(f"/containers/{container_id}", params={"force": "true", "v": "true"})
            if response.status_code != 404:
                self._check(response, f"podman rm {container_id[:12]}")

        await in_thread(f"podman rm {container_id[:12]}", remove)

    async def images(self, repository: str) -> list[Image]:
        def images() -> list[Image]:
            found = []
            for image in self.client.images.list(filters={"reference": repository}):
                tags = [t for t in image.attrs.get("RepoTags") or [] if t.rpartition(":")[0] == repository]
                if tags:
                    found.append(Image(image.id, tags, str(image.attrs.get("Created", ""))))
            return found

        return await in_thread(f"podman images {repository}", images)

    async def exposed_ports(self, image: str) -> list[int]:
        return await in_thread(f"podman image inspect {image}", lambda: tcp_ports(self.client.images.get(image).attrs.get("Config")))

    async def remove_image(self, reference: str) -> None:
        def remove() -> None:
            response = self.client.api.delete(f"/images/{reference}")
            if response.status_code not in (404, 409):  # 409: in use (by a container dewy does not manage)
                self._check(response, f"podman rmi {reference}")

        await in_thread(f"podman rmi {reference}", remove)

    async def aclose(self) -> None:
        self.client.close()


def _create_kwargs(options: RunOptions) -> dict[str, Any]:
    """RunOptions as the podman library's create() keywords."""
    kwargs: dict[str, Any] = {}
    if options.environment:
        kwargs["environment"] = dict(options.environment)
    mounts, volumes = [], {}
    for mount in options.mounts:
        if mount.type == "volume":
            volumes[mount.source] = {"bind": mount.target, "mode": "ro" if mount.read_only else "rw",
                                     "extended_mode": list(mount.options)}
        elif mount.type == "bind":
            item: dict[str, Any] = {"type": "bind", "source": mount.source, "target": mount.target,
                                    "read_only": mount.read_only}
            for option in mount.options:
                if option in ("z", "Z"):
                    item["relabel"] = option
                elif option.endswith(("shared", "slave", "private")):
                    item["propagation"] = option
            mounts.append(item)
        else:
            item = {"type": "tmpfs", "source": "tmpfs", "target": mount.target}
            for option in mount.options:
                key, _, value = option.partition("=")
                if key in ("size", "mode"):
                    item[key] = value
            mounts.append(item)
    if mounts:
        kwargs["mounts"] = mounts
    if volumes:
        kwargs["volumes"] = volumes
    simple = {"user": options.user, "working_dir": options.workdir, "entrypoint": options.entrypoint, "command": options.command,
              "mem_limit": options.memory, "mem_reservation": options.memory_reservation,
              "pids_limit": options.pids_limit, "shm_size": options.shm_size, "hostname": options.hostname}
    kwargs.update({k: v for k, v in simple.items() if v is not None})
    if options.group_add:
        kwargs["group_add"] = list(options.group_add)
    if options.nano_cpus:
        kwargs["cpu_period"] = CPU_PERIOD
        kwargs["cpu_quota"] = options.nano_cpus * CPU_PERIOD // 1_000_000_000
    if options.read_only:
        kwargs["read_only"] = True
    if options.init:
        kwargs["init"] = True
    if options.cap_add:
        kwargs["cap_add"] = list(options.cap_add)
    if options.cap_drop:
        kwargs["cap_drop"] = list(options.cap_drop)
    selinux = []
    for option in options.security_opt:
        key, _, value = option.partition("=")
        if key == "no-new-privileges":
            kwargs["no_new_privileges"] = value.lower() not in ("false", "0")
        elif key == "seccomp":
            kwargs["seccomp_profile_path"] = value
        elif key == "apparmor":
            kwargs["apparmor_profile"] = value
        else:
            selinux.append(value if key == "label" else option)
    if selinux:
        kwargs["security_opt"] = selinux
    if options.extra_hosts:
        kwargs["extra_hosts"] = dict(options.extra_hosts)
    if options.stop_signal:
        kwargs["stop_signal"] = _signal_number(options.stop_signal)
    return kwargs


def _signal_number(name: str) -> int:
    if name.isdigit():
        return int(name)
    upper = name.upper()
    try:
        return int(signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"])
    except KeyError:
        raise ContainerRuntimeError(f"--stop-signal {name!r} is not a signal name") from None

