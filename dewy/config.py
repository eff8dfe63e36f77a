"""Config files (``dewy --config /etc/dewy/NAME.toml``) and systemd credentials.

A config file holds the same settings as the command line, with snake_case keys
(``log_level`` for ``--log-level``), server options in a ``[server]`` table and the
app's user and resource limits in an ``[app]`` table. Values are checked with the
same validators and mode rules as the flags (:mod:`dewy.settings`); every problem is
one line ``FILE:LINE: message`` (a UsageError: exit code 2). tomllib reports no
positions, so :func:`key_lines` finds each key's line in the text, and each value's
line is kept with the settings (``Settings.origins``) for the errors found later, when
the backends are built.

The instance name is the file's stem (``demo`` for ``/etc/dewy/demo.toml``, as in
``dewy@demo``); without ``dir``, releases live in ``/var/lib/dewy/NAME``, the
StateDirectory that ``dewy@.service`` gives each instance.

Secrets do not belong in the file: they come from the environment
(``EnvironmentFile=/etc/dewy/NAME.env``) or from systemd credentials, which
:func:`load_credentials` exports as environment variables.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, MutableMapping
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dewy.errors import UsageError
from dewy.fleet.policy import RolloutPolicy, rollout_from
from dewy.quantities import count, parse_duration, parse_percent, parse_size
from dewy.settings import (
    LOG_FORMATS, LOG_LEVELS, MODE_SETTINGS, MODES, AppLimits, Missing, Origin, SettingError, Settings, check,
    check_choice, check_deploy_window, check_health_path, check_port_number, check_url, parse_address, parse_drain_time,
    parse_port_mappings, parse_port_specs, runtime_choice,
)
from dewy.urls import redact

if TYPE_CHECKING:
    from dewy.container.ports import PortMapping

STATE_ROOT = Path("/var/lib/dewy")  # default dir: STATE_ROOT/NAME (systemd: StateDirectory=dewy/%i)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CREDENTIAL_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # GITHUB_TOKEN, SLACK_TOKEN, AWS_SECRET_ACCESS_KEY, ...

Key = tuple[str, ...]


class Bad(ValueError):
    """A value that cannot be used; the message does not name the key (the caller adds it)."""


# -- values -------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    """How TOML calls the type of ``value``, with short scalars shown."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = redact(value) if "://" in value else value  # masked before shortening, which could cut the "@"
        return f"a string ({shown if len(shown) <= 40 else shown[:37] + '...'!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (datetime, date, time)):
        return "a date/time"
    return type(value).__name__


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad(f"expected a string, not {_kind(value)}")
    if not value.strip():
        raise Bad("must not be empty")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"expected true or false, not {_kind(value)}")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Bad(f"expected an integer, not {_kind(value)}")
    return value


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Bad(f"expected a duration: seconds as a number, or a string such as \"30s\" or \"5m\", not {_kind(value)}")
    return parse_duration(str(value))


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Bad(f"expected a size: a string such as \"512M\" or \"4G\", or bytes as an integer, not {_kind(value)}")
    return parse_size(str(value))


def _count(value: Any) -> int:
    return count(_integer(value))


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    return lambda value: check_choice(_string(value), choices)


def _mode(value: Any) -> str:
    return _choice(MODES)(value)


def _port_number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Bad(f"expected a port number such as 8080, not {_kind(value)}")
    return check_port_number(value)


def _drain_time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Bad(f"expected a duration: seconds as a number, or a string such as \"30s\", not {_kind(value)}")
    return parse_drain_time(str(value))


def _runtime(value: Any) -> str | None:
    return runtime_choice(_string(value))


def _run_args(value: Any) -> list[str]:
    return _list(_command_word, '["-e", "TZ=UTC", "-v", "/srv/data:/data"]')(value)


def _url(kind: str) -> Callable[[Any], str]:
    return lambda value: check_url(kind, _string(value))


def _list(item: Callable[[Any], Any], example: str) -> Callable[[Any], list]:
    """A list whose items are checked by ``item``; an item's problem is reported as ``key[i]``."""

    def convert(value: Any) -> list:
        if not isinstance(value, list):
            raise Bad(f"expected a list such as {example}, not {_kind(value)}")
        out = []
        for index, element in enumerate(value):
            try:
                out.append(item(element))
            except ValueError as exc:
                raise Bad(str(exc), index) from None
        return out

    return convert


def _path(value: Any) -> Path:
    path = Path(_string(value))
    if not path.is_absolute():
        raise Bad(f"{value!r} must be an absolute path")
    return path


def _port_spec(parse: Callable[[list[str]], list], example: str) -> Callable[[Any], str]:
    def spec(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise Bad(f"expected a port (8000) or a port spec string ({example}), not {_kind(value)}")
        parse([str(value)])
        return str(value)

    return spec


def _ports(value: Any) -> list[tuple[str, int]]:
    specs = _list(_port_spec(parse_port_specs, '"8000-8005", "127.0.0.1:8000"'), '[8000, "8001-8003", "127.0.0.1:9000"]')(value)
    return parse_port_specs(specs)  # the whole list: a port given twice


def _port_mappings(value: Any) -> list[PortMapping]:
    """Container mode's ports: each may name its container port."""
    specs = _list(_port_spec(parse_port_mappings, '"8000:3000", "127.0.0.1:8000"'),
                  '[8000, "8001:3000", "127.0.0.1:9000:9090"]')(value)
    return parse_port_mappings(specs)  # the whole list: a port given twice


def _command(value: Any) -> list[str]:
    command = _list(_command_word, '["./current/app", "--port", "8000"]')(value)
    if not command:
        raise Bad("must not be empty: the app to run, such as [\"./current/app\"]")
    return command


def _command_word(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad(f"expected a string, not {_kind(value)}")
    return value


def _health_path(value: Any) -> str:
    return check_health_path(_string(value))


def _account(value: Any) -> str:
    """A user or group: a name, or a numeric id."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if not isinstance(value, str):
        raise Bad(f"expected a name (string) or a numeric id, not {_kind(value)}")
    return _string(value)


def _percent(value: Any) -> float:
    if not isinstance(value, str):
        raise Bad(f"expected a percentage of one CPU as a string such as \"150%\", not {_kind(value)}")
    return parse_percent(value)


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Bad(f"expected a table of strings such as {{ TZ = \"UTC\" }}, not {_kind(value)}")
    for name, item in value.items():
        if not ENV_NAME.fullmatch(name):
            raise Bad(f"{name!r} is not an environment variable name", name)
        if not isinstance(item, str):
            raise Bad(f"expected a string, not {_kind(item)}", name)
    return dict(value)


def _rollout(value: Any) -> RolloutPolicy:
    if not isinstance(value, dict):
        raise Bad(f"expected a table ([rollout]) with keys such as canary = 1, wave = \"25%\", not {_kind(value)}")
    try:
        return rollout_from(value)
    except ValueError as exc:  # "KEY: reason": placed on the key's line
        key, _, reason = str(exc).partition(": ")
        raw = next((k for k in value if k.replace("_", "-").lower() == key), None)
        raise (Bad(reason, raw) if raw else Bad(str(exc))) from None


# -- schema -------------------------------------------------------------------------------

# key -> (converter, Settings/AppLimits field)
TOP: dict[str, tuple[Callable[[Any], Any], str]] = {
    "mode": (_mode, "mode"),
    "registry": (_url("registry"), "registry"),
    "interval": (_duration, "interval"),
    "poll_backoff_max": (_duration, "poll_backoff_max"),
    "cache": (_url("cache"), "cache"),
    "notifiers": (_list(_url("notifier"), '["slack://deploys"]'), "notifiers"),
    "log_level": (_choice(LOG_LEVELS), "log_level"),
    "log_format": (_choice(LOG_FORMATS), "log_format"),
    "before_deploy_hook": (_string, "before_deploy_hook"),
    "after_deploy_hook": (_string, "after_deploy_hook"),
    "hook_timeout": (_duration, "hook_timeout"),
    "slot": (_string, "slot"),
    "dir": (_path, "dir"),
    "max_archive_size": (_size, "max_archive_size"),
    "max_archive_members": (_count, "max_archive_members"),
    "keep_releases": (_count, "keep_releases"),
    "trusted_keys": (_list(_string, '["/etc/dewy/minisign.pub"]'), "trusted_keys"),
    "admin_port": (_port_number, "admin_port"),
    "admin_address": (_string, "admin_address"),
    "telemetry": (_boolean, "telemetry"),
    "otlp_endpoint": (_string, "otlp_endpoint"),
    "otlp_insecure": (_boolean, "otlp_insecure"),
    "webhook": (lambda value: parse_address(_string(value)), "webhook"),
    "deploy_window": (lambda value: check_deploy_window(_string(value)), "deploy_window"),
    "min_release_age": (_drain_time, "min_release_age"),
    "dry_run": (_boolean, "dry_run"),
    "rollout": (_rollout, "rollout"),
}
SERVER: dict[str, tuple[Callable[[Any], Any], str]] = {
    "ports": (_ports, "ports"),
    "command": (_command, "app_command"),
    "health_path": (_health_path, "health_path"),
    "health_timeout": (_duration, "health_timeout"),
    "settle_time": (_duration, "settle_time"),
    "stop_timeout": (_duration, "stop_timeout"),
}
CONTAINER: dict[str, tuple[Callable[[Any], Any], str]] = {
    "container_port": (_port_number, "container_port"),
    "ports": (_port_mappings, "ports"),
    "replicas": (_count, "replicas"),
    "health_path": (_health_path, "health_path"),
    "health_timeout": (_duration, "health_timeout"),
    "drain_time": (_drain_time, "drain_time"),
    "stop_timeout": (_duration, "stop_timeout"),
    "runtime": (_runtime, "runtime"),
    "run_args": (_run_args, "run_args"),
    "proxy_idle_timeout": (_drain_time, "proxy_idle_timeout"),
    "cmd": (_list(_command_word, '["./server", "--port", "8080"]'), "cmd"),
}
APP: dict[str, tuple[Callable[[Any], Any], str]] = {
    "user": (_account, "user"),
    "group": (_account, "group"),
    "memory_max": (_size, "memory_max"),
    "cpu_quota": (_percent, "cpu_quota"),
    "tasks_max": (_count, "tasks_max"),
    "environment": (_environment, "environment"),
}
TABLES = {"server": SERVER, "container": CONTAINER, "app": APP}
# the mode each table belongs to (settings.MODE_SETTINGS): [app] holds the setting "app"
TABLE_MODES = {table: next(mode for mode in MODES if ({"app"} if table == "app" else {f for _, f in keys.values()})
                           <= MODE_SETTINGS[mode]) for table, keys in TABLES.items()}
# how a file gives what its mode needs (settings.REQUIRED): the key, what it is, an example
NEEDED = {
    "app_command": ("command", "the app to run", 'command = ["./current/app"]'),
}


# -- loading ------------------------------------------------------------------------------


def load(path: Path) -> Settings:
    """Read a config file into Settings, or raise UsageError ``FILE:LINE: message`` naming the first problem."""
    path = Path(path).absolute()  # errors and Settings.source name the file the same way from any cwd
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the config file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(path, text, exc) from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise UsageError(f"{path}: arrays or tables nested too deeply to be a dewy config file") from None
    return _Reader(path, text).settings(document)


def _syntax_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> UsageError:
    message = str(exc)
    match = re.search(r" \(at line (\d+), column (\d+)\)$", message)
    if match:
        line, where = int(match[1]), f" (column {match[2]})"
    else:
        line, where = text.count("\n") + 1, " (at the end of the file)"
    reason = message[: match.start()] if match else message.removesuffix(" (at end of document)")
    if reason == "Cannot overwrite a value":
        reason = "a key is set twice (TOML: cannot overwrite a value)"
    return UsageError(f"{path}:{line}: TOML syntax error: {reason}{where}")


class _Reader:
    """Converts a document's values, noting where each was written (Settings.origins), and applies the mode rules."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = key_lines(text)
        self.origins: dict[str, Origin] = {}

    def error(self, key: Key, message: str) -> UsageError:
        return UsageError(f"{self.path}:{line_of(self.lines, key)}: {message}")

    def convert(self, key: Key, converter: Callable[[Any], Any], value: Any, setting: str) -> Any:
        try:
            converted = converter(value)
        except ValueError as exc:
            # Bad(message, index) or Bad(message, name): the problem is in one item of a list or table
            where = ".".join(key) + "".join(f"[{extra}]" if isinstance(extra, int) else f".{extra}" for extra in exc.args[1:])
            raise self.error(key + tuple(str(extra) for extra in exc.args[1:] if isinstance(extra, str)),
                             f"{where}: {exc.args[0]}") from None
        origin = Origin(self.path, line_of(self.lines, key), ".".join(key))
        self.origins[setting] = origin
        for index in range(len(converted) if isinstance(converted, list) else 0):  # an array's items share its line
            self.origins[f"{setting}[{index}]"] = Origin(origin.path, origin.line, f"{origin.key}[{index}]")
        return converted

    def settings(self, document: dict[str, Any]) -> Settings:
        name = self.path.stem
        values: dict[str, Any] = {}
        for key, value in document.items():
            if key in TABLES:
                if not isinstance(value, dict):
                    raise self.error((key,), f"{key}: expected a table ([{key}]), not {_kind(value)}")
            elif key in TOP:
                converter, field_name = TOP[key]
                values[field_name] = self.convert((key,), converter, value, field_name)
            else:
                raise self.unknown((), key, value)
        if "mode" not in values:
            raise self.error((), "missing key 'mode': set mode = \"server\", \"assets\" or \"container\"")
        if "registry" not in values:
            raise self.error((), "missing key 'registry': where releases are listed, such as registry = \"ghr://OWNER/REPO\"")
        mode = values["mode"]
        tables = {table: self.table(document, table) for table in TABLES}
        for table, owner in TABLE_MODES.items():
            if table in document and mode != owner:
                raise self.error((table,), f"[{table}] applies to mode = \"{owner}\" only; this file has mode = \"{mode}\"")
        settings = Settings(**values, name=name, source=self.path, origins=self.origins)
        settings.dir = values.get("dir", STATE_ROOT / name)
        settings.app = AppLimits(**tables["app"])
        for table in ("server", "container"):
            for field_name, value in tables[table].items():
                setattr(settings, field_name, value)
        keys = {field_name: key for key, (_, field_name) in TOP.items()}
        keys |= {field_name: f"{table}.{key}" for table in TABLE_MODES if TABLE_MODES[table] == mode
                 for key, (_, field_name) in TABLES[table].items()}
        try:
            check(settings, keys.get)
        except Missing as exc:
            table = next(table for table in TABLE_MODES if exc.setting in (f for _, f in TABLES[table].values()))
            key, what, example = NEEDED[exc.setting]
            if table in document:
                raise self.error((table,), f"missing key '{key}' in [{table}]: {what}, such as {example}") from None
            raise self.error(("mode",), f"mode = \"{mode}\" needs a [{table}] table with {what}: {example}") from None
        except SettingError as exc:
            raise UsageError(self.origins[exc.setting].place(str(exc))) from None
        return settings

    def table(self, document: dict[str, Any], table: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in document.get(table, {}).items():
            if key not in TABLES[table]:
                raise self.unknown((table,), key, value)
            converter, field_name = TABLES[table][key]
            setting = f"app.{field_name}" if table == "app" else field_name
            out[field_name] = self.convert((table, key), converter, value, setting)
        return out

    def unknown(self, table: Key, key: str, value: Any) -> UsageError:
        """Unknown key or table, with the closest known one, or the table it belongs in."""
        here = TOP.keys() | TABLES.keys() if not table else TABLES[table[0]].keys()
        full = ".".join(table + (key,))
        what = f"table [{full}]" if isinstance(value, dict) else f"key {key!r}"
        where = f" in [{'.'.join(table)}]" if table else ""
        message = f"unknown {what}{where}"
        close = _close(key, here)
        if close:
            shown = f"[{close}]" if close in TABLES and not table else repr(close)
            return self.error(table + (key,), f"{message}; did you mean {shown}?")
        # the right key in the wrong place: the keys after a [table] header belong to that table
        current = table[0] if table else ""
        elsewhere = {"": TOP.keys(), **{name: keys.keys() for name, keys in TABLES.items()}}
        for other, keys in elsewhere.items():
            close = _close(key, keys) if other != current else None
            if close:
                place = ("a top-level key: it goes above the first [table] header" if other == ""
                         else f"a key of [{other}]: it goes after the [{other}] header")
                hint = f"{close!r} is {place}" if close == key else f"did you mean {close!r}? ({close!r} is {place})"
                return self.error(table + (key,), f"{message}; {hint}")
        return self.error(table + (key,), f"{message}; known keys{where}: {', '.join(sorted(here))}")


def _close(key: str, known) -> str | None:
    normal = key.lower().replace("-", "_")
    if normal in known:
        return normal
    matches = difflib.get_close_matches(normal, sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


# -- line numbers -------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def line_of(lines: dict[Key, int], key: Key) -> int:
    """The line of ``key``, else of the nearest enclosing key or table, else 1."""
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return 1


def key_lines(text: str) -> dict[Key, int]:
    """The 1-based line of every table header and ``key = value`` in valid TOML, by full key path.

    Keys inside inline tables are not listed (their enclosing key's line stands for them).
    """
    lines: dict[Key, int] = {}
    table: Key = ()
    i, n, line = 0, len(text), 1
    while i < n:
        char = text[i]
        if char == "\n":
            line, i = line + 1, i + 1
        elif char in " \t\r":
            i += 1
        elif char == "#":
            i = _line_end(text, i)
        elif char == "[":
            start = i + (2 if text.startswith("[[", i) else 1)
            parts, i = _read_key(text, start)
            table = tuple(parts)
            _record(lines, table, 1, line)
            i = _line_end(text, i)
        else:
            parts, i = _read_key(text, i)
            _record(lines, table + tuple(parts), len(table) + 1, line)
            i, line = _skip_value(text, i + 1, line)
    return lines


def _record(lines: dict[Key, int], key: Key, first: int, line: int) -> None:
    for length in range(first, len(key) + 1):
        lines.setdefault(key[:length], line)


def _find(text: str, sub: str, i: int) -> int:
    found = text.find(sub, i)
    return len(text) if found < 0 else found


def _line_end(text: str, i: int) -> int:
    return _find(text, "\n", i)


def _read_key(text: str, i: int) -> tuple[list[str], int]:
    """A dotted key starting at ``i``; returns its parts and the index of the following ``=`` or ``]``."""
    parts = []
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            end = _basic_string_end(text, i + 1)
            parts.append(tomllib.loads(f"k = {text[i:end]}")["k"])
            i = end
        elif i < n and text[i] == "'":
            end = _find(text, "'", i + 1) + 1
            parts.append(text[i + 1:end - 1])
            i = end
        else:
            match = _BARE_KEY.match(text, i)
            if not match:
                break
            parts.append(match[0])
            i = match.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == ".":
            i += 1
            continue
        break
    return parts, i


def _basic_string_end(text: str, i: int) -> int:
    """Index just past the closing quote of a one-line basic string whose content starts at ``i``."""
    while i < len(text) and text[i] != '"':
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _skip_value(text: str, i: int, line: int) -> tuple[int, int]:
    """Skip a value (strings, arrays and inline tables may span lines) and the rest of its line."""
    n, depth = len(text), 0
    while i < n:
        char = text[i]
        if text.startswith('"""', i) or text.startswith("'''", i):
            quote, j = text[i] * 3, i + 3
            while j < n and not text.startswith(quote, j):
                j += 2 if quote == '"""' and text[j] == "\\" else 1
            j += 3
            for _ in range(2):  # up to two quotes of the content may sit right before the delimiter
                if j < n and text[j] == quote[0]:
                    j += 1
            line += text.count("\n", i, j)
            i = j
        elif char == '"':
            i = _basic_string_end(text, i + 1)
        elif char == "'":
            i = _find(text, "'", i + 1) + 1
        elif char == "#":
            i = _line_end(text, i)
        elif char == "\n":
            line, i = line + 1, i + 1
            if depth == 0:
                break
        else:
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
            i += 1
    return i, line


# -- credentials --------------------------------------------------------------------------


def load_credentials(directory: str | os.PathLike | None = None,
                     environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Export systemd credentials named like environment variables; returns the names set (never the values).

    Each file in ``$CREDENTIALS_DIRECTORY`` (systemd's ``LoadCredential=`` /
    ``LoadCredentialEncrypted=`` / ``SetCredential=``) whose name is an upper-case
    environment variable name (``GITHUB_TOKEN``, ``SLACK_TOKEN``, ``MAIL_PASSWORD``...)
    becomes that variable, its content stripped of one trailing newline. Other
    files (``tls.key``) are left alone. A credential overrides a variable of the same
    name from the environment (``EnvironmentFile=``): it is the more deliberate mechanism.
    """
    environ = os.environ if environ is None else environ
    directory = directory if directory is not None else environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return []
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        raise UsageError(f"CREDENTIALS_DIRECTORY={directory}: cannot read it: {exc.strerror}") from None
    names = []
    for entry in entries:
        if not CREDENTIAL_NAME.fullmatch(entry.name) or entry.is_dir():
            continue
        try:
            data = Path(entry.path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read credential {entry.name}: {exc.strerror}") from None
        data = data.removesuffix(b"\n")
        if b"\0" in data:
            raise UsageError(f"credential {entry.name} contains a NUL byte and cannot be an environment variable")
        environ[entry.name] = os.fsdecode(data)
        names.append(entry.name)
    return names


# Variables the backends read secrets from; the app does not get them (dewy's own business).
BACKEND_SECRETS = frozenset({
    "GITHUB_TOKEN", "GH_TOKEN", "SLACK_TOKEN", "MAIL_USERNAME", "MAIL_PASSWORD", "REDIS_PASSWORD",
    "CONSUL_HTTP_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "DEWY_REGISTRY_USERNAME", "DEWY_REGISTRY_PASSWORD", "REGISTRY_AUTH_FILE", "DEWY_ADMIN_TOKEN",
    "DEWY_WEBHOOK_SECRET", "GITHUB_APP_PRIVATE_KEY", "GITHUB_APP_PRIVATE_KEY_PATH",
})


def secret_variables(environ: MutableMapping[str, str] | None = None) -> frozenset[str]:
    """Environment variables that hold dewy's secrets: the backends' and every systemd credential's name."""
    environ = os.environ if environ is None else environ
    directory = environ.get("CREDENTIALS_DIRECTORY")
    try:
        credentials = {entry.name for entry in os.scandir(directory) if CREDENTIAL_NAME.fullmatch(entry.name)} if directory else set()
    except OSError:
        credentials = set()
    return BACKEND_SECRETS | credentials

