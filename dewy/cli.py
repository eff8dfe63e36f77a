"""Command line: upstream-compatible flags, validated into Settings before anything starts.

Kept import-light: ``dewy --version`` and ``dewy --help`` must not load HTTP
clients or SDKs; the daemon and its backends are imported after parsing.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from dewy import __version__
from dewy.archive import DEFAULT_MAX_MEMBERS
from dewy.errors import DewyError, UsageError
from dewy.fleet.policy import EXAMPLE as ROLLOUT_EXAMPLE
from dewy.fleet.policy import parse_rollout
from dewy.quantities import parse_duration, parse_size
from dewy.settings import (
    DEFAULT_MAX_ARCHIVE, LOG_FORMATS, LOG_LEVELS, MODE_SETTINGS, MODES, Missing, SettingError,
    Settings, check, check_deploy_window, check_health_path, check_port_number, check_url, parse_address, parse_count,
    parse_drain_time, parse_port_mappings, parse_port_specs, runtime_choice,
)

# How errors of settings.check name a setting (run_args, given after --, has no name)
FLAG_NAMES = {"registry": "--registry", "ports": "--port", "health_path": "--health-path", "rollout": "--rollout"}
# How flags give what a mode needs (settings.REQUIRED)
# Commands to a running daemon (dewy.control): what each does, and what its VERSION is (None: takes none)
CONTROL_COMMANDS = {
    "rollback": ("switch to the previous release kept on this host, quarantine the current one and stay there",
                 "the release to roll back to (default: the previous one)"),
    "pin": ("hold this host on VERSION (switching to it if it is kept here) until dewy unpin", "the version to hold"),
    "unpin": ("end the pin: deploy the newest release again", None),
    "pause": ("no deploys until dewy resume (polling goes on; dewy status says what waits)", None),
    "resume": ("end the pause", None),
    "deploy": ("poll now instead of at the next interval", None),
    "quarantine": ("list the quarantined versions, or --clear one", None),
}
FLEET_HELP = {  # the control commands that also apply to the whole fleet of a --rollout daemon
    "rollback": "the whole fleet: quarantine the rollout's release; every host on it goes back to the previous one",
    "pause": "the whole fleet: no host is admitted to a new release until dewy resume --fleet",
    "resume": "the whole fleet: end a dewy pause --fleet",
}
FLAG_NEEDS = {
    "app_command": "the app command after --, e.g. dewy server --registry URL -p 8000 -- ./current/app",
}


class Parser(argparse.ArgumentParser):
    """argparse that fails with one line and exit code 2, as operators' scripts expect."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _argument(check):
    """A shared validator as an argparse type (argparse then names the flag)."""

    def convert(text: str):
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = check.__name__
    return convert


_duration = _argument(parse_duration)
_size = _argument(parse_size)
_drain = _argument(parse_drain_time)
_port_number = _argument(check_port_number)
_count = _argument(parse_count)
_runtime = _argument(runtime_choice)
_health_path = _argument(check_health_path)
_address = _argument(parse_address)
_window = _argument(check_deploy_window)
_age = _argument(parse_drain_time)
_rollout = _argument(parse_rollout)


def _url(kind: str):
    convert = _argument(lambda text: check_url(kind, text))
    convert.__name__ = f"{kind} URL"
    return convert


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-r", "--registry", required=True, type=_url("registry"), metavar="URL", help="where releases are listed: ghr://OWNER/REPO, file:///DIR, ...")
    parser.add_argument("-i", "--interval", type=_duration, default=10.0, metavar="SECONDS", help="polling interval (default 10)")
    parser.add_argument("--poll-backoff-max", type=_duration, default=300.0, metavar="DURATION", help="after failures, wait at most this long between polls (default 5m)")
    parser.add_argument("-n", "--name", metavar="NAME", help="the app's name in logs, unit names, notifications and container labels (default: the directory's name)")
    parser.add_argument("--calver", metavar="FORMAT", help="tags are calendar versions in this format, e.g. YYYY.0M.0D.MICRO (the registry URL's calver=)")
    parser.add_argument("-c", "--cache", type=_url("cache"), metavar="URL", help="cache: file:///DIR (default $DEWY_CACHEDIR or ./.dewy/cache) or memory://")
    parser.add_argument("--notifier", action="append", default=[], type=_url("notifier"), metavar="URL", help="where people are told (repeatable)")
    parser.add_argument("--notify", action="append", default=[], type=_url("notifier"), metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("-l", "--log-level", choices=LOG_LEVELS, default="info", type=str.lower)
    parser.add_argument("-f", "--log-format", choices=LOG_FORMATS, default="text", type=str.lower)
    parser.add_argument("--before-deploy-hook", metavar="CMD", help="shell command run before a deploy; non-zero exit aborts it")
    parser.add_argument("--after-deploy-hook", metavar="CMD", help="shell command run after a deploy; failure is only reported")
    parser.add_argument("--hook-timeout", type=_duration, default=300.0, metavar="SECONDS", help="kill a hook after this long (default 300)")
    parser.add_argument("-s", "--slot", metavar="NAME", help="deploy only versions whose build metadata is NAME (v1.2.3+NAME)")
    parser.add_argument("-d", "--dir", type=Path, metavar="DIR", help="where releases/ and current live (default: working directory)")
    parser.add_argument("--max-archive-size", type=_size, default=_size(DEFAULT_MAX_ARCHIVE), metavar="SIZE",
                        help=f"refuse archives that expand past this (default {DEFAULT_MAX_ARCHIVE})")
    parser.add_argument("--max-archive-members", type=_count, default=DEFAULT_MAX_MEMBERS, metavar="N",
                        help=f"refuse archives with more files, directories and links than this (default {DEFAULT_MAX_MEMBERS})")
    parser.add_argument("--keep-releases", type=_count, default=7, metavar="N", help="releases kept on disk (default 7)")
    parser.add_argument("--trusted-key", action="append", default=[], metavar="FILE|KEY",
                        help="public key that signs releases, for verify= on the registry URL: a minisign key (file, or"
                             " RW... itself) or a cosign PEM file; a relative FILE may be a systemd credential (repeatable)")
    parser.add_argument("--admin-port", type=_port_number, metavar="PORT", help="admin API port (default 17539, or the next free one)")
    parser.add_argument("--admin-address", default="127.0.0.1", metavar="ADDR", help="admin API address (default 127.0.0.1; any other needs $DEWY_ADMIN_TOKEN)")
    parser.add_argument("--telemetry", action="store_true", help="serve Prometheus metrics at /metrics on the admin API")
    parser.add_argument("--otlp-endpoint", metavar="HOST:PORT", help="also push the metrics over OTLP/gRPC (implies --telemetry)")
    parser.add_argument("--otlp-insecure", action="store_true", help="plaintext gRPC for --otlp-endpoint (default TLS)")
    parser.add_argument("--webhook", type=_address, metavar="HOST:PORT",
                        help="poll at once on a signed GitHub release event (POST /github) or an authenticated POST "
                             "/deploy, with the secret in $DEWY_WEBHOOK_SECRET (a systemd credential or the environment file)")
    parser.add_argument("--deploy-window", type=_window, metavar="SPEC",
                        help="start updates only then: 'Mon-Fri 09:00-17:00 Europe/Berlin' or a cron expression "
                             "('* 9-16 * * 1-5 Europe/Berlin'); without a zone the host's local time")
    parser.add_argument("--min-release-age", type=_age, default=0.0, metavar="DURATION",
                        help="deploy a release only once it was published this long ago, e.g. 1h (default 0)")
    parser.add_argument("--dry-run", action="store_true", help="poll and log what would be deployed; change nothing")
    parser.add_argument("--rollout", type=_rollout, metavar="POLICY",
                        help=f"deploy across the fleet sharing --cache (redis://, consul://) canary first, then in waves: "
                             f"{ROLLOUT_EXAMPLE}[,on-failure=halt|rollback][,ttl=30s]")
    parser.add_argument("--bake-check", metavar="CMD", help="with --rollout: shell command run while a new release bakes "
                                                            "here; non-zero exit quarantines it for the fleet")
    parser.add_argument("-v", "--version", action="version", version=f"dewy {__version__}")
    _config_misplaced(parser)


def _config_misplaced(parser: argparse.ArgumentParser) -> None:
    """Accept --config after a command only to refuse it with a clear message (see parse)."""
    parser.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def build_parser() -> Parser:
    parser = Parser(prog="dewy", description="Pull-based deployment agent: deploys the newest semver release.")
    parser.add_argument("-v", "--version", action="version", version=f"dewy {__version__}")
    parser.add_argument("--config", metavar="FILE", help="read the settings from a TOML file such as /etc/dewy/NAME.toml instead of flags")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    server = commands.add_parser("server", help="deploy and run a server app with zero-downtime restarts",
                                 usage="dewy server --registry URL [options] [-p PORTS] -- COMMAND [ARGS...]")
    _common(server)
    server.add_argument("-p", "--port", action="append", default=[], metavar="PORTS", help="port(s) dewy holds for the app: 8000, 8000,8001, 8000-8005, 127.0.0.1:8000 (repeatable)")
    server.add_argument("--health-path", type=_health_path, metavar="PATH", help="HTTP path that must answer 2xx/3xx before the old generation is stopped")
    server.add_argument("--health-timeout", type=_duration, default=30.0, metavar="SECONDS", help="how long a new generation may take to become healthy (default 30)")
    server.add_argument("--settle-time", type=_duration, default=1.0, metavar="SECONDS", help="a new generation must stay alive this long to count as started (default 1)")
    server.add_argument("--stop-timeout", type=_duration, default=30.0, metavar="SECONDS", help="SIGKILL an old generation this long after SIGTERM (default 30)")
    assets = commands.add_parser("assets", help="deploy static files")
    _common(assets)
    container = commands.add_parser(
        "container", help="deploy an OCI image with rolling updates on Podman or Docker",
        usage="dewy container --registry img://HOST/REPO [-p HOST_PORT[:CONTAINER_PORT]] [options] [-- RUN OPTIONS...]",
        description="Deploys the newest semver tag of an image as --replicas containers on the network dewy-APP "
                    "(alias APP), with health-checked rolling updates. Options after -- are docker run options "
                    "for every replica: -e/--env, --env-file, -v/--volume, --mount, --tmpfs, -u/--user, -w/--workdir, "
                    "-m/--memory, --cpus, --pids-limit, --read-only, --cap-add/--cap-drop, -l/--label, "
                    "--network-alias, ... (publishing, --name, --network, --restart, --privileged, -d are refused).")
    _common(container)
    container.add_argument("--container-port", type=_port_number, metavar="N", help="the port the app listens on inside its container (default: the one port the image EXPOSEs)")
    container.add_argument("-p", "--port", action="append", default=[], metavar="PORTS", help="host port(s) dewy holds and forwards to healthy replicas, each to --container-port or its own: 8000, 8000:3000, 127.0.0.1:8000:3000 (repeatable; health is checked on the first's); without it only containers on dewy's network reach the app")
    container.add_argument("--cmd", action="append", default=[], metavar="WORD", help="the replicas' command and its arguments instead of the image's CMD, one word per --cmd (repeatable, in order)")
    container.add_argument("--proxy-idle-timeout", type=_drain, default=0.0, metavar="SECONDS", help="close a connection through the host port after this long without a byte either way (default 0: never)")
    container.add_argument("--replicas", type=_count, default=1, metavar="N", help="containers serving at once (default 1)")
    container.add_argument("--health-path", type=_health_path, metavar="PATH", help="HTTP path that must answer 2xx/3xx on a new replica before it gets traffic (default: the image's HEALTHCHECK, else the port accepting)")
    container.add_argument("--health-timeout", type=_duration, default=30.0, metavar="SECONDS", help="how long a new replica may take to become healthy (default 30)")
    container.add_argument("--drain-time", type=_drain, default=30.0, metavar="SECONDS", help="old replicas keep running this long after the switch, for connections in flight (default 30)")
    container.add_argument("--stop-timeout", type=_duration, default=30.0, metavar="SECONDS", help="SIGKILL a stopping replica this long after SIGTERM (default 30)")
    container.add_argument("--runtime", default="auto", type=_runtime, metavar="podman|docker|auto", help="container runtime API (default auto: $CONTAINER_HOST, $DOCKER_HOST, /run/podman/podman.sock, /var/run/docker.sock)")
    for name, text in (("status", "what is deployed here, the app and its unit, quarantined versions, the last error"),
                       ("history", "deploys, rollbacks and failures (from the journal of dewy@NAME)")):
        inspect = commands.add_parser(name, help=text, description=text)
        inspect.add_argument("name", nargs="?", metavar="NAME", help="the instance of dewy@NAME (/etc/dewy/NAME.toml)")
        inspect.add_argument("-d", "--dir", type=Path, metavar="DIR", help="without NAME: the working directory of dewy")
        inspect.add_argument("--json", action="store_true", help="print JSON")
        if name == "history":
            inspect.add_argument("-n", "--lines", type=int, metavar="N", help="only the last N entries")
    for name, (text, version) in CONTROL_COMMANDS.items():
        command = commands.add_parser(name, help=text, description=text + " (a running dewy; root only)")
        command.add_argument("name", nargs="?", metavar="NAME", help="the instance of dewy@NAME (/etc/dewy/NAME.toml)")
        if version:
            command.add_argument("version", nargs="?", metavar="VERSION", help=version)
        command.add_argument("-d", "--dir", type=Path, metavar="DIR", help="instead of NAME: the working directory of a dewy run by hand")
        command.add_argument("--json", action="store_true", help="print the answer as JSON")
        if name == "deploy":
            command.add_argument("--now", action="store_true", required=True, help="poll now instead of at the next interval")
        if name == "quarantine":
            command.add_argument("--clear", metavar="VERSION", help="deploy VERSION again once the registry names it")
        if name in FLEET_HELP:
            command.add_argument("--fleet", action="store_true", help=FLEET_HELP[name])
    return parser


def _config_with_command(command: str) -> UsageError:
    return UsageError(f"--config cannot be combined with dewy {command}: the file sets the mode (mode = \"server\", \"assets\" or \"container\")")


def parse(argv: list[str]) -> Settings:
    """Flags to Settings, or UsageError naming the first problem."""
    after: list[str] = []  # the words after --: the app's command (server) or docker-run options (container)
    if "--" in argv:
        at = argv.index("--")
        argv, after = argv[:at], argv[at + 1:]
    try:
        args = build_parser().parse_args(argv)
    except UsageError:
        command = next((a for a in argv if a in MODES), None)
        if command and any(a == "--config" or a.startswith("--config=") for a in argv):
            raise _config_with_command(command) from None  # not "--registry is required"
        raise
    if getattr(args, "config", None) is not None:
        if args.command is not None:
            raise _config_with_command(args.command)
        if after:
            raise UsageError("--config takes no command after --: set command = [...] in the file's [server] table "
                             "(run_args = [...] in [container])")
        from dewy.config import load

        return load(Path(args.config))
    if args.command is None:
        raise UsageError("missing command: use dewy server, dewy assets or dewy container (see dewy --help)")
    if args.notify:
        print("dewy: warning: --notify is deprecated; use --notifier", file=sys.stderr)
    if args.calver:
        from dewy.versions import with_calver

        try:
            args.registry = with_calver(args.registry, args.calver)
        except ValueError as exc:
            raise UsageError(f"--calver: {exc}") from None
    if args.bake_check:
        if args.rollout is None:
            raise UsageError("--bake-check needs --rollout: it decides whether a release baking in a rollout is good")
        args.rollout = replace(args.rollout, bake_check=args.bake_check)
    mode = args.command
    settings = Settings(
        mode=mode, registry=args.registry, interval=args.interval, poll_backoff_max=args.poll_backoff_max,
        cache=args.cache, name=args.name,
        notifiers=args.notifier + args.notify, log_level=args.log_level, log_format=args.log_format,
        before_deploy_hook=args.before_deploy_hook, after_deploy_hook=args.after_deploy_hook,
        hook_timeout=args.hook_timeout, slot=args.slot, dir=(args.dir or Path.cwd()).absolute(),
        max_archive_size=args.max_archive_size, max_archive_members=args.max_archive_members,
        keep_releases=args.keep_releases, trusted_keys=args.trusted_key, admin_port=args.admin_port,
        admin_address=args.admin_address, telemetry=args.telemetry, otlp_endpoint=args.otlp_endpoint,
        otlp_insecure=args.otlp_insecure, webhook=args.webhook, deploy_window=args.deploy_window,
        min_release_age=args.min_release_age, dry_run=args.dry_run, rollout=args.rollout,
    )
    for name in MODE_SETTINGS[mode] & vars(args).keys():
        setattr(settings, name, getattr(args, name))
    if "ports" in MODE_SETTINGS[mode]:
        try:
            settings.ports = (parse_port_mappings if mode == "container" else parse_port_specs)(args.port)
        except ValueError as exc:
            raise UsageError(f"--port: {exc}") from None
    if after:
        words = next((name for name in ("app_command", "run_args") if name in MODE_SETTINGS[mode]), None)
        if words is None:
            raise UsageError(f"dewy {mode} runs no app: remove the command after --")
        setattr(settings, words, after)
    try:
        check(settings, FLAG_NAMES.get)
    except Missing as exc:
        raise UsageError(f"dewy {mode} needs {FLAG_NEEDS[exc.setting]}") from None
    except SettingError as exc:
        raise UsageError(str(exc)) from None
    return settings


def inspect(argv: list[str]) -> int:
    """``dewy status`` / ``dewy history``: read what a running (or stopped) dewy recorded."""
    args = build_parser().parse_args(argv)
    from dewy.status import main as show

    return show(args.command, args.name, args.dir, args.json, getattr(args, "lines", None))


def control(argv: list[str]) -> int:
    """``dewy rollback``, ``pin``, ``pause``, ...: one command to the running daemon of NAME (or of -d DIR)."""
    args = build_parser().parse_args(argv)
    name, version = args.name, getattr(args, "version", None)
    if args.dir is not None and name is not None:
        if version is not None or "version" not in vars(args):
            raise UsageError(f"dewy {args.command}: give NAME or -d DIR, not both")
        name, version = None, name  # dewy pin -d DIR VERSION
    if name is None and args.dir is None:
        raise UsageError(f"dewy {args.command} needs NAME (dewy@NAME) or -d DIR")
    if args.command == "pin" and not version:
        raise UsageError("dewy pin needs the VERSION to hold, e.g. dewy pin NAME v1.2.0")
    fleet = getattr(args, "fleet", False) or None
    if fleet and version:
        raise UsageError("dewy rollback --fleet takes no VERSION: the fleet goes back to its rollout's previous release")
    request = {"command": args.command, "version": version, "clear": getattr(args, "clear", None), "fleet": fleet}
    from dewy.control.client import main as send

    return send(name, args.dir, {k: v for k, v in request.items() if v is not None}, args.json)


def container_list(argv: list[str]) -> int:
    """``dewy container list``: the replicas of the dewy container on this host, from its admin API."""
    from dewy.telemetry.admin import DEFAULT_PORT

    parser = Parser(prog="dewy container list", description="the replicas of the dewy container on this host")
    parser.add_argument("--admin-port", type=_port_number, default=DEFAULT_PORT, metavar="PORT", help=f"admin API port (default {DEFAULT_PORT})")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    from dewy.telemetry.client import container_list as show

    return show(args.admin_port, args.json)


def fleet_status(argv: list[str]) -> int:
    """``dewy fleet status NAME``: the hosts of a fleet rollout and its progress, from the shared cache."""
    parser = Parser(prog="dewy fleet status", description="every host of the app, its version and state, and the rollout")
    parser.add_argument("name", nargs="?", metavar="NAME", help="the instance of dewy@NAME (/etc/dewy/NAME.toml)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="the app's config file instead of NAME's")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if (args.name is None) == (args.config is None):
        raise UsageError("dewy fleet status: give NAME or --config FILE")
    from dewy.fleet.status import main as show

    return show(args.name, args.config, args.json)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] in (["status"], ["history"]):
            return inspect(argv)
        if argv[:1] and argv[0] in CONTROL_COMMANDS:
            return control(argv)
        if argv[:2] == ["container", "list"]:
            return container_list(argv[2:])
        if argv[:2] == ["fleet", "status"]:
            return fleet_status(argv[2:])
        settings = parse(argv)
        from dewy.config import load_credentials

        load_credentials()
        from dewy.daemon import run

        return run(settings)
    except UsageError as exc:
        print(f"dewy: error: {exc}", file=sys.stderr)
        return 2
    except DewyError as exc:
        print(f"dewy: error: {exc}", file=sys.stderr)
        return 1
