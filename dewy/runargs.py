"""``dewy container ... -- RUN ARGS``: the ``docker run`` / ``podman run`` options passed to every replica.

dewy creates replicas through the runtimes' APIs, not their command lines, so the
options are parsed here into :class:`RunOptions` and mapped onto each API. The
accepted set is deliberately closed: an option dewy does not know is refused at
startup, as is every option that would take a replica out of dewy's hands.

Accepted (both ``--opt value`` and ``--opt=value``; short forms also as ``-eNAME=v``):

    -e, --env NAME=VALUE | NAME     environment (NAME alone: dewy's own value, if set)
    --env-file FILE                 NAME=VALUE lines, read when dewy starts
    -v, --volume SRC:DST[:OPTS]     bind mount or named volume (OPTS: ro, rw, z, Z, ...)
    --mount type=bind|volume|tmpfs,source=..,target=..[,readonly]
    --tmpfs PATH[:OPTS]
    -u, --user USER[:GROUP]         --group-add GROUP
    -w, --workdir DIR               --entrypoint CMD
    -m, --memory SIZE               --memory-reservation SIZE   --cpus N
    (SIZE as everywhere in dewy, dewy.quantities.parse_size: 512m, 512MiB, 2g, bytes; binary units, as docker's)
    --pids-limit N                  --shm-size SIZE
    --read-only                     --init
    --cap-add CAP                   --cap-drop CAP              --security-opt OPT
    -l, --label KEY=VALUE           (not dewy.*: those are dewy's own)
    --network-alias NAME            more aliases next to the app's own
    --hostname NAME                 --add-host HOST:IP          --stop-signal SIGNAL

Refused, each with its reason: publishing ports (-p, -P: dewy owns the host port,
see --port), -d (replicas always run detached), -i/-t/-a, --privileged, --name,
--network/--net, --ip/--ip6/--mac-address, --rm, --restart, --pod, dewy.* labels,
and positional arguments (the image's own command runs; use --entrypoint).
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

from dewy.errors import UsageError
from dewy.quantities import MAX_PERCENT, count, number, parse_size

LABEL_PREFIX = "dewy."
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

# options that would break dewy's management, with the reason given to the operator
REFUSED = {
    "-p": "dewy owns the host port: use dewy's --port, it always reaches a healthy replica",
    "--publish": "dewy owns the host port: use dewy's --port, it always reaches a healthy replica",
    "-P": "dewy owns the host port: use dewy's --port, it always reaches a healthy replica",
    "--publish-all": "dewy owns the host port: use dewy's --port, it always reaches a healthy replica",
    "-d": "dewy always runs replicas detached",
    "--detach": "dewy always runs replicas detached",
    "-i": "replicas run unattended",
    "--interactive": "replicas run unattended",
    "-t": "replicas run unattended",
    "--tty": "replicas run unattended",
    "-it": "replicas run unattended",
    "-a": "replicas run unattended",
    "--attach": "replicas run unattended",
    "--privileged": "a privileged container has full access to the host",
    "--name": "dewy names every replica itself (APP-VERSION-N-ID)",
    "--network": "replicas join dewy's network dewy-APP (other containers reach them there by the app's alias)",
    "--net": "replicas join dewy's network dewy-APP (other containers reach them there by the app's alias)",
    "--ip": "dewy manages the replicas' addresses",
    "--ip6": "dewy manages the replicas' addresses",
    "--mac-address": "dewy manages the replicas' addresses",
    "--rm": "dewy removes replicas itself once they have drained",
    "--restart": "dewy restarts and replaces replicas itself",
    "--pod": "replicas are dewy's own containers",
    "--label-file": "labels go one by one with --label, so dewy can check that none is dewy.*",
}

# option -> (field, takes a value); short options map to their long names
SHORT = {"-e": "--env", "-v": "--volume", "-u": "--user", "-w": "--workdir", "-m": "--memory", "-l": "--label"}
VALUED = {
    "--env", "--env-file", "--volume", "--mount", "--tmpfs", "--user", "--group-add", "--workdir", "--entrypoint",
    "--memory", "--memory-reservation", "--cpus", "--pids-limit", "--shm-size", "--cap-add", "--cap-drop",
    "--security-opt", "--label", "--network-alias", "--hostname", "--add-host", "--stop-signal",
}
FLAGS = {"--read-only", "--init"}


@dataclass
class Mount:
    """A bind mount, named volume or tmpfs, as both runtimes' APIs take it."""

    type: str  # bind | volume | tmpfs
    target: str
    source: str = ""
    read_only: bool = False
    options: list[str] = field(default_factory=list)  # z, Z, shared, ... (bind/volume); size=, mode= (tmpfs)


@dataclass
class RunOptions:
    environment: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    user: str | None = None
    group_add: list[str] = field(default_factory=list)
    workdir: str | None = None
    entrypoint: list[str] | None = None
    command: list[str] | None = None  # the image's CMD replaced (--cmd, not a run option)
    memory: int | None = None
    memory_reservation: int | None = None
    nano_cpus: int | None = None
    pids_limit: int | None = None
    shm_size: int | None = None
    read_only: bool = False
    init: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    hostname: str | None = None
    extra_hosts: dict[str, str] = field(default_factory=dict)
    stop_signal: str | None = None


def parse_run_args(args: list[str], environ: dict[str, str] | None = None) -> RunOptions:
    """``docker run``-style options to RunOptions; UsageError naming the first refused or bad argument."""
    environ = dict(os.environ) if environ is None else environ
    options = RunOptions()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            raise _bad(f"{arg!r}: dewy container takes run options only; the image's own command runs "
                       "(set another with --entrypoint)")
        name, value = _split(arg)
        if name in REFUSED:
            raise _bad(f"{name} is refused: {REFUSED[name]}")
        if name in FLAGS:
            if value is not None:
                raise _bad(f"{name} takes no value")
            setattr(options, name[2:].replace("-", "_"), True)
            continue
        if name not in VALUED:
            raise _bad(f"{name} is not supported (accepted: {', '.join(sorted(VALUED | FLAGS))}; see dewy container --help)")
        if value is None:
            if i >= len(args):
                raise _bad(f"{name} needs a value")
            value = args[i]
            i += 1
        try:
            _apply(options, name, value, environ)
        except ValueError as exc:
            raise _bad(f"{name} {value!r}: {exc}") from None
    return options


def _bad(message: str) -> UsageError:
    return UsageError(f"run argument {message}")


def _split(arg: str) -> tuple[str, str | None]:
    """``--env=A=1`` -> (--env, A=1); ``-eA=1`` -> (--env, A=1); ``-e`` -> (--env, None)."""
    if arg.startswith("--"):
        name, eq, value = arg.partition("=")
        return name, value if eq else None
    if arg in REFUSED:
        return arg, None
    short, rest = arg[:2], arg[2:]
    if short in SHORT:
        return SHORT[short], (rest.removeprefix("=") if rest else None)
    if short in REFUSED:
        return short, None
    return arg, None


def _apply(options: RunOptions, name: str, value: str, environ: dict[str, str]) -> None:
    if name == "--env":
        key, eq, val = value.partition("=")
        if not ENV_NAME.fullmatch(key):
            raise ValueError("expected NAME=VALUE or NAME")
        if eq:
            options.environment[key] = val
        elif key in environ:
            options.environment[key] = environ[key]
    elif name == "--env-file":
        options.environment.update(read_env_file(Path(value), environ))
    elif name == "--volume":
        options.mounts.append(_volume(value))
    elif name == "--mount":
        options.mounts.append(_mount(value))
    elif name == "--tmpfs":
        target, _, opts = value.partition(":")
        if not target.startswith("/"):
            raise ValueError("expected an absolute path in the container, e.g. /tmp or /run:size=64m")
        options.mounts.append(Mount("tmpfs", target, options=[o for o in opts.split(",") if o]))
    elif name == "--user":
        options.user = _nonempty(value)
    elif name == "--group-add":
        options.group_add.append(_nonempty(value))
    elif name == "--workdir":
        if not value.startswith("/"):
            raise ValueError("expected an absolute path")
        options.workdir = value
    elif name == "--entrypoint":
        options.entrypoint = [_nonempty(value)]
    elif name == "--memory":
        options.memory = parse_size(value)
    elif name == "--memory-reservation":
        options.memory_reservation = parse_size(value)
    elif name == "--shm-size":
        options.shm_size = parse_size(value)
    elif name == "--cpus":
        cpus = number(value, maximum=MAX_PERCENT / 100, most=f"{MAX_PERCENT / 100:g}", shown=value,
                      what="a number of CPUs such as 1.5")
        options.nano_cpus = int(cpus * 1e9)
    elif name == "--pids-limit":
        if not re.fullmatch(r"-?\d+", value):
            raise ValueError("expected an integer (-1: unlimited)")
        options.pids_limit = count(int(value), minimum=-1)
    elif name == "--cap-add":
        options.cap_add.append(_nonempty(value))
    elif name == "--cap-drop":
        options.cap_drop.append(_nonempty(value))
    elif name == "--security-opt":
        options.security_opt.append(_nonempty(value))
    elif name == "--label":
        key, _, val = value.partition("=")
        if not key:
            raise ValueError("expected KEY=VALUE")
        if key.lower().startswith(LABEL_PREFIX):
            raise ValueError(f"labels starting with {LABEL_PREFIX!r} are dewy's own (it finds its replicas by them)")
        options.labels[key] = val
    elif name == "--network-alias":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError("not a DNS name")
        options.aliases.append(value)
    elif name == "--hostname":
        options.hostname = _nonempty(value)
    elif name == "--add-host":
        host, sep, address = value.partition(":")
        if not sep or not host or not address:
            raise ValueError("expected HOST:IP")
        options.extra_hosts[host] = address
    elif name == "--stop-signal":
        upper = value.upper()
        if not value.isdigit() and (upper if upper.startswith("SIG") else f"SIG{upper}") not in signal.Signals.__members__:
            raise ValueError("not a signal name such as SIGQUIT")
        options.stop_signal = value


def _nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _volume(value: str) -> Mount:
    parts = value.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1].startswith("/"):
        raise ValueError("expected SOURCE:/PATH[:OPTIONS] (a host path or a volume name, then a path in the container)")
    source, target, opts = parts[0], parts[1], [o for o in ":".join(parts[2:]).split(",") if o]
    kind = "bind" if source.startswith(("/", ".")) else "volume"
    if kind == "bind":
        source = str(Path(source).absolute())
    read_only = "ro" in opts or "readonly" in opts
    return Mount(kind, target, source, read_only, [o for o in opts if o not in ("ro", "rw", "readonly")])


def _mount(value: str) -> Mount:
    fields: dict[str, str] = {}
    for item in value.split(","):
        key, eq, val = item.partition("=")
        fields[key.strip().lower()] = val if eq else "true"
    kind = fields.pop("type", "volume")
    if kind not in ("bind", "volume", "tmpfs"):
        raise ValueError("type must be bind, volume or tmpfs")
    target = fields.pop("target", None) or fields.pop("destination", None) or fields.pop("dst", None)
    if not target or not target.startswith("/"):
        raise ValueError("needs target=/PATH")
    source = fields.pop("source", None) or fields.pop("src", None) or ""
    if kind != "tmpfs" and not source:
        raise ValueError("needs source=")
    if kind == "bind":
        source = str(Path(source).absolute())
    read_only = fields.pop("readonly", fields.pop("ro", "false")).lower() in ("true", "1", "")
    rest = [f"{k}={v}" if v != "true" else k for k, v in fields.items()]
    if kind == "tmpfs":
        rest = [f"size={fields['tmpfs-size']}" if k.startswith("tmpfs-size") else
                f"mode={fields['tmpfs-mode']}" if k.startswith("tmpfs-mode") else k for k in rest]
    return Mount(kind, target, source, read_only, rest)


def read_env_file(path: Path, environ: dict[str, str]) -> dict[str, str]:
    """``NAME=VALUE`` lines (``#`` comments, blank lines; ``NAME`` alone: from dewy's environment), as docker reads them."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror}") from None
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"line {lineno}: expected NAME=VALUE")
        if eq:
            out[key] = value
        elif key in environ:
            out[key] = environ[key]
    return out
