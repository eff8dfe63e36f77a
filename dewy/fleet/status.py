"""``dewy fleet status NAME``: every host of the app, its version and state, and the rollout, from the shared cache.

Readable from any host that has the app's config file (``/etc/dewy/NAME.toml``, or
``--config FILE``): it names the cache and the registry URL and slot that identify the fleet.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dewy.errors import UsageError
from dewy.fleet.plan import Fleet, Host, deploying, host_states
from dewy.fleet.stores import app_key, open_store


def _when(seconds: float | None) -> str | None:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds") if seconds else None


def describe(settings, fleet: Fleet, hosts: dict[str, Host], now: float) -> dict[str, Any]:
    """The fleet as ``--json`` prints it."""
    states = host_states(settings.rollout, fleet, hosts, now)
    rollout = fleet.rollout
    return {
        "app": settings.app_name,
        "policy": {"canary": settings.rollout.canary, "wave": settings.rollout.wave_hosts or f"{settings.rollout.wave:.0%}",
                   "max_parallel": settings.rollout.max_parallel, "bake": settings.rollout.bake,
                   "on_failure": settings.rollout.on_failure},
        "rollout": rollout and {
            "version": rollout.tag, "previous": rollout.previous and rollout.previous["tag"],
            "started": _when(rollout.started), "done": _when(rollout.done), "waves": [len(w.hosts) for w in rollout.waves],
            "deploying": deploying(fleet, hosts, now),
        },
        "paused": fleet.paused and {"host": fleet.paused.host, "uid": fleet.paused.uid, "at": _when(fleet.paused.at)},
        "quarantine": {tag: {"host": q.host, "reason": q.reason, "at": _when(q.at), "rollback": q.rollback,
                             "by_uid": q.operator}
                       for tag, q in fleet.quarantine.items()},
        "hosts": [{"host": name, "version": host.version, "state": states[name], "last_heartbeat": _when(host.seen),
                   "seconds_ago": round(now - host.seen, 1), "error": host.error,
                   "held": host.held}
                  for name, host in sorted(hosts.items())],
    }


def render(info: dict[str, Any]) -> str:
    lines = [f"fleet of {info['app']}: {len(info['hosts'])} hosts"]
    rollout = info["rollout"]
    if rollout:
        progress = "done " + rollout["done"] if rollout["done"] else f"step {len(rollout['waves'])}, deploying: " \
            f"{', '.join(rollout['deploying']) or 'none'}"
        lines.append(f"rollout: {rollout['previous'] or '-'} -> {rollout['version']} (started {rollout['started']}; {progress})")
    paused = info["paused"]
    if paused:
        lines.append(f"paused: since {paused['at']} by uid {paused['uid']} on {paused['host']}: no host is admitted "
                     f"to a new release (dewy resume NAME --fleet)")
    for tag, q in info["quarantine"].items():
        lines.append(f"quarantined: {tag}: {q['reason']} at {q['at']}" if q["by_uid"] is not None
                     else f"quarantined: {tag}: failed on {q['host']} at {q['at']}: {q['reason']}")
    rows = [("HOST", "VERSION", "STATE", "LAST HEARTBEAT")]
    rows += [(h["host"], h["version"] or "-", h["state"], f"{h['seconds_ago']:g}s ago") for h in info["hosts"]]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3] for row in rows]
    return "\n".join(lines)


async def _read(settings) -> dict[str, Any]:
    from dewy.cache import CACHES

    with settings.given("cache"):
        cache = CACHES.load(CACHES.url(settings.cache))
    try:
        fleet, hosts = await open_store(cache, app_key(settings.registry, settings.slot)).read()
    finally:
        await cache.aclose()
    return describe(settings, fleet, hosts, time.time())


def main(name: str | None, config: Path | None, as_json: bool) -> int:
    from dewy.config import load
    from dewy.status import CONFIG_DIR

    path = config or CONFIG_DIR / f"{name}.toml"
    if not path.exists():
        raise UsageError(f"no dewy instance {name!r}: {path} does not exist" if name else f"{path} does not exist")
    settings = load(path)
    if settings.rollout is None:
        raise UsageError(f"{path}: no rollout: add a [rollout] table (canary, wave, max_parallel, bake) to make a fleet")
    info = asyncio.run(_read(settings))
    print(json.dumps(info, indent=2) if as_json else render(info))
    return 0
