"""slack:// against a Slack Web API test server: message content, rate limits, errors, the token kept secret."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dewy.errors import DewyError, UsageError
from dewy.notifiers import NOTIFIERS, Message
from dewy.notifiers.slack import SlackNotifier
from dewy.urls import Url
from tests.conftest import publish
from tests.harness import Dewy, free_port
from tests.slack_server import SlackServer

TOKEN = "xoxb-1234-secret-token"


def notifier(slack: SlackServer | None, raw: str = "slack://deploys", *, token: str = TOKEN, **options) -> SlackNotifier:
    api_url = slack.api_url if slack else f"http://127.0.0.1:{free_port()}/api/"
    return SlackNotifier(Url.parse(raw), token=token, base_url=api_url, **options)


def send(target: SlackNotifier, message: Message) -> None:
    asyncio.run(target.send(message))


def deployed(**details: str) -> Message:
    return Message("deployed", "deployed v1.2.3", app="site", host="web-1", version="v1.2.3",
                   previous_version="v1.2.2", details=details)


def test_deploy_message_content() -> None:
    with SlackServer(token=TOKEN) as slack:
        output = "".join(f"line {n}\n" for n in range(400)) + "```not the end of the block``` <b>&"
        send(notifier(slack, "slack://deploys?title=Production%20web&url=https://grafana.example.com/d/deploys"),
             deployed(**{"after hook output": output}))
        [message] = slack.wait_for_messages(1)
        request = slack.requests[-1]
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert message["channel_id"] == "C0DEPLOYS"
    assert message["text"] == "deployed v1.2.3 (site on web-1)"
    [attachment] = message["attachments"]
    assert attachment["color"] == "good"
    assert attachment["title"] == "Production web"
    assert attachment["title_link"] == "https://grafana.example.com/d/deploys"
    fields = {f["title"]: f["value"] for f in attachment["fields"]}
    assert fields == {"Version": "v1.2.3", "Previous version": "v1.2.2", "Host": "web-1", "App": "site"}
    text = attachment["text"]
    assert text.startswith("*deployed v1.2.3*\n*after hook output:*\n```\n…")
    assert text.endswith("line 399\n`\u200b``not the end of the block`\u200b`` &lt;b&gt;&amp;\n```")
    assert "line 0\n" not in text, "a long output is cut from the start: its end says why"
    assert len(text) < 1700


@pytest.mark.parametrize("outcome, colour", [("error", "danger"), ("rollback", "warning"), ("recovered", "good")])
def test_colour_per_outcome(outcome: str, colour: str) -> None:
    with SlackServer(token=TOKEN) as slack:
        send(notifier(slack), Message(outcome, f"{outcome} happened", app="site", host="web-1",
                                      details={"note": "3 errors in a row"}))
        [message] = slack.wait_for_messages(1)
    [attachment] = message["attachments"]
    assert attachment["color"] == colour
    assert attachment["title"] == "dewy: site"
    assert "title_link" not in attachment
    assert attachment["text"] == f"*{outcome} happened*\n*note:* 3 errors in a row"
    assert {f["title"] for f in attachment["fields"]} == {"Host", "App"}


def test_rate_limit_waits_for_retry_after_then_delivers() -> None:
    with SlackServer(token=TOKEN) as slack:
        slack.rate_limit_next(times=1, retry_after=1)
        started = time.monotonic()
        send(notifier(slack), deployed())
        elapsed = time.monotonic() - started
        slack.wait_for_messages(1)
        assert [r.status for r in slack.requests] == [429, 200]
    assert elapsed >= 1.0, "the retry must wait for Retry-After"


def test_rate_limit_beyond_the_budget_fails_at_once() -> None:
    with SlackServer(token=TOKEN) as slack:
        slack.rate_limit_next(times=1, retry_after=120)
        started = time.monotonic()
        with pytest.raises(DewyError) as caught:
            send(notifier(slack), deployed())
        assert time.monotonic() - started < 5
        assert [r.status for r in slack.requests] == [429]
    assert str(caught.value) == "slack: rate limited by Slack (Retry-After 120s) after 1 attempt(s); this message is dropped"


def test_rate_limited_every_time_gives_up_after_a_bounded_number_of_attempts() -> None:
    with SlackServer(token=TOKEN) as slack:
        slack.rate_limit_next(times=10, retry_after=0)
        with pytest.raises(DewyError, match="rate limited by Slack"):
            send(notifier(slack), deployed())
        assert len(slack.requests) == 4


@pytest.mark.parametrize("token, channel, member, expected", [
    ("xoxb-wrong-secret", "deploys", True, "slack: chat.postMessage to 'deploys' failed: invalid_auth: SLACK_TOKEN was rejected; check the token"),
    (TOKEN, "nowhere", True, "slack: chat.postMessage to 'nowhere' failed: channel_not_found: no channel 'nowhere' is visible to this token"),
    (TOKEN, "C0PRIVATE", False, "slack: chat.postMessage to 'C0PRIVATE' failed: not_in_channel: the bot is not a member of 'C0PRIVATE'"),
])
def test_api_errors_are_one_line_without_the_token(token: str, channel: str, member: bool, expected: str) -> None:
    with SlackServer(token=TOKEN) as slack:
        slack.add_channel("C0PRIVATE", "private", member=member)
        with pytest.raises(DewyError) as caught:
            send(notifier(slack, f"slack://{channel}", token=token), deployed())
        assert not slack.messages
    message = str(caught.value)
    assert message.startswith(expected), message
    assert "\n" not in message and token not in message and "secret" not in message


def test_missing_scope_names_it() -> None:
    with SlackServer(token=TOKEN, scopes=("channels:read",)) as slack:
        with pytest.raises(DewyError, match="missing_scope: the token lacks the chat:write scope \\(it has: channels:read\\)"):
            send(notifier(slack), deployed())


def test_unreachable_api_is_one_line() -> None:
    target = notifier(None)
    with pytest.raises(DewyError) as caught:
        send(target, deployed())
    assert str(caught.value).startswith(f"slack: cannot reach {target.api_url}: Connection refused")
    assert TOKEN not in str(caught.value)


def test_server_error_without_slack_body() -> None:
    with SlackServer(token=TOKEN) as slack:
        with pytest.raises(DewyError, match="unknown_method"):
            send(SlackNotifier(Url.parse("slack://deploys"), token=TOKEN, base_url=slack.api_url + "v9"), deployed())


def test_urls_and_environment(monkeypatch) -> None:
    monkeypatch.delenv("SLACK_TOKEN", raising=False)
    with pytest.raises(UsageError, match="needs SLACK_TOKEN"):
        SlackNotifier(Url.parse("slack://deploys"))
    monkeypatch.setenv("SLACK_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9/api")
    target = NOTIFIERS.load(NOTIFIERS.url("slack://C0DEPLOYS?title=x"))
    assert (target.channel, target.api_url) == ("C0DEPLOYS", "http://127.0.0.1:9/api/")
    assert TOKEN not in repr(target)
    for raw, problem in [("slack://#deploys", "a # starts a URL fragment"), ("slack://deploys?titel=x", "did you mean 'title'?"),
                         ("slack://deploys?url=javascript:alert(1)", "must be an http:// or https:// link"),
                         ("slack://deploys/more", "nothing after the channel")]:
        with pytest.raises(UsageError, match=problem.replace("(", "\\(").replace("?", "\\?")):
            SlackNotifier(Url.parse(raw))


def test_dewy_without_slack_token_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLACK_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "dewy", "assets", "--registry", tmp_path.as_uri(),
                             "--notifier", "slack://deploys"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr == ("dewy: error: slack://deploys: the slack:// notifier needs SLACK_TOKEN"
                             " (a bot token with the chat:write scope)\n")


def test_dewy_process_posts_deploys_and_keeps_the_token_out_of_its_log(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    publish(registry, "v1.0.0", {"index.html": "one"})
    with SlackServer(token=TOKEN) as slack:
        env = {"SLACK_TOKEN": TOKEN, "SLACK_API_URL": slack.api_url}
        dewy = Dewy(["assets", "--registry", registry.as_uri(), "-i", "0.2", "-d", str(tmp_path / "site"),
                     "-c", (tmp_path / "cache").as_uri(), "--notifier", "slack://deploys?title=web",
                     "--after-deploy-hook", "echo purged $DEWY_VERSION"], cwd=tmp_path, env=env)
        try:
            dewy.wait_for("deployed", version="v1.0.0")
            [first] = slack.wait_for_messages(1)
            publish(registry, "v1.1.0", {"index.html": "two"})
            dewy.wait_for("deployed", version="v1.1.0")
            second = slack.wait_for_messages(2)[1]
        finally:
            assert dewy.stop() == 0
        assert len(slack.messages) == 2
        assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in slack.requests)
    assert first["attachments"][0]["fields"][:2] == [{"title": "Version", "value": "v1.0.0", "short": True},
                                                      {"title": "Previous version", "value": "none", "short": True}]
    assert second["attachments"][0]["fields"][:2] == [{"title": "Version", "value": "v1.1.0", "short": True},
                                                       {"title": "Previous version", "value": "v1.0.0", "short": True}]
    assert "```\npurged v1.1.0\n```" in second["attachments"][0]["text"]
    assert second["text"].startswith("deployed v1.1.0 (site on ")
    assert not any(TOKEN in json.dumps(record) for record in dewy.seen)


def test_thread_true_puts_the_messages_of_one_version_in_the_thread_of_the_first() -> None:
    with SlackServer(token=TOKEN) as slack:
        target = notifier(slack, "slack://deploys?thread=true")
        rollback = Message("rollback", "v1.3.0 did not start and was rolled back", app="site", host="web-1", version="v1.3.0")
        send(target, Message("error", "v1.3.0: before hook failed", app="site", host="web-1", version="v1.3.0"))
        send(target, rollback)
        send(target, deployed())
        send(target, Message("error", "registry down", app="site", host="web-1"))
        first, second, third, fourth = slack.wait_for_messages(4)
    assert "thread_ts" not in first and second["thread_ts"] == first["answered_ts"]
    assert second.get("reply_broadcast") in (True, "true", "1", "True"), "a rollback also shows in the channel"
    assert "thread_ts" not in third, "another version starts its own thread"
    assert "thread_ts" not in fourth, "a message about no version goes to the channel"


def test_quiet_true_sends_only_errors_and_rollbacks() -> None:
    from dewy.notifiers import Notifications

    async def main(slack: SlackServer) -> None:
        notifications = Notifications([notifier(slack, "slack://deploys?quiet=true")], "site")
        await notifications.deployed("v1.2.3", "v1.2.2")
        await notifications.error("rollback", "v1.3.0 did not start and was rolled back", version="v1.3.0")
        await notifications.error("error", "registry down")
        await notifications.aclose()

    with SlackServer(token=TOKEN) as slack:
        asyncio.run(main(slack))
        texts = [m["text"].split(" (site on ")[0] for m in slack.messages]
    assert texts == ["v1.3.0 did not start and was rolled back", "registry down"]
