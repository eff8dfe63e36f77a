"""--webhook: a real dewy server deploying on a signed push with polling at 1 h, and the endpoint's bounds."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dewy.httpd import Limits
from dewy.webhook import Webhook
from tests.harness import Dewy, free_port, get
from tests.test_e2e_server import release, start

SECRET = "whsec-test-5ecret"


def post(port: int, path: str, body: bytes, headers: dict[str, str], timeout: float = 5) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


def release_event(tag: str) -> bytes:
    return json.dumps({"action": "published", "release": {"tag_name": tag}}).encode()


@pytest.fixture
def hooked(tmp_path):
    """dewy server serving v1.0.0, polling once an hour, with --webhook on a free port."""
    release(tmp_path / "registry", "v1.0.0")
    port, hook = free_port(), free_port()
    dewy = start(tmp_path, port, "-i", "3600", "--webhook", f"127.0.0.1:{hook}", env={"DEWY_WEBHOOK_SECRET": SECRET})
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        dewy.wait_for("webhook", already=True)
        yield dewy, port, hook
    finally:
        dewy.kill()


def test_a_signed_release_event_deploys_at_once_and_bad_signatures_are_refused_without_a_poll(tmp_path, hooked) -> None:
    dewy, port, hook = hooked
    release(tmp_path / "registry", "v1.1.0")
    body = release_event("v1.1.0")
    event = {"X-GitHub-Event": "release", "Content-Type": "application/json"}
    assert post(hook, "/github", body, {**event, **signed(body, "wrong-secret")})[0] == 401
    assert post(hook, "/github", body, event)[0] == 401
    assert post(hook, "/deploy", b"", {"Authorization": "Bearer wrong-secret"})[0] == 401
    with socket.create_connection(("127.0.0.1", hook), timeout=5) as raw:  # 25 MB announced, none of it sent
        raw.sendall(b"POST /github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: release\r\nContent-Length: 26214400\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 413 ")
    for _ in range(4):
        assert dewy.wait_for("webhook-refused")["level"] == "warning"
    assert post(hook, "/github", b"{}", {"X-GitHub-Event": "ping", **signed(b"{}")})[0] == 200
    began = time.monotonic()
    assert post(hook, "/github", body, {**event, **signed(body)}) == (202, {"ok": "polling"})
    dewy.wait_for("deployed", version="v1.1.0", timeout=15)
    assert time.monotonic() - began < 10, "deployed on the push, not at the 1 h poll"
    assert get(port)[1] == "v1.1.0"
    events = [r["event"] for r in dewy.seen]
    pushed = events.index("webhook-poll")
    assert "poll" not in events[events.index("deployed"):pushed], "a refused request caused no poll"
    assert next(i for i, r in enumerate(dewy.seen) if r["event"] == "deploying" and r["version"] == "v1.1.0") > pushed
    # the generic endpoint, with the Bearer form
    release(tmp_path / "registry", "v1.2.0")
    assert post(hook, "/deploy", b"", {"Authorization": f"Bearer {SECRET}"})[0] == 202
    dewy.wait_for("deployed", version="v1.2.0", timeout=15)
    assert not any(SECRET in json.dumps(r) for r in dewy.seen), "the secret is never logged"


def test_a_flood_of_50_events_gives_a_bounded_number_of_polls(hooked) -> None:
    dewy, _, hook = hooked
    mark = len(dewy.seen)
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(hook, "/deploy", b"", {"Authorization": f"Bearer {SECRET}"})[0], range(50)))
    flood = time.monotonic() - began
    assert answers == [202] * 50
    polls = 0
    with pytest.raises(AssertionError):  # counting until nothing more comes for 2.5 coalescing intervals
        while True:
            dewy.wait_for("poll", timeout=2.5)
            polls += 1
    assert 1 <= polls <= int(flood) + 2, f"{polls} polls for 50 events in {flood:.1f}s"
    assert sum(1 for r in dewy.seen[mark:] if r["event"] == "webhook-poll" and r["level"] == "info") == polls


def test_webhook_without_a_secret_is_a_usage_error(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DEWY_WEBHOOK_SECRET"}
    done = subprocess.run([sys.executable, "-m", "dewy", "assets", "-r", (tmp_path / "r").as_uri(), "-d", str(tmp_path / "d"),
                           "--webhook", "0.0.0.0:9000"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "DEWY_WEBHOOK_SECRET" in done.stderr


# -- the endpoint's bounds, on an in-process server with short deadlines ----------------------------


async def served(limits: Limits) -> tuple[Webhook, asyncio.Event, asyncio.Task]:
    hook = Webhook("127.0.0.1", free_port(), SECRET, limits)
    poll_now = asyncio.Event()
    task = asyncio.ensure_future(hook.run(poll_now))
    while hook.server.server is None:
        await asyncio.sleep(0)
    return hook, poll_now, task


async def exchange(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data`` and read until the server closes; the answer and how long that took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer, time.monotonic() - began


def test_an_oversized_body_is_refused_with_413_before_it_is_sent() -> None:
    async def main() -> None:
        hook, poll_now, task = await served(Limits(max_body=1 << 20))
        head = (f"POST /github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: release\r\nContent-Length: {25 << 20}\r\n\r\n").encode()
        answer, _ = await exchange(hook.server.port, head)  # not one byte of the 25 MB body follows
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert not poll_now.is_set()
        task.cancel()

    asyncio.run(main())


def test_slow_clients_are_cut_at_the_head_and_at_the_body_deadline() -> None:
    async def main() -> None:
        hook, poll_now, task = await served(Limits(max_body=1 << 20, head_timeout=0.5, body_timeout=0.5))
        answer, took = await exchange(hook.server.port, b"POST /deploy HTTP/1.1\r\nAuthor")
        assert answer.startswith(b"HTTP/1.1 408 ") and took < 3
        answer, took = await exchange(hook.server.port, b"POST /deploy HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"a\"")
        assert answer.startswith(b"HTTP/1.1 408 ") and took < 3
        assert not poll_now.is_set()
        task.cancel()

    asyncio.run(main())


def test_connections_past_the_limit_are_answered_503_at_once() -> None:
    async def main() -> None:
        hook, _, task = await served(Limits(max_body=1 << 20, head_timeout=5, max_connections=4))
        idle = [await asyncio.open_connection("127.0.0.1", hook.server.port) for _ in range(4)]
        async def accepted() -> None:  # the server has accepted them: they hold every slot
            while not hook.server.full:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(accepted(), 10)
        answer, took = await exchange(hook.server.port, b"")
        assert answer.startswith(b"HTTP/1.1 503 ") and took < 2
        for _, writer in idle:
            writer.close()
        task.cancel()

    asyncio.run(main())



def test_an_address_in_use_is_one_error_line_and_polling_goes_on(tmp_path) -> None:
    release(tmp_path / "registry", "v1.0.0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dewy = Dewy(["assets", "-r", (tmp_path / "registry").as_uri(), "-d", str(tmp_path / "site"), "-i", "0.2",
                     "--webhook", f"127.0.0.1:{port}"], cwd=tmp_path, env={"DEWY_WEBHOOK_SECRET": SECRET})
        try:
            failed = dewy.wait_for("webhook-failed")
            assert failed["level"] == "error" and "Address already in use" in failed["msg"] and "polling goes on" in failed["msg"]
            dewy.wait_for("deployed", version="v1.0.0", already=True)
            dewy.wait_for("poll")
            dewy.wait_for("poll")
            assert sum(1 for r in dewy.seen if r["event"] == "webhook-failed") == 1
        finally:
            dewy.kill()
