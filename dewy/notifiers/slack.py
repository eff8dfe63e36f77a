"""``slack://CHANNEL?title=TEXT&url=LINK``: a message per deploy or error, posted with chat.postMessage.

The token comes from ``SLACK_TOKEN`` (a bot token with the ``chat:write`` scope; the bot
must be a member of the channel). ``SLACK_API_URL`` (or ``base_url=``) points slack-sdk at
another Web API root, for a test server or an egress proxy that re-exposes Slack's API.

Each message is one attachment coloured by outcome (green deployed/recovered, red error,
yellow rollback), with the version, the previous version, host and app as fields, and the
details (hook output excerpts as code blocks, truncated). ``title=`` heads the attachment,
``url=`` makes that heading a link (e.g. to the deploy dashboard). ``thread=true``: the
messages about one version go into the thread of the first (errors and rollbacks are also
shown in the channel); ``quiet=true``: only errors and rollbacks are sent.

Rate limits: a 429 answer is retried after its ``Retry-After`` as long as the wait fits in
the send's time budget (a few attempts at most); otherwise the message fails with one line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from urllib.parse import unquote, urlsplit

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk import WebClient

from dewy.errors import DewyError, UsageError
from dewy.notifiers import Message
from dewy.urls import Url

DEFAULT_API_URL = "https://slack.com/api/"
KEYS = frozenset({"title", "url", "quiet", "thread"})
THREADS_KEPT = 50  # versions whose thread is remembered
COLOURS = {"deployed": "good", "recovered": "good", "rollback": "warning", "error": "danger", "suppressed": "danger"}
REQUEST_TIMEOUT = 10  # seconds per HTTP request
BUDGET = 25.0  # seconds for one send, retries and Retry-After waits included (Notifications allows 30)
MAX_ATTEMPTS = 4
DETAIL_LIMIT = 1500  # characters quoted per detail (the end of it: the last lines of a hook say why)
TEXT_LIMIT = 7000  # attachment text, well under Slack's limits

# slack-sdk logs request details at debug level; keep them out of dewy's log and stderr.
_sdk_logger = logging.getLogger("dewy-slack-sdk")
_sdk_logger.addHandler(logging.NullHandler())
_sdk_logger.propagate = False

ERROR_HINTS = {
    "not_authed": "no token was sent; set SLACK_TOKEN",
    "invalid_auth": "SLACK_TOKEN was rejected; check the token",
    "account_inactive": "the token's user or app was deactivated",
    "token_revoked": "SLACK_TOKEN was revoked",
    "token_expired": "SLACK_TOKEN has expired",
    "missing_scope": "the token lacks the chat:write scope",
    "channel_not_found": "no channel {channel!r} is visible to this token (use the channel name or ID)",
    "not_in_channel": "the bot is not a member of {channel!r}; invite it (/invite @app) in that channel",
    "is_archived": "channel {channel!r} is archived",
    "msg_too_long": "the message is too long",
    "ratelimited": "rate limited by Slack",
}


class SlackNotifier:
    def __init__(self, url: Url, *, token: str | None = None, base_url: str | None = None,
                 budget: float = BUDGET) -> None:
        url.check_keys(KEYS)
        channel = unquote(url.netloc)
        if not channel:
            hint = " (a # starts a URL fragment: write slack://deploys)" if urlsplit(url.raw).fragment else ""
            raise UsageError(f"{url}: missing channel: expected slack://CHANNEL, e.g. slack://deploys{hint}")
        if url.path not in ("", "/"):
            raise UsageError(f"{url}: expected slack://CHANNEL with nothing after the channel, got path {url.path!r}")
        self.channel = channel.removeprefix("#")
        self.quiet = url.flag("quiet")
        self.thread = url.flag("thread")
        self._threads: dict[str, str] = {}  # version -> ts of the first message about it (thread=true)
        self.title = url.query.get("title") or None
        self.link = url.query.get("url") or None
        if self.link and urlsplit(self.link).scheme not in ("http", "https"):
            raise UsageError(f"{url}: url={self.link!r} must be an http:// or https:// link")
        token = token or os.environ.get("SLACK_TOKEN", "").strip()
        if not token:
            raise UsageError(f"{url}: the slack:// notifier needs SLACK_TOKEN (a bot token with the chat:write scope)")
        self._token = token
        api = base_url or os.environ.get("SLACK_API_URL", "").strip() or DEFAULT_API_URL
        if urlsplit(api).scheme not in ("http", "https"):
            raise UsageError(f"SLACK_API_URL={api!r} must be an http:// or https:// URL such as {DEFAULT_API_URL}")
        self.api_url = api if api.endswith("/") else api + "/"
        self.budget = budget
        # The SDK's blocking client (on urllib) in a thread: its async client would bring aiohttp,
        # a second HTTP stack next to httpx, for one request per deploy.
        self._client = WebClient(token=token, base_url=self.api_url, timeout=REQUEST_TIMEOUT,
                                 logger=_sdk_logger, retry_handlers=[])

    def __repr__(self) -> str:
        return f"SlackNotifier(channel={self.channel!r}, api_url={self.api_url!r})"

    def render(self, message: Message) -> dict:
        """chat.postMessage arguments for ``message``: a plain ``text`` (what phones show) and one attachment."""
        where = f"{message.app} on {message.host}"
        text = f"{message.summary} ({where})"
        fields = [{"title": "Version", "value": message.version, "short": True}] if message.version else []
        if message.previous_version or message.outcome == "deployed":
            fields.append({"title": "Previous version", "value": message.previous_version or "none", "short": True})
        fields += [{"title": "Host", "value": message.host, "short": True},
                   {"title": "App", "value": message.app, "short": True}]
        body = [f"*{_escape(message.summary)}*"]
        for key, value in message.details.items():
            body.append(_detail(key, value))
        attachment = {
            "color": COLOURS.get(message.outcome, "#439FE0"),
            "fallback": text,
            "title": self.title or f"dewy: {message.app}",
            "text": _truncate("\n".join(body), TEXT_LIMIT),
            "fields": fields,
            "footer": f"dewy · {message.outcome}",
            "ts": int(time.time()),
            "mrkdwn_in": ["text"],
        }
        if self.link:
            attachment["title_link"] = self.link
        return {"channel": self.channel, "text": _escape(text), "attachments": [attachment],
                "unfurl_links": False, "unfurl_media": False}

    async def send(self, message: Message) -> None:
        arguments = self.render(message)
        parent = self._threads.get(message.version) if self.thread and message.version else None
        if parent:
            arguments["thread_ts"] = parent
            arguments["reply_broadcast"] = not message.ok  # as upstream: errors show in the channel too
        deadline = time.monotonic() + self.budget
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = await asyncio.to_thread(self._client.chat_postMessage, **arguments)
                if self.thread and message.version and not parent:
                    self._remember(message.version, response.get("ts"))
                return
            except SlackApiError as exc:
                response = exc.response
                if response.status_code == 429:
                    wait = _retry_after(response.headers)
                    if attempt < MAX_ATTEMPTS and time.monotonic() + wait < deadline:
                        await asyncio.sleep(wait)  # Slack says when to come back
                        continue
                    raise DewyError(self._scrub(
                        f"slack: rate limited by Slack (Retry-After {wait:g}s) after {attempt} attempt(s); "
                        "this message is dropped")) from None
                raise DewyError(self._scrub(self._api_error(response))) from None
            except (OSError, SlackClientError) as exc:
                cause = getattr(exc, "reason", exc)  # urllib wraps the socket error in URLError.reason
                reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
                if isinstance(cause, TimeoutError):
                    reason = f"no answer within {REQUEST_TIMEOUT}s"
                raise DewyError(self._scrub(f"slack: cannot reach {self.api_url}: {reason}")) from None

    def _remember(self, version: str, ts: str | None) -> None:
        if ts:
            self._threads[version] = ts
            while len(self._threads) > THREADS_KEPT:
                del self._threads[next(iter(self._threads))]

    def _api_error(self, response) -> str:
        data = response.data if isinstance(response.data, dict) else {}
        code = data.get("error")
        if not code:
            return f"slack: chat.postMessage answered HTTP {response.status_code} without a Slack error code"
        hint = ERROR_HINTS.get(code, "").format(channel=self.channel)
        if code == "missing_scope" and data.get("needed"):
            hint = f"the token lacks the {data['needed']} scope (it has: {data.get('provided') or 'none'})"
        return f"slack: chat.postMessage to {self.channel!r} failed: {code}" + (f": {hint}" if hint else "")

    def _scrub(self, text: str) -> str:
        """One line, never the token."""
        return " ".join(text.replace(self._token, "***").split())

    async def aclose(self) -> None:
        """Nothing to release: slack-sdk opens and closes an HTTP session per call."""


def _retry_after(headers) -> float:
    """Seconds from a Retry-After header (slack-sdk gives headers as a dict of str or of lists)."""
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            value = value[0] if isinstance(value, (list, tuple)) else value
            try:
                return max(float(value), 0.0)
            except (TypeError, ValueError):
                break
    return 1.0


def _escape(text: str) -> str:
    """Slack mrkdwn control characters (&, <, >) as entities, as Slack's formatting docs require."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _detail(key: str, value: str) -> str:
    """A detail: multi-line text (hook output) as a code block quoting its end, short text inline."""
    value = value.rstrip()
    if "\n" not in value and "output" not in key and len(value) <= 300:
        return f"*{_escape(key)}:* {_escape(value)}"
    if len(value) > DETAIL_LIMIT:
        value = "…" + value[-(DETAIL_LIMIT - 1):]
    value = _escape(value).replace("```", "`\u200b``")  # a ``` inside would end the block
    return f"*{_escape(key)}:*\n```\n{value}\n```"
