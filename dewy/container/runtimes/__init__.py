"""Container runtimes behind one interface: Podman (libpod API) and Docker (Engine API).

dewy talks to the runtime's API socket, never its command line: ``podman system
service`` / ``podman.socket`` for Podman, ``dockerd`` for Docker. The SDKs (the
``podman`` and ``docker`` Python libraries) are blocking, so every call runs in a
worker thread; they are imported only by ``dewy container``.

Which runtime (``--runtime auto``, the default): ``$CONTAINER_HOST`` means Podman,
``$DOCKER_HOST`` means Docker; else the first socket that exists of
``/run/podman/podman.sock`` (Podman) and ``/var/run/docker.sock`` (Docker).
"""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from dewy.errors import DewyError, UsageError
from dewy.runargs import RunOptions

RUNTIMES = ("podman", "docker")
PODMAN_SOCKET = "/run/podman/podman.sock"
DOCKER_SOCKET = "/var/run/docker.sock"

# labels dewy puts on every replica; a restarted dewy finds its replicas by them
LABEL_APP = "dewy.app"
LABEL_VERSION = "dewy.version"
LABEL_REPLICA = "dewy.replica"
LABEL_DIGEST = "dewy.digest"
LABEL_IMAGE = "dewy.image"
LABEL_ROLLOUT = "dewy.rollout"

T = TypeVar("T")


class ContainerRuntimeError(DewyError):
    """The container runtime refused a request or could not be reached."""


@dataclass
class Container:
    """A replica as the runtime reports it; ``ip``/``mac``/``aliases`` on dewy's network."""

    id: str
    name: str
    labels: dict[str, str]
    status: str  # created, running, exited, ...
    ip: str | None = None
    mac: str | None = None
    aliases: list[str] = field(default_factory=list)
    health: str | None = None  # the image's HEALTHCHECK: starting/healthy/unhealthy; None without one
    exit_code: int | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def version(self) -> str:
        return self.labels.get(LABEL_VERSION, "")

    @property
    def replica(self) -> int:
        try:
            return int(self.labels.get(LABEL_REPLICA, "0"))
        except ValueError:
            return 0

    @property
    def digest(self) -> str:
        return self.labels.get(LABEL_DIGEST, "")

    @property
    def rollout(self) -> str:
        return self.labels.get(LABEL_ROLLOUT, "")


@dataclass
class Image:
    id: str
    tags: list[str]
    created: str


@dataclass
class ReplicaSpec:
    """What a new replica is made of."""

    image: str
    name: str
    network: str
    labels: dict[str, str]
    options: RunOptions


class PullProgress:
    """How far an image pull is, from the lines its runtime streams: Docker's (and Podman 5's compatMode) tell each
    layer's bytes (``progressDetail``); Podman 4's libpod pull tells none, and only the time taken is shown.
    Written by the pull's thread, read by the event loop (plain assignments: no lock needed)."""

    def __init__(self) -> None:
        self.layers: dict[str, tuple[int, int]] = {}  # layer -> (bytes done, bytes in all)

    def seen(self, line: dict) -> None:
        layer, status, detail = line.get("id"), line.get("status"), line.get("progressDetail") or {}
        if not isinstance(layer, str) or not isinstance(detail, dict):
            return
        if status == "Downloading" and isinstance(detail.get("total"), int) and detail["total"] > 0:
            self.layers = {**self.layers, layer: (int(detail.get("current") or 0), detail["total"])}
        elif status in ("Download complete", "Pull complete") and layer in self.layers:
            self.layers = {**self.layers, layer: (self.layers[layer][1],) * 2}

    def counted(self) -> tuple[int, int] | None:
        """(bytes done, bytes in all) of the layers seen so far, or None while the runtime told no bytes."""
        layers = self.layers
        if not layers:
            return None
        return sum(done for done, _ in layers.values()), sum(total for _, total in layers.values())


class Runtime(Protocol):
    """The container operations a rollout needs; every method may raise ContainerRuntimeError."""

    name: str

    async def pull(self, reference: str, credentials: tuple[str, str] | None, tls_verify: bool,
                   progress: PullProgress) -> str:
        """Pull ``HOST/REPO:TAG``, telling ``progress`` each line the runtime streams; returns the image id."""

    async def ensure_network(self, name: str, labels: dict[str, str]) -> None:
        """Create the bridge network with DNS (aliases resolve) unless it exists."""

    async def create(self, spec: ReplicaSpec) -> str:
        """Create (not start) a replica on ``spec.network``; returns its id."""

    async def start(self, container_id: str) -> None: ...

    async def inspect(self, container_id: str, network: str) -> Container | None:
        """The container's state and its address on ``network``; None if it no longer exists."""

    async def list(self, labels: dict[str, str], network: str) -> list[Container]:
        """Every container (any state) carrying all ``labels``."""

    async def connect(self, container_id: str, network: str, aliases: list[str], ip: str | None, mac: str | None) -> None: ...

    async def disconnect(self, container_id: str, network: str) -> None: ...

    async def run_healthcheck(self, container_id: str) -> str | None:
        """Run the container's HEALTHCHECK now if the runtime can (Podman); returns the health status."""

    async def stop(self, container_id: str, timeout: float) -> None: ...

    async def remove(self, container_id: str) -> None:
        """Remove the container (forcibly, if it still runs); no error if it is gone."""

    async def images(self, repository: str) -> list[Image]:
        """Images tagged ``repository:*``."""

    async def exposed_ports(self, image: str) -> list[int]:
        """The TCP ports a pulled image EXPOSEs (its config's ``ExposedPorts``)."""

    async def remove_image(self, reference: str) -> None: ...  # repository:tag; its last name removes the image

    async def aclose(self) -> None: ...


def from_inspect(data: dict, network: str) -> Container:
    """A container from the runtime's inspect answer (Docker's Engine API and Podman's libpod API agree on
    these fields; Podman names the health state ``Healthcheck`` in some versions)."""
    state = data.get("State") or {}
    health = state.get("Health") or state.get("Healthcheck") or {}
    has_check = bool((data.get("Config") or {}).get("Healthcheck")) or bool(health.get("Status"))
    net = ((data.get("NetworkSettings") or {}).get("Networks") or {}).get(network) or {}
    return Container(
        id=data["Id"],
        name=data.get("Name", "").lstrip("/"),
        labels=(data.get("Config") or {}).get("Labels") or {},
        status=state.get("Status", "unknown"),
        ip=net.get("IPAddress") or None,
        mac=net.get("MacAddress") or None,
        aliases=list(net.get("Aliases") or []),
        health=(health.get("Status") or "starting") if has_check else None,
        exit_code=state.get("ExitCode"),
    )


def tcp_ports(config: dict | None) -> list[int]:
    """The TCP ports of an image config's ``ExposedPorts`` (``{"8080/tcp": {}}``; a bare number is TCP)."""
    ports = set()
    for spec in (config or {}).get("ExposedPorts") or {}:
        number, _, protocol = str(spec).partition("/")
        if number.isdigit() and protocol in ("", "tcp"):
            ports.add(int(number))
    return sorted(ports)


def detect(choice: str | None, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(runtime name, API URL) for ``--runtime`` (None: auto); UsageError when nothing is found."""
    environ = os.environ if environ is None else environ
    podman_url = environ.get("CONTAINER_HOST") or f"unix://{PODMAN_SOCKET}"
    docker_url = environ.get("DOCKER_HOST") or f"unix://{DOCKER_SOCKET}"
    if choice == "podman":
        return "podman", podman_url
    if choice == "docker":
        return "docker", docker_url
    if environ.get("CONTAINER_HOST"):
        return "podman", podman_url
    if environ.get("DOCKER_HOST"):
        return "docker", docker_url
    if Path(PODMAN_SOCKET).exists():
        return "podman", podman_url
    if Path(DOCKER_SOCKET).exists():
        return "docker", docker_url
    raise UsageError(f"no container runtime found: neither $CONTAINER_HOST nor $DOCKER_HOST is set, and neither "
                     f"{PODMAN_SOCKET} (systemctl enable --now podman.socket) nor {DOCKER_SOCKET} exists; "
                     f"or choose one with --runtime podman|docker")


def missing_sdk(library: str, runtime: str) -> UsageError:
    return UsageError(f"--runtime {runtime} needs the {library} Python library: pip install 'dewy[container]'")


def failed(line: dict, where: str) -> None:
    """Raise the error a runtime's streamed answer ends with (the pull's HTTP status was 200 already)."""
    error = line.get("error") or (line.get("errorDetail") or {}).get("message")
    if error:
        raise ContainerRuntimeError(f"{where}: {' '.join(str(error).split())[:400]}")


async def in_thread(where: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking SDK call in a worker thread; its failures as ContainerRuntimeError naming ``where``."""
    try:
        return await asyncio.to_thread(functools.partial(call, *args, **kwargs))
    except ContainerRuntimeError:
        raise
    except Exception as exc:  # the SDKs raise their own APIError / requests errors
        raise ContainerRuntimeError(f"{where}: {describe(exc)}") from None


def describe(exc: BaseException) -> str:
    """An SDK exception in one line: the API's own explanation when there is one."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        text = explanation if isinstance(explanation, str) else str(explanation)
    else:
        text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "No such file or directory" in text or "FileNotFoundError" in text:
        text = f"cannot reach the runtime's API socket ({text.splitlines()[0][:200]})"
    return " ".join(text.split())[:500]
