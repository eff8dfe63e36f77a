"""``dewy container list``: the replicas of a running ``dewy container``, asked of its admin API as upstream does."""

from __future__ import annotations

import http.client
import json
import os

from dewy.errors import DewyError
from dewy.telemetry.admin import PORT_ATTEMPTS, TOKEN_VARIABLE

TIMEOUT = 2.0


def fetch(path: str, first: int, host: str = "127.0.0.1") -> tuple[int, dict]:
    """GET ``path`` from the first of ten admin ports that answers; (port, JSON body)."""
    headers = {"Authorization": f"Bearer {os.environ[TOKEN_VARIABLE]}"} if os.environ.get(TOKEN_VARIABLE) else {}
    for port in range(first, min(first + PORT_ATTEMPTS, 65536)):
        connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except OSError:
            continue
        finally:
            connection.close()
        if response.status != 200:
            raise DewyError(f"the admin API on port {port} answered HTTP {response.status}: {body[:200].decode(errors='replace').strip()}")
        return port, json.loads(body)
    raise DewyError(f"no running dewy found: nothing answers on {host} ports {first}-{port} (use --admin-port)")


def container_list(first: int, as_json: bool) -> int:
    """Print the replicas (a table, or JSON) as the admin API from port ``first`` on reports them."""
    port, body = fetch("/api/containers", first)
    replicas = sorted(body.get("containers") or [], key=lambda r: r.get("name", ""))
    if as_json:
        print(json.dumps(replicas, indent=2))
    elif not replicas:
        print("No containers found.")
    else:
        rows = [("NAME", "VERSION", "ADDRESS", "STATUS", "HEALTH")] + [
            (r.get("name", ""), r.get("version") or "-", r.get("ip") or "-", r.get("status") or "-",
             "healthy" if r.get("healthy") else f"unhealthy: {r.get('reason')}") for r in replicas]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(row[i].ljust(widths[i]) for i in range(4)) + "  " + row[4])
    if port != first:
        print(f"\n(Connected to admin API on port {port})")
    return 0
