"""Filters of the dewy role: the instances checked, a dict as /etc/dewy/NAME.toml, secrets as NAME.env.

Rendering here rather than in Jinja: TOML and systemd's EnvironmentFile= each have their own
quoting, and a value with a quote, a backslash, a ``$`` or a newline must come out verbatim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

INSTANCE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_SPECIAL = re.compile(r'([\\"$`])')


def dewy_instance_settings(instances: Sequence) -> list[dict[str, Any]]:
    """Each instance's name, state (default started) and config (default {}), without its env.

    The role's loops go over these: Ansible shows a loop's items with -v, and secrets must not
    be among them. Names are checked here (they become file and unit names), once each.
    """
    if isinstance(instances, (str, Mapping)) or not isinstance(instances, Sequence):
        raise AnsibleFilterError(f"dewy_instances: expected a list of instances, not a {type(instances).__name__}")
    settings: list[dict[str, Any]] = []
    for index, instance in enumerate(instances):
        name = instance.get("name") if isinstance(instance, Mapping) else None
        if not isinstance(name, str) or not INSTANCE_NAME.fullmatch(name):
            raise AnsibleFilterError(f"dewy_instances[{index}]: the name {name!r} must be letters, digits, \"_\", \"-\""
                                     " and \".\" (it names /etc/dewy/NAME.toml and dewy@NAME)")
        if any(known["name"] == name for known in settings):
            raise AnsibleFilterError(f"dewy_instances[{index}]: the name {name!r} is used twice")
        settings.append({"name": name, "state": instance.get("state", "started"), "config": instance.get("config", {})})
    return settings


def _string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but TOML also wants DEL escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise AnsibleFilterError(f"dewy_toml: {where}: the key {key!r} is not a string")
    return key if BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Any, where: str) -> str:
    """``value`` in TOML; ``where`` (such as server.ports[1]) names it in errors."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))         # 1.5, 1e+20, inf, nan: all TOML
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):        # an inline table (a dict inside a list)
        return "{" + ", ".join(f"{_key(k, where)} = {_value(v, f'{where}.{k}')}"
                               for k, v in value.items() if v is not None) + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(item, f"{where}[{index}]") for index, item in enumerate(value)) + "]"
    raise AnsibleFilterError(f"dewy_toml: {where}: a {type(value).__name__} has no TOML form"
                             " (use a string, number, boolean, list or dict)")


def _table(table: Mapping, path: tuple[str, ...], out: list[str]) -> None:
    """The keys of ``table`` under a [path] header, then its subtables."""
    keys = [(k, v) for k, v in table.items() if v is not None and not isinstance(v, Mapping)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
    where = ".".join(map(str, path)) or "(top level)"
    if path and (keys or not tables):     # a table with only subtables needs no header of its own
        if out:
            out.append("")
        out.append("[" + ".".join(_key(part, where) for part in path) + "]")
    for key, value in keys:
        out.append(f"{_key(key, where)} = {_value(value, '.'.join(map(str, (*path, key))))}")
    for key, value in tables:
        _table(value, (*path, key), out)


def dewy_toml(document: Mapping) -> str:
    """``document`` as a TOML file: scalars and lists as keys, dicts as [tables]; None drops a key."""
    if not isinstance(document, Mapping):
        raise AnsibleFilterError(f"dewy_toml: expected a dict of settings, not a {type(document).__name__}")
    out: list[str] = []
    _table(document, (), out)
    return "\n".join(out) + "\n"


def dewy_env(variables: Mapping) -> str:
    """``NAME="value"`` lines that systemd's EnvironmentFile= reads back verbatim; None drops a variable.

    Inside double quotes systemd keeps everything (newlines too) except that a backslash before
    ``\\ " $ ``` is dropped, so exactly those four are escaped. Errors name the variable, never its value.
    """
    if not isinstance(variables, Mapping):
        raise AnsibleFilterError(f"dewy_env: expected a dict of NAME: value, not a {type(variables).__name__}")
    lines = []
    for name, value in variables.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise AnsibleFilterError(f"dewy_env: {name!r} is not an environment variable name")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise AnsibleFilterError(f"dewy_env: the value of {name} must be a string, not a {type(value).__name__}")
        if "\0" in str(value):
            raise AnsibleFilterError(f"dewy_env: the value of {name} contains a NUL byte, which systemd refuses")
        escaped = ENV_SPECIAL.sub(r"\\\1", str(value))
        lines.append(f'{name}="{escaped}"')
    return "".join(line + "\n" for line in lines)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"dewy_instance_settings": dewy_instance_settings, "dewy_toml": dewy_toml, "dewy_env": dewy_env}
