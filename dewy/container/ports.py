"""Which container port each host port of ``dewy container`` forwards to, and which one health is checked on.

``--port HOST_PORT[:CONTAINER_PORT]`` is upstream dewy's form (``8080:3000``); a bind
address may come first (``127.0.0.1:8080:3000``, ``[::1]:8080``). A mapping without its
container port forwards to ``--container-port``, else to the one TCP port the image
EXPOSEs; an image exposing none or several, when one is needed, is an error naming them.
Health is checked on the first mapping's container port (with no host port at all: on
``--container-port`` or the exposed one), as upstream checks it.

The ports are resolved per image, when a rollout starts, and kept on each replica as the
``dewy.ports`` label: a restarted dewy forwards to what the replicas were started for.
Kept import-light: the settings parse ``--port`` with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from dewy.errors import DewyError

LABEL_PORTS = "dewy.ports"


class PortMapping(NamedTuple):
    """One ``--port``: the address dewy holds and the container port it forwards to (None: the default)."""

    host: str  # "" for all interfaces
    port: int
    container_port: int | None


def parse_port_mappings(specs: list[str]) -> list[PortMapping]:
    """``8080``, ``8080:3000``, ``127.0.0.1:8080:3000``, ``[::1]:8080:3000``, ``8000-8002`` (comma lists too)
    to mappings in the order given; ValueError with a one-line reason."""
    from dewy.sockets import parse_ports  # its errors word what is wrong with the host address part

    mappings: list[PortMapping] = []
    for spec in specs:
        for item in spec.split(","):
            address, target = _split(item.strip())
            if target is not None and not (target.isdigit() and 1 <= int(target) <= 65535):
                raise ValueError(f"bad port spec {spec!r}: container port {target!r} is not a port number (1-65535)")
            held = parse_ports([address])
            if target is not None and len(held) > 1:
                raise ValueError(f"bad port spec {spec!r}: a range of host ports cannot map to one container port "
                                 f"{target}: give each HOST_PORT:CONTAINER_PORT")
            for host, port in held:
                if any((m.host, m.port) == (host, port) for m in mappings):
                    raise ValueError(f"bad port spec {spec!r}: {item} is given twice")
                mappings.append(PortMapping(host, port, int(target) if target is not None else None))
    return mappings


def _split(item: str) -> tuple[str, str | None]:
    """(the host address, the container port if given) of one item: ``8080:3000`` and ``HOST:8080:3000`` map,
    ``HOST:8080`` (an address, not a number, before the colon) does not."""
    if item.startswith("["):
        bracket, _, rest = item.partition("]:")
        port, colon, target = rest.partition(":")
        return (f"{bracket}]:{port}", target) if colon else (item, None)
    parts = item.split(":")
    if len(parts) == 2 and re.fullmatch(r"\d+(-\d+)?", parts[0]):
        return parts[0], parts[1]
    if len(parts) == 3:
        return f"{parts[0]}:{parts[1]}", parts[2]
    return item, None


@dataclass(frozen=True)
class ContainerPorts:
    """A rollout's container ports: one per held address, in order, and the one health is checked on."""

    health: int
    forward: tuple[int, ...]

    @property
    def label(self) -> str:
        """``HEALTH:FORWARD,...`` (``3000:3000,9090``), the ``dewy.ports`` label's value."""
        return f"{self.health}:{','.join(map(str, self.forward))}"

    @classmethod
    def from_label(cls, value: str | None) -> ContainerPorts | None:
        """The ports a replica was started for; None without a readable label."""
        health, _, forward = (value or "").partition(":")
        numbers = [p for p in forward.split(",") if p]
        if not health.isdigit() or not all(p.isdigit() for p in numbers):
            return None
        return cls(int(health), tuple(int(p) for p in numbers))


def needs_image(mappings: Iterable[PortMapping], default: int | None) -> bool:
    """Must the image's EXPOSE say which port the app serves on?"""
    mappings = list(mappings)
    return default is None and (not mappings or any(m.container_port is None for m in mappings))


def resolve(mappings: Iterable[PortMapping], default: int | None, exposed: list[int] | None,
            image: str) -> ContainerPorts:
    """The container ports for ``mappings``; ``exposed``: the image's EXPOSEd TCP ports (None: not asked,
    see :func:`needs_image`). DewyError naming them when the one port to use is not clear."""
    mappings = list(mappings)
    if needs_image(mappings, default):
        ports = sorted(set(exposed or []))
        if len(ports) != 1:
            which = f"exposes {', '.join(map(str, ports))}" if ports else "exposes no TCP port (no EXPOSE)"
            raise DewyError(f"{image} {which}: say which port the app serves on with --container-port N "
                            "or --port HOST_PORT:CONTAINER_PORT (container_port / ports in the config file)")
        default = ports[0]
    # `or 0` never applies: without a default, needs_image made sure every mapping names its port
    forward = tuple(m.container_port or default or 0 for m in mappings)
    return ContainerPorts(forward[0] if forward else default or 0, forward)
