"""Deploy targets: what a deploy changes on this host, one per mode.

The daemon's cycle (:mod:`dewy.daemon`) is the same for every mode: poll, prepare,
before-hook, activate (or discard), after-hook, report, prune. What those steps do is the mode's
:class:`DeployTarget`:

- ``assets`` (:mod:`dewy.targets.assets`): releases unpacked under ``DIR/releases``, the
  ``current`` symlink switched atomically; nothing runs.
- ``server`` (:mod:`dewy.targets.server`): the same, and the app restarted onto ``current``
  as a new generation on the held sockets, rolled back when it does not come up.
- ``container`` (:mod:`dewy.targets.container`): an image pulled, replicas rolled out behind
  the host port's proxy, rolled back when one does not become healthy.

A new mode is one module with a ``build`` function returning its target, named in
:data:`TARGETS`; it is imported only when that mode runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dewy.host import Host
from dewy.liveness import Liveness
from dewy.progress import Progress
from dewy.registry import Registry, Release
from dewy.settings import Settings
from dewy.signing import Verification
from dewy.state import State
from dewy.urls import Url

TARGETS = {
    "assets": "dewy.targets.assets",
    "server": "dewy.targets.server",
    "container": "dewy.targets.container",
}


@dataclass
class Candidate:
    """A release made ready to activate (fetched, or pulled) and what the daemon tells about it."""

    release: Release
    env: dict[str, str] = field(default_factory=dict)  # for the hooks, besides DEWY_VERSION and friends
    deployed: dict[str, str | None] = field(default_factory=dict)  # fields of the ``deployed`` log line
    rolled_back: dict[str, str | None] = field(default_factory=dict)  # fields of the ``rollback`` log line


@dataclass
class BaseTarget:
    """What every target works with: the settings, the state file it records deploys in, and the watchdog's
    liveness, which each of its steps tells how long it may take."""

    settings: Settings
    state: State
    liveness: Liveness

    async def ready(self, release: Release) -> None:
        """A release the registry names is complete: a target that needs more of it overrides this."""


class DeployTarget(Protocol):
    """What one mode does at each step of the cycle. Every method may raise DewyError: that cycle fails
    (logged, notified, retried), and what ran before keeps running."""

    restart_kind: str  # what SIGUSR1 starts, as its failure is logged ("the graceful restart")

    async def adopt(self) -> None:
        """Before the first poll: take over what a previous dewy left running, else start from ``current``."""

    async def converge(self) -> None:
        """Every tick: what should run, runs (a crashed app restarted, a vanished replica replaced)."""

    def is_current(self, release: Release) -> bool:
        """Is ``release`` what is deployed here?"""

    async def ready(self, release: Release) -> None:
        """Before ``deploying``: ArtifactNotReady while ``release`` is not complete yet (CI still uploading its
        signature), so that a poll waiting for it starts no deploy; SignatureRefused once it is given up on."""

    async def prepare(self, release: Release, progress: Progress) -> Candidate:
        """Fetch what ``release`` needs (verified), without changing what runs; before the before-deploy hook.
        Long work tells ``progress`` how far it is."""

    def discard(self, candidate: Candidate) -> None:
        """After the deploy, whether or not it was activated: remove what of the candidate nothing took (a
        partial release whose before-deploy hook failed, or whose activation a stop cut short)."""

    async def activate(self, candidate: Candidate) -> None:
        """Make the candidate what runs, and record it as ``state.current``. If it does not come up, undo it
        (the previous version keeps serving) and raise AppStartError: the daemon quarantines the version."""

    async def prune(self) -> None:
        """After a deploy: keep the newest ``--keep-releases`` and what still runs; failures only logged."""

    async def restart(self) -> None:
        """SIGUSR1: restart what runs, without a moment of downtime."""

    async def watch(self, changed: Callable[[], None]) -> None:
        """In the background for dewy's life: record changes of what runs (for adoption and ``dewy status``),
        and call ``changed`` after each (systemd's STATUS= line)."""

    def status(self) -> str | None:
        """What runs, for systemd's STATUS= line; None when nothing is run."""

    async def stop(self, stop_app: bool) -> None:
        """dewy ends: stop what runs if ``stop_app`` and dewy is not being restarted, else leave it to the next
        dewy; release what the target holds either way."""


def load(settings: Settings, *, host: Host, state: State, liveness: Liveness, registry: Registry,
         cache_url: Url, verification: Verification | None) -> DeployTarget:
    """The target of ``settings.mode``, built now so that a bad directory or runtime fails at startup;
    ``verification``: the registry URL's verify= and its trusted keys (None: releases are not signed)."""
    module = importlib.import_module(TARGETS[settings.mode])
    return module.build(settings, host=host, state=state, liveness=liveness, registry=registry,
                        cache_url=cache_url, verification=verification)
