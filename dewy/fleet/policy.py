"""The rollout policy: ``canary=1,wave=25%,max-parallel=5,bake=10m,on-failure=halt``.

The same keys in the ``--rollout`` flag and in a config file's ``[rollout]`` table (where
``max_parallel`` and ``on_failure`` may be written with an underscore, as TOML keys usually
are); ``bake-check`` (a shell command, commas and all) is its own flag, ``--bake-check``. Each problem is a ValueError whose reason does not name the setting (the front end adds
``--rollout`` or ``FILE:LINE: rollout.KEY``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dewy.quantities import count, number, parse_duration

ON_FAILURE = ("halt", "rollback")
KEYS = ("canary", "wave", "max-parallel", "bake", "on-failure", "ttl", "bake-check")
EXAMPLE = "canary=1,wave=25%,max-parallel=5,bake=10m"


@dataclass(frozen=True)
class RolloutPolicy:
    """How a new release spreads over the live hosts of one app."""

    canary: int = 1  # hosts that deploy first, alone
    wave: float = 0.25  # each later wave: a fraction of the live fleet (wave_hosts None) ...
    wave_hosts: int | None = None  # ... or a number of hosts (wave=5)
    max_parallel: int | None = None  # hosts deploying at the same moment (None: a whole wave)
    bake: float = 600.0  # a step must serve healthily this long before the next starts
    on_failure: str = "halt"  # a quarantined release: halt (hosts on it stay), rollback (they go back)
    ttl: float | None = None  # a host's heartbeat lifetime (None: three poll intervals)
    bake_check: str | None = None  # --bake-check CMD: run while baking; a failure quarantines the release

    def wave_size(self, live: int) -> int:
        """Hosts in a wave after the canary, for a fleet of ``live`` hosts: at least one."""
        if self.wave_hosts is not None:
            return self.wave_hosts
        return max(1, math.ceil(self.wave * live))


def parse_rollout(spec: str) -> RolloutPolicy:
    """``--rollout KEY=VALUE,...`` to a policy."""
    values: dict[str, str] = {}
    for item in spec.split(","):
        key, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise ValueError(f"{item.strip()!r} is not KEY=VALUE (example: {EXAMPLE})")
        values[key.strip()] = value.strip()
    return rollout_from(values)


def rollout_from(values: dict[str, Any]) -> RolloutPolicy:
    """A policy from its keys (a flag's or a TOML table's); a bad key's reason is ``KEY: ...``."""
    fields: dict[str, Any] = {}
    for raw, value in values.items():
        key = raw.replace("_", "-").lower()
        if key not in KEYS:
            raise ValueError(f"unknown key {raw!r} (known: {', '.join(KEYS)})")
        try:
            fields.update(_convert(key, value))
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return RolloutPolicy(**fields)


def _convert(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a string or a number, not {type(value).__name__}")
    text = str(value).strip()
    if key == "canary":
        return {"canary": _whole(text)}
    if key == "max-parallel":
        return {"max_parallel": _whole(text)}
    if key == "wave":
        if text.endswith("%"):
            percent = number(text[:-1], maximum=100, most="100%", what="a percentage such as 25%", shown=text)
            return {"wave": percent / 100, "wave_hosts": None}
        return {"wave_hosts": _whole(text)}
    if key == "bake-check":
        if not text:
            raise ValueError("must not be empty: a shell command, such as a query against your monitoring")
        return {"bake_check": text}
    if key == "on-failure":
        if text.lower() not in ON_FAILURE:
            raise ValueError(f"{text!r} is not one of {', '.join(ON_FAILURE)}")
        return {"on_failure": text.lower()}
    zero = key == "bake"  # bake=0: each step starts as soon as the previous one serves
    return {key: parse_duration(text, zero=zero)}


def _whole(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return count(int(text))
