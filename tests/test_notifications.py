"""Notifications: the error limit (the 3rd consecutive error says further ones are silenced), and notifiers that never block or break a deploy."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from dewy.notifiers import ERROR_LIMIT, Message, Notifications
from tests.conftest import publish
from tests.harness import Dewy, free_port
from tests.slack_server import SlackServer

TOKEN = "xoxb-notify-test"
NOTE = "3 errors in a row: further errors are suppressed until a cycle succeeds"


class Recorder:
    """A notifier that keeps what it is sent; ``fail`` makes it raise, ``gate`` makes it wait."""

    def __init__(self, fail: BaseException | None = None, gate: asyncio.Event | None = None) -> None:
        self.sent: list[Message] = []
        self.fail = fail
        self.gate = gate
        self.closed = False

    async def send(self, message: Message) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append(message)

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def events():
    """dewy's log records (event, message) while the test runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("dewy")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield lambda: [(getattr(r, "dewy_event", None), r.getMessage()) for r in records]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def told(recorder: Recorder) -> list[tuple[str, str, str | None]]:
    return [(m.outcome, m.summary, m.details.get("note")) for m in recorder.sent]


def test_five_failures_then_a_deploy_give_exactly_the_specified_messages() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        notifications = Notifications([recorder], "site")
        for n in range(1, 6):  # five cycles, each failing (as Daemon.cycle reports them)
            await notifications.error("error", f"failure {n}")
        await notifications.deployed("v1.1.0", "v1.0.0")  # the sixth cycle deploys...
        await notifications.cycle_succeeded()  # ...and ends without error
        await notifications.aclose()
        assert recorder.closed
        return recorder

    recorder = asyncio.run(scenario())
    assert told(recorder) == [
        ("error", "failure 1", None),
        ("error", "failure 2", None),
        ("error", "failure 3", NOTE),
        # failures 4 and 5: nothing
        ("recovered", "recovered after 5 consecutive errors; errors are reported again", None),
        ("deployed", "deployed v1.1.0", None),
    ]
    assert all(m.app == "site" and m.host == socket.gethostname() for m in recorder.sent)
    assert recorder.sent[-1].previous_version == "v1.0.0"


def test_five_failures_then_a_quiet_success_say_recovered_only() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        notifications = Notifications([recorder], "site")
        for n in range(1, 6):
            await notifications.error("rollback" if n == 2 else "error", f"failure {n}", version="v2.0.0")
        await notifications.cycle_succeeded()
        await notifications.cycle_succeeded()  # a second good cycle says nothing more
        await notifications.error("error", "failure 6")  # the limit starts over
        await notifications.aclose()
        return recorder

    assert told(asyncio.run(scenario())) == [
        ("error", "failure 1", None), ("rollback", "failure 2", None), ("error", "failure 3", NOTE),
        ("recovered", "recovered after 5 consecutive errors; errors are reported again", None),
        ("error", "failure 6", None),
    ]


def test_a_success_before_the_limit_resets_the_count_silently() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        notifications = Notifications([recorder], "site")
        await notifications.error("error", "a")
        await notifications.error("error", "b")
        await notifications.cycle_succeeded()
        for summary in "cdef":
            await notifications.error("error", summary)
        await notifications.aclose()
        return recorder

    assert ERROR_LIMIT == 3
    assert told(asyncio.run(scenario())) == [("error", "a", None), ("error", "b", None), ("error", "c", None),
                                             ("error", "d", None), ("error", "e", NOTE)]


def test_a_hanging_or_failing_notifier_never_blocks_the_caller_nor_the_others(events) -> None:
    async def scenario() -> tuple[Recorder, Recorder, Recorder]:
        gate = asyncio.Event()
        hanging, failing, working = Recorder(gate=gate), Recorder(fail=RuntimeError("boom\nsecond line")), Recorder()
        notifications = Notifications([hanging, failing, working], "site", timeout=0.5)
        await notifications.deployed("v1.0.0", None)  # returns although ``hanging`` never will
        assert not gate.is_set()
        await notifications.error("error", "failure 1")
        await notifications.flush()  # every send ended: ``hanging`` by the timeout
        gate.set()
        await notifications.deployed("v1.0.1", "v1.0.0")
        await notifications.aclose()
        return hanging, failing, working

    hanging, failing, working = asyncio.run(scenario())
    assert [m.summary for m in working.sent] == ["deployed v1.0.0", "failure 1", "deployed v1.0.1"]
    assert [m.summary for m in hanging.sent] == ["deployed v1.0.1"]
    assert failing.sent == []
    failed = [msg for event, msg in events() if event == "notify-failed"]
    assert failed.count("Recorder: could not notify: timed out after 0.5s") == 2
    assert failed.count("Recorder: could not notify: boom second line") == 3


def test_a_full_queue_drops_new_messages_and_shutdown_waits_a_bounded_time(events) -> None:
    async def scenario() -> Recorder:
        stuck = Recorder(gate=asyncio.Event())
        notifications = Notifications([stuck], "site", queue_size=2)
        for n in range(4):
            await notifications.deployed(f"v1.0.{n}", None)
            await asyncio.sleep(0)  # let the sender take the first message
        await notifications.aclose(drain=0.2)
        return stuck

    stuck = asyncio.run(scenario())
    assert stuck.sent == [] and stuck.closed
    log = events()
    assert ("notify-dropped", "Recorder: 2 messages are waiting; dropped: deployed v1.0.3") in log
    assert ("notify-dropped", "stopping: 2 queued notification(s) not sent within 0.2s") in log


# End to end: a real dewy process --------------------------------------------------------------


def assets(tmp_path: Path, *extra: str, env: dict[str, str]) -> Dewy:
    return Dewy(["assets", "--registry", (tmp_path / "registry").as_uri(), "-i", "0.1", "-d", str(tmp_path / "site"),
                 "-c", (tmp_path / "cache").as_uri(), *extra], cwd=tmp_path, env=env)


def test_dewy_error_limit_sequence_over_slack(tmp_path: Path) -> None:
    """Five failed cycles (a before hook that fails five times), then a deploy: exactly five Slack messages."""
    publish(tmp_path / "registry", "v1.0.0", {"index.html": "one"})
    script = tmp_path / "hook.sh"
    script.write_text('n=$(cat attempts 2>/dev/null || echo 0); n=$((n+1)); echo $n > attempts; echo "attempt $n"\n'
                      'if [ $n -le 5 ]; then echo "migration lock held" >&2; exit 3; fi\n')
    hook = f"sh {script}"
    with SlackServer(token=TOKEN) as slack:
        dewy = assets(tmp_path, "--notifier", "slack://deploys", "--before-deploy-hook", hook,
                      env={"SLACK_TOKEN": TOKEN, "SLACK_API_URL": slack.api_url})
        try:
            failures = [dewy.wait_for("deploy-failed") for _ in range(5)]
            assert [f["failures"] for f in failures] == [1, 2, 3, 4, 5]
            dewy.wait_for("deployed", version="v1.0.0")
        finally:
            assert dewy.stop() == 0  # a clean stop sends what is still queued
        messages = list(slack.messages)
    summary = "before hook {!r} exited with status 3: migration lock held".format(hook)
    assert [(m["attachments"][0]["color"], m["text"].split(" (site on ")[0]) for m in messages] == [
        ("danger", summary), ("danger", summary), ("danger", summary),
        ("good", "recovered after 5 consecutive errors; errors are reported again"),
        ("good", "deployed v1.0.0"),
    ]
    third = messages[2]["attachments"][0]["text"]
    assert "*hook output:*\n```\nattempt 3\nmigration lock held\n```" in third
    assert f"*note:* {NOTE}" in third
    assert "note" not in messages[0]["attachments"][0]["text"]


def test_unreachable_notifiers_are_logged_and_the_deploy_still_happens(tmp_path: Path) -> None:
    publish(tmp_path / "registry", "v1.0.0", {"index.html": "one"})
    closed = free_port()
    env = {"SLACK_TOKEN": TOKEN, "SLACK_API_URL": f"http://127.0.0.1:{closed}/api/"}
    dewy = assets(tmp_path, "--notifier", "slack://deploys", "--notifier", f"mail://127.0.0.1:{closed}/ops@example.com?tls=false",
                  env=env)
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        assert (tmp_path / "site" / "current" / "index.html").read_text() == "one"
        failed = [dewy.wait_for("notify-failed") for _ in range(2)]
    finally:
        assert dewy.stop() == 0
    reasons = sorted(f["msg"] for f in failed)
    assert reasons[0] == (f"MailNotifier: could not notify: mail: sending to ops@example.com via 127.0.0.1:{closed}"
                          " failed: connection refused")
    assert reasons[1].startswith(f"SlackNotifier: could not notify: slack: cannot reach http://127.0.0.1:{closed}/api/:")
    assert all(f["outcome"] == "deployed" and f["level"] == "warning" for f in failed)
    assert not any(TOKEN in str(record) for record in dewy.seen)


def test_a_hanging_slack_does_not_delay_the_next_deploy(tmp_path: Path) -> None:
    """Slack accepts the connection but never answers: deploys go on while the notification waits."""
    registry = tmp_path / "registry"
    publish(registry, "v1.0.0", {"index.html": "one"})
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections complete in the backlog; nothing ever answers
        env = {"SLACK_TOKEN": TOKEN, "SLACK_API_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/api/"}
        dewy = assets(tmp_path, "--notifier", "slack://deploys", env=env)
        try:
            dewy.wait_for("deployed", version="v1.0.0")
            publish(registry, "v1.1.0", {"index.html": "two"})
            dewy.wait_for("deployed", version="v1.1.0", timeout=5)
            assert not any(r.get("event") == "notify-failed" for r in dewy.seen), "Slack's request timeout is 10 s"
        finally:
            dewy.kill()


def test_deprecated_notify_flag_warns_once_and_still_notifies(tmp_path: Path) -> None:
    publish(tmp_path / "registry", "v1.0.0", {"index.html": "one"})
    with SlackServer(token=TOKEN) as slack:
        dewy = assets(tmp_path, "--notify", "slack://deploys", env={"SLACK_TOKEN": TOKEN, "SLACK_API_URL": slack.api_url})
        try:
            dewy.wait_for("deployed", version="v1.0.0")
            [message] = slack.wait_for_messages(1)
        finally:
            assert dewy.stop() == 0
    assert message["text"].startswith("deployed v1.0.0 (site on ")
    plain = [r["msg"] for r in dewy.seen if r.get("event") == "non-json"]
    assert plain == ["dewy: warning: --notify is deprecated; use --notifier"]

