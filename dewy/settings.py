"""The settings of a run of dewy, and the one validation that flags and config files share.

Two front ends fill :class:`Settings`: :mod:`dewy.cli` from flags and :mod:`dewy.config`
from ``/etc/dewy/NAME.toml``. Each converts single values with the validators here (a
ValueError whose reason does not name the setting: each front end adds its own name),
then calls :func:`check`, where the mode rules live: what each mode takes
(:data:`MODE_SETTINGS`), what it needs (:data:`REQUIRED`) and what goes together.

A config file's settings remember where each value was written (:class:`Origin`), so an
error found later, when a backend is built from its URL or a port is bound, still names
``FILE:LINE`` (:meth:`Settings.given`).

Kept import-light (no HTTP clients, SDKs or TOML parser): ``dewy --version`` loads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dewy.archive import DEFAULT_MAX_MEMBERS
from dewy.errors import UsageError
from dewy.fleet.policy import RolloutPolicy
from dewy.quantities import count, parse_duration
from dewy.runargs import RunOptions, parse_run_args
from dewy.urls import Url

if TYPE_CHECKING:
    from dewy.container.ports import PortMapping

MODES = ("server", "assets", "container")
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("text", "json")
RUNTIMES = ("podman", "docker", "auto")
DEFAULT_MAX_ARCHIVE = "4G"
SHARED_CACHES = ("redis", "rediss", "consul")  # the caches a fleet shares (a rollout needs one)

#: What each mode takes beyond the settings common to all: its command's flags, its config file's tables.
MODE_SETTINGS: dict[str, frozenset[str]] = {
    "server": frozenset({"ports", "app_command", "health_path", "health_timeout", "settle_time", "stop_timeout", "app"}),
    "assets": frozenset(),
    "container": frozenset({"container_port", "ports", "replicas", "health_path", "health_timeout", "drain_time",
                            "stop_timeout", "runtime", "run_args", "cmd", "proxy_idle_timeout"}),
}
#: What each mode cannot run without.
REQUIRED: dict[str, tuple[str, ...]] = {"server": ("app_command",), "assets": (), "container": ()}


@dataclass(frozen=True)
class Origin:
    """Where a config file set a value: errors about it start ``FILE:LINE: KEY:``."""

    path: Path
    line: int
    key: str  # as the file spells it: registry, notifiers[1], server.ports

    def place(self, message: str) -> str:
        return f"{self.path}:{self.line}: {message}"


@dataclass
class AppLimits:
    """Who the app runs as and what it may use; applied to its transient systemd unit."""

    user: str | None = None
    group: str | None = None
    memory_max: int | None = None  # bytes
    cpu_quota: float | None = None  # percent of one CPU, e.g. 150.0
    tasks_max: int | None = None
    environment: dict[str, str] = field(default_factory=dict)


@dataclass
class Settings:
    """Everything a run of dewy needs, from flags or from a config file."""

    mode: str  # server | assets | container
    registry: str
    interval: float = 10.0
    poll_backoff_max: float = 300.0  # the longest wait between failing polls (Retry-After may ask for more)
    cache: str | None = None
    notifiers: list[str] = field(default_factory=list)
    log_level: str = "info"
    log_format: str = "text"
    before_deploy_hook: str | None = None
    after_deploy_hook: str | None = None
    hook_timeout: float = 300.0
    slot: str | None = None
    dir: Path = field(default_factory=Path.cwd)
    ports: list[tuple[str, int]] | list[PortMapping] = field(default_factory=list)  # container mode: with container ports
    app_command: list[str] = field(default_factory=list)
    health_path: str | None = None
    health_timeout: float = 30.0
    settle_time: float = 1.0
    stop_timeout: float = 30.0
    max_archive_size: int = 4 << 30
    max_archive_members: int = DEFAULT_MAX_MEMBERS
    keep_releases: int = 7
    trusted_keys: list[str] = field(default_factory=list)  # --trusted-key FILE|KEY, for the registry's verify=
    container_port: int | None = None  # container mode: the app's port in its container (None: the image's EXPOSE)
    replicas: int = 1
    drain_time: float = 30.0
    runtime: str | None = None  # podman | docker | None (auto-detect)
    run_args: list[str] = field(default_factory=list)  # docker-run options for every replica, as given
    cmd: list[str] = field(default_factory=list)  # container mode: the replicas' command instead of the image's CMD
    proxy_idle_timeout: float = 0.0  # container mode: close proxied connections idle this long (0: never)
    name: str | None = None  # the app's name: -n/--name, or the instance name of dewy@NAME (from /etc/dewy/NAME.toml)
    source: Path | None = None  # the --config file these settings came from (None: flags)
    app: AppLimits = field(default_factory=AppLimits)
    admin_port: int | None = None  # None: 17539, or the next free port (dewy.telemetry.admin)
    admin_address: str = "127.0.0.1"
    telemetry: bool = False  # GET /metrics on the admin API (check() turns it on for otlp_endpoint)
    otlp_endpoint: str | None = None  # HOST:PORT: push the metrics over OTLP/gRPC too
    otlp_insecure: bool = False
    webhook: tuple[str, int] | None = None  # HOST:PORT of the push-trigger endpoint (dewy.webhook)
    deploy_window: str | None = None  # when updates may start (dewy.schedule)
    min_release_age: float = 0.0  # seconds a release must have been published before it is deployed
    dry_run: bool = False  # poll and log what would be deployed; change nothing (dewy.dryrun)
    rollout: RolloutPolicy | None = None  # --rollout / [rollout]: canary and waves over a shared cache
    #: run_args parsed (the env files read) once, by check()
    run_options: RunOptions = field(default_factory=RunOptions, compare=False, repr=False)
    #: where a config file set each value, by field (notifiers also by item: ``notifiers[1]``)
    origins: dict[str, Origin] = field(default_factory=dict, compare=False, repr=False)

    @property
    def app_name(self) -> str:
        """The app's name in logs, journal fields, unit names and notifications: NAME of dewy@NAME, else the dir's."""
        return self.name or self.dir.name

    @contextlib.contextmanager
    def given(self, setting: str) -> Iterator[None]:
        """A UsageError raised inside (a backend refusing its URL, a port that cannot be bound) is about
        ``setting``: from a config file, it names the file, the line and the key."""
        try:
            yield
        except UsageError as exc:
            origin = self.origins.get(setting)
            if origin is None:
                raise
            raise UsageError(origin.place(f"{origin.key}: {exc}")) from None


class SettingError(ValueError):
    """A mode rule broken by ``setting`` (each front end places it: a flag, or a file's line)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


class Missing(SettingError):
    """The mode needs ``setting`` and it was not given (each front end says how to give it)."""

    def __init__(self, setting: str, mode: str) -> None:
        super().__init__(setting, f"dewy {mode} needs {setting}")
        self.mode = mode


def check(settings: Settings, name: Callable[[str], str | None]) -> None:
    """The mode rules, for flags and config files alike; SettingError naming settings by ``name``
    (``--health-path`` or ``server.health_path``; None: a setting with no name of its own)."""

    def named(setting: str, reason: str) -> SettingError:
        shown = name(setting)
        return SettingError(setting, f"{shown}: {reason}" if shown else reason)

    settings.telemetry = settings.telemetry or bool(settings.otlp_endpoint)  # as upstream: OTLP enables telemetry
    for setting in REQUIRED[settings.mode]:
        if not getattr(settings, setting):
            raise Missing(setting, settings.mode)
    if settings.mode == "server" and settings.health_path and not settings.ports:
        raise SettingError("health_path", f"{name('health_path')} needs {name('ports')} to check the app through")
    if settings.rollout and Url.parse(settings.cache or "memory://").scheme not in SHARED_CACHES:
        raise named("rollout", "a rollout coordinates the hosts of a fleet through a shared cache: "
                               "add --cache redis://HOST or consul://HOST (cache = \"...\" in a config file)")
    if settings.mode == "container":
        if Url.parse(settings.registry).scheme != "img":
            raise named("registry", "dewy container deploys images: use an img://HOST/REPO registry")
        try:
            settings.run_options = parse_run_args(settings.run_args)
            settings.run_options.command = list(settings.cmd) or None
        except UsageError as exc:
            raise named("run_args", str(exc)) from None


# -- single values: each raises ValueError with a reason that does not name the setting ----------


def parse_count(text: str | int) -> int:
    """A whole number of things, at least 1 (releases kept, archive members, replicas)."""
    value = str(text).strip()
    if not value.isdigit():
        raise ValueError(f"{value!r} is not a whole number")
    return count(int(value))


def check_health_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{path!r} must start with /")
    return path


def check_port_number(text: str | int) -> int:
    value = str(text)
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"{value} is not a port number (1-65535)")
    return int(value)


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:9000``, ``[::1]:9000``, ``0.0.0.0:9000`` to (host, port)."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:9000")
    return host, check_port_number(port)


def check_deploy_window(text: str) -> str:
    """``Mon-Fri 09:00-17:00 Europe/Berlin`` or a cron expression, checked now and kept as written."""
    from dewy.schedule import parse_window

    return parse_window(text).text


def parse_drain_time(text: str) -> float:
    """A duration that may be zero (no drain)."""
    return parse_duration(str(text), zero=True)


def parse_port_specs(specs: list[str]) -> list[tuple[str, int]]:
    """``8000``, ``8000,8001``, ``8000-8005``, ``127.0.0.1:8000``, ... to (host, port) pairs, each once."""
    from dewy.sockets import parse_ports  # binds nothing; imported when ports are given

    return parse_ports(specs)


def parse_port_mappings(specs: list[str]) -> list[PortMapping]:
    """Container mode's ``--port``: as :func:`parse_port_specs`, each with an optional ``:CONTAINER_PORT``."""
    from dewy.container.ports import parse_port_mappings as parse

    return parse(specs)


def check_url(kind: str, raw: str) -> str:
    """A backend URL (``registry``, ``cache`` or ``notifier``) with a known scheme; the backend checks the rest
    when it is built (it may need secrets from the environment that ``dewy status`` does not have)."""
    if kind == "registry":
        from dewy.registry import REGISTRIES as plugins
    elif kind == "cache":
        from dewy.cache import CACHES as plugins
    else:
        from dewy.notifiers import NOTIFIERS as plugins
    try:
        plugins.url(raw)
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    return raw


def check_choice(text: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``, in any case."""
    if text.lower() not in choices:
        raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
    return text.lower()


def runtime_choice(text: str) -> str | None:
    """``podman``, ``docker`` or ``auto`` (None: detect)."""
    choice = check_choice(text, RUNTIMES)
    return None if choice == "auto" else choice
