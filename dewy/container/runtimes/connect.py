"""The runtime dewy container talks to, chosen by ``--runtime`` (see :func:`dewy.container.runtimes.detect`).

Apart from :mod:`dewy.container.runtimes` so that the package, which the runtimes import their
interface from, does not import them back.
"""

from __future__ import annotations

from dewy.container.runtimes import Runtime, detect


def load(choice: str | None) -> Runtime:
    """The runtime for ``--runtime``, with its SDK imported now (a missing SDK is a startup error)."""
    name, url = detect(choice)
    if name == "podman":
        from dewy.container.runtimes.podman import PodmanRuntime

        return PodmanRuntime(url)
    from dewy.container.runtimes.docker import DockerRuntime

    return DockerRuntime(url)
