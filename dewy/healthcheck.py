"""The one HTTP exchange of dewy's health checks (an app generation's, a replica's): a bare ``GET`` on a
connection the caller opened, so that it can first decide who answers it, read up to the status line."""

from __future__ import annotations

import asyncio


async def status_of(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int, path: str) -> int:
    """Send ``GET path`` and return the answer's status code; ValueError when the answer is not HTTP."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: dewy-health-check\r\n"
                 "Connection: close\r\n\r\n".encode())
    line = await reader.readline()
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP answer: {line[:80]!r}" if line else "the connection closed without an answer")
    return int(parts[1])
