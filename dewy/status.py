"""``dewy status [NAME]`` and ``dewy history [NAME]``: what runs on this host, and what happened.

Status reads the instance's state file (what is deployed, the serving app generation and
its unit, or in container mode the replicas with their versions and health as the daemon
last checked them (every poll; the last check's time is shown), quarantined versions, a
newer version the deploy window or the minimum age holds back, the last check and error).
History reads the journal of ``dewy@NAME.service`` (deploys, rollbacks, failures), or,
where there is no journal, the deploys recorded in the state file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from dewy.errors import UsageError
from dewy.progress import ProgressFile
from dewy.state import AppGeneration, ReplicaSet, State

CONFIG_DIR = Path("/etc/dewy")


def instance_dir(name: str) -> Path:
    """The working directory of dewy@NAME, as its config file says."""
    from dewy.config import load

    config = CONFIG_DIR / f"{name}.toml"
    if not config.exists():
        raise UsageError(f"no dewy instance {name!r}: {config} does not exist")
    return load(config).dir


def state_of(name: str | None, directory: Path | None) -> tuple[str, State]:
    """The instance's name and state: NAME's config file tells its directory, else ``directory`` (or the cwd)."""
    if name:
        directory = instance_dir(name)
    directory = (directory or Path.cwd()).absolute()
    path = directory / ".dewy" / "state.json"
    if not path.exists():
        raise UsageError(f"nothing deployed by dewy in {directory} (no {path}); use -d DIR or give the instance NAME")
    return name or directory.name, State.load(path)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(name: str | None, directory: Path | None) -> dict:
    instance, state = state_of(name, directory)
    app = state.app.to_json() if state.app else None
    if isinstance(state.app, AppGeneration):
        app["running"] = alive(state.app.pid)
    working = ProgressFile(state.path.with_name("progress.json")).read()  # left behind by a killed dewy: ignored
    return {
        "instance": instance,
        "version": state.current.tag if state.current else None,
        "deployed_at": state.current.at if state.current else None,
        "release": state.current.release if state.current else None,
        "signed_by": state.current.signed_by if state.current else None,
        "app": app,
        "quarantined": state.quarantine,
        "pinned": asdict(state.pin) if state.pin else None,
        "paused": asdict(state.paused) if state.paused else None,
        "fleet_paused": asdict(state.fleet_paused) if state.fleet_paused else None,
        "last_check": state.last_check,
        "last_error": state.last_error,
        "in_progress": working["line"] if working and alive(working.get("pid")) else None,
        "waiting": asdict(state.waiting) if state.waiting else None,
    }


def containers(directory: Path) -> list[dict]:
    """Container mode: the replicas as the daemon last checked them (GET /api/containers, ``dewy container list``)."""
    path = directory / ".dewy" / "state.json"
    app = State.load(path).app if path.exists() else None
    if not isinstance(app, ReplicaSet):
        return []
    return [{**asdict(r), "image": app.image} for r in app.replicas]


def history(name: str | None, directory: Path | None, limit: int | None) -> list[dict]:
    _, state = state_of(name, directory)
    if name:
        from dewy.systemd.journal import history as journal_history

        try:
            return journal_history(f"dewy@{name}.service", limit)
        except ImportError:  # python-systemd not installed: no journal to read
            pass
    entries = [{"time": d.at, "event": "deployed", "version": d.tag, "previous_version": "", "message": f"deployed {d.tag}"}
               for d in state.history]
    return entries[-limit:] if limit else entries


def render_status(info: dict) -> str:
    app = info["app"]
    if app and app.get("mode") == "container":
        return _render_container(info, app)
    rows = [
        ("instance", info["instance"]),
        ("version", info["version"] or "nothing deployed"),
        ("deployed at", info["deployed_at"] or "-"),
        ("release", info["release"] or "-"),
        ("signed by", info["signed_by"] or "not verified"),
        ("app", f"pid {app['pid']} ({'running' if app['running'] else 'not running'}), generation {app['generation']}"
                + (f", unit {app['unit']}" if app.get("unit") else "") if app else "-"),
        ("quarantined", ", ".join(info["quarantined"]) or "-"),
        ("last check", info["last_check"] or "-"),
        ("last error", info["last_error"] or "-"),
    ]
    if info.get("in_progress"):
        rows.insert(1, ("in progress", info["in_progress"]))
    if info.get("waiting"):
        rows.insert(2, ("waiting", info["waiting"]["reason"]))
    rows[-3:-3] = _holds(info)
    return "\n".join(f"{key + ':':<13} {value}" for key, value in rows)


def _holds(info: dict) -> list[tuple[str, str]]:
    """The rows of a pin and a pause (none when nothing holds)."""
    rows = []
    pin, paused = info.get("pinned"), info.get("paused")
    if pin:
        until = f"until a release after {pin['until']} (rolled back) or dewy unpin" if pin.get("until") else "until dewy unpin"
        rows.append(("pinned", f"{pin['tag']} {until} (uid {pin['uid']}, {pin['at'][:19]} UTC)"))
    if paused:
        rows.append(("paused", f"since {paused['at'][:19]} UTC (uid {paused['uid']}), until dewy resume"))
    fleet = info.get("fleet_paused")
    if fleet:
        rows.append(("fleet paused", f"since {fleet['at'][:19]} UTC (uid {fleet['uid']} on {fleet['host']}), "
                                     "until dewy resume NAME --fleet"))
    return rows


def _render_container(info: dict, app: dict) -> str:
    replicas = app.get("replicas") or []
    where = f"{app.get('runtime', '?')} network {app.get('network', '?')}, alias {', '.join(app.get('aliases') or []) or '-'}"
    if app.get("ports"):
        where += f", host port {', '.join(app['ports'])}"
    rows = [
        ("instance", info["instance"]),
        ("version", info["version"] or "nothing deployed"),
        ("deployed at", info["deployed_at"] or "-"),
        ("image", app.get("image") or info["release"] or "-"),
        ("signed by", info["signed_by"] or "not verified"),
        ("replicas", f"{len(replicas)} ({sum(1 for r in replicas if r.get('healthy'))} healthy) on {where}"),
    ]
    if info.get("waiting"):
        rows.insert(2, ("waiting", info["waiting"]["reason"]))
    lines = [f"{key + ':':<13} {value}" for key, value in rows]
    for replica in replicas:
        health = "healthy" if replica.get("healthy") else f"unhealthy: {replica.get('reason')}"
        lines.append(f"  {replica['name']}  {replica.get('version', '?')}  {replica.get('ip') or '-'}  "
                     f"{replica.get('status', '?')}  {health}")
    draining = app.get("draining") or []
    if draining:
        lines.append(f"{'draining:':<13} " + ", ".join(f"{d['name']} ({d.get('version', '?')}) until {d.get('until', '')[11:19]} UTC"
                                                   for d in draining))
    if app.get("rollout"):
        lines.append(f"{'rolling out:':<13} {app['rollout'].get('version')} since {app['rollout'].get('started_at', '')[11:19]} UTC")
    lines += [f"{key + ':':<13} {value}" for key, value in (
        *_holds(info),
        ("quarantined", ", ".join(info["quarantined"]) or "-"),
        ("last check", info["last_check"] or "-"),
        ("last error", info["last_error"] or "-"),
    )]
    return "\n".join(lines)


def render_history(entries: list[dict]) -> str:
    if not entries:
        return "no deploys recorded"
    header = ("TIME", "EVENT", "VERSION", "PREVIOUS", "MESSAGE")
    rows = [header] + [(e["time"], e["event"], e["version"], e["previous_version"], e["message"]) for e in entries]
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    return "\n".join("  ".join(str(r[i]).ljust(widths[i]) for i in range(4)) + "  " + str(r[4]) for r in rows)


def main(command: str, name: str | None, directory: Path | None, as_json: bool, limit: int | None) -> int:
    if command == "status":
        info = status(name, directory)
        print(json.dumps(info, indent=2) if as_json else render_status(info))
    else:
        entries = history(name, directory, limit)
        print(json.dumps(entries, indent=2) if as_json else render_history(entries))
    return 0
