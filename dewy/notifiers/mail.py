"""``mail://HOST:PORT/TO[,TO...]?username=&password=&from=&subject=&tls=`` (and ``smtp://``): one plain-text mail per message.

Sent with smtplib in a worker thread. Transport security (``tls=``):

- ``starttls``: plain connection upgraded with STARTTLS, required (a server that does not
  offer it is an error, never a silent downgrade). The default, and port 587 by default.
- ``true`` (also ``ssl``, ``tls``): implicit TLS from the first byte. The default when the
  port is 465, and port 465 by default.
- ``false`` (also ``none``): no encryption, for a relay on the host itself (port 25 by
  default). Credentials are refused over it unless the server is on loopback.

Certificates are verified against the system CA store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
point OpenSSL at others) and the server's host name.

Credentials: ``username=``/``password=`` (or ``user:pass@`` in the URL, percent-encoded),
else ``MAIL_USERNAME``/``MAIL_PASSWORD``; the sender: ``from=``, else ``MAIL_FROM``, else the
username if it is an address, else ``dewy@<hostname>``. The subject is
``[dewy] <app>@<host>: <summary>``; ``subject=`` replaces the ``[dewy]`` prefix.
The password appears in no log line or error: URLs print as ``password=***`` and SMTP
failures are described from their codes, scrubbed of the credentials.
"""

from __future__ import annotations

import asyncio
import base64
import os
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from urllib.parse import unquote

from dewy import __version__
from dewy.errors import DewyError, UsageError
from dewy.notifiers import Message
from dewy.urls import FALSE_WORDS, Url, is_loopback

KEYS = frozenset({"username", "password", "from", "subject", "tls", "quiet"})
TLS_WORDS = {"starttls": "starttls", "true": "implicit", "1": "implicit", "yes": "implicit", "on": "implicit",
             "ssl": "implicit", "tls": "implicit", "implicit": "implicit", "none": "none"} | {w: "none" for w in FALSE_WORDS if w}
DEFAULT_PORTS = {"starttls": 587, "implicit": 465, "none": 25}
SMTP_TIMEOUT = 20.0  # seconds per socket operation; Notifications bounds the whole send at 30
DETAIL_LIMIT = 8000  # characters quoted per detail (its end)
SUBJECT_LIMIT = 200


class MailNotifier:
    def __init__(self, url: Url, *, ssl_context: ssl.SSLContext | None = None, timeout: float = SMTP_TIMEOUT) -> None:
        url.check_keys(KEYS)
        self.quiet = url.flag("quiet")
        self.host = url.host
        if not self.host:
            raise UsageError(f"{url}: missing server: expected {url.scheme}://HOST:PORT/TO, e.g. {url.scheme}://smtp.example.com:587/ops@example.com")
        tls = url.query.get("tls")
        if tls is None:
            self.tls = "implicit" if url.port == 465 else "starttls"
        elif tls.strip().lower() in TLS_WORDS:
            self.tls = TLS_WORDS[tls.strip().lower()]
        else:
            raise UsageError(f"{url}: tls={tls!r}: use starttls, true (implicit TLS, port 465) or false")
        self.port = url.port or DEFAULT_PORTS[self.tls]
        self.recipients = [unquote(r).strip() for r in url.path.lstrip("/").split(",") if r.strip()]
        if not self.recipients:
            raise UsageError(f"{url}: missing recipient: expected {url.scheme}://HOST:PORT/TO (comma-separated addresses)")
        for recipient in self.recipients:
            _check_address(url, recipient, "recipient")
        self.username = (url.query.get("username") or unquote(url.username or "") or os.environ.get("MAIL_USERNAME", "")) or None
        self.password = (url.query.get("password") or unquote(url.password or "") or os.environ.get("MAIL_PASSWORD", "")) or None
        if self.username and not self.password:
            raise UsageError(f"{url}: username {self.username!r} needs a password (password= or MAIL_PASSWORD)")
        if self.password and not self.username:
            raise UsageError(f"{url}: a password needs a username (username= or MAIL_USERNAME)")
        if self.password and self.tls == "none" and not is_loopback(self.host):
            raise UsageError(f"{url}: refusing to send the password unencrypted to {self.host}; use tls=starttls or tls=true")
        sender = url.query.get("from") or os.environ.get("MAIL_FROM", "")
        if not sender:
            sender = self.username if self.username and "@" in self.username else f"dewy@{socket.gethostname()}"
        _check_address(url, sender, "from")
        self.sender = sender
        self.prefix = url.query.get("subject", "[dewy]").strip() or "[dewy]"
        self.where = f"{self.host}:{self.port}"
        self.ssl_context = ssl_context
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"MailNotifier(server={self.where!r}, tls={self.tls!r}, to={self.recipients!r})"

    def compose(self, message: Message) -> EmailMessage:
        mail = EmailMessage()
        subject = " ".join(f"{self.prefix} {message.app}@{message.host}: {message.summary}".split())
        mail["Subject"] = subject if len(subject) <= SUBJECT_LIMIT else subject[: SUBJECT_LIMIT - 1] + "…"
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid("dewy", domain=_domain(message.host))
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
        mail["X-Dewy-Outcome"] = message.outcome
        if message.version:
            mail["X-Dewy-Version"] = message.version
        mail.set_content(self.body(message))
        return mail

    def body(self, message: Message) -> str:
        rows = [("Outcome", message.outcome), ("App", message.app), ("Host", message.host)]
        if message.version:
            rows.append(("Version", message.version))
        if message.previous_version or message.outcome == "deployed":
            rows.append(("Previous version", message.previous_version or "none"))
        lines = [message.summary, ""] + [f"{name + ':':<18}{value}" for name, value in rows]
        for key, value in message.details.items():
            value = value.rstrip()
            if len(value) > DETAIL_LIMIT:
                value = "…" + value[-(DETAIL_LIMIT - 1):]
            lines += ["", f"{key}:"] + [f"    {line}" for line in value.splitlines() or [""]]
        lines += ["", "-- ", f"dewy {__version__}"]
        return "\n".join(lines) + "\n"

    async def send(self, message: Message) -> None:
        mail = self.compose(message)
        try:
            await asyncio.to_thread(self._deliver, mail)
        except DewyError:
            raise
        except Exception as exc:
            raise DewyError(self._scrub(f"mail: sending to {', '.join(self.recipients)} via {self.where} failed: "
                                        f"{self._describe(exc)}")) from None

    def _deliver(self, mail: EmailMessage) -> None:
        """Blocking SMTP conversation (worker thread)."""
        context = self.ssl_context or ssl.create_default_context()
        local = socket.gethostname()  # not getfqdn(): no DNS lookup that could hang
        if self.tls == "implicit":
            smtp = smtplib.SMTP_SSL(self.host, self.port, local_hostname=local, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, local_hostname=local, timeout=self.timeout)
        try:
            smtp.ehlo()
            if self.tls == "starttls":
                if not smtp.has_extn("starttls"):
                    raise DewyError(f"mail: {self.where} does not offer STARTTLS; use tls=true for implicit TLS"
                                    " (port 465) or tls=false for a local relay")
                smtp.starttls(context=context)
                smtp.ehlo()
            if self.username:
                if not smtp.has_extn("auth"):
                    raise DewyError(f"mail: {self.where} does not offer AUTH"
                                    f"{' over an unencrypted connection' if self.tls == 'none' else ''};"
                                    " remove username/password or use tls=starttls")
                smtp.login(self.username, self.password or "")
            refused = smtp.send_message(mail, from_addr=self.sender, to_addrs=self.recipients)
            if refused:
                raise DewyError(self._scrub("mail: " + self._refused(refused) + " (the other recipients got it)"))
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def _describe(self, exc: BaseException) -> str:
        """One line for an SMTP, TLS or socket failure, from codes and reasons (no exception dumps)."""
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return f"login as {self.username!r} refused: {_reply(exc.smtp_code, exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return self._refused(exc.recipients)
        if isinstance(exc, smtplib.SMTPSenderRefused):
            return f"sender {self.sender!r} refused: {_reply(exc.smtp_code, exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPResponseException):
            return f"server answered {_reply(exc.smtp_code, exc.smtp_error)}"
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            return "the server closed the connection"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted: {exc.verify_message or exc.reason}"
        if isinstance(exc, ssl.SSLError):
            hint = " (is this port plain SMTP? try tls=starttls)" if self.tls == "implicit" else ""
            return f"TLS failed: {exc.reason or exc}{hint}"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve {self.host!r}: {exc.strerror}"
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return f"no answer within {self.timeout:g}s"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused"
        if isinstance(exc, OSError):
            return exc.strerror or str(exc) or type(exc).__name__
        return str(exc) or type(exc).__name__

    def _refused(self, refused: dict) -> str:
        return "recipients refused: " + "; ".join(f"{address} ({_reply(code, text)})" for address, (code, text) in refused.items())

    def _scrub(self, text: str) -> str:
        """One line without the password, in clear or in the base64 forms of AUTH PLAIN/LOGIN."""
        text = " ".join(text.split())
        if self.password:
            secrets = {self.password, base64.b64encode(self.password.encode()).decode(),
                       base64.b64encode(f"\0{self.username}\0{self.password}".encode()).decode()}
            for secret in sorted(secrets, key=len, reverse=True):
                text = text.replace(secret, "***")
        return text

    async def aclose(self) -> None:
        """Nothing held between messages: each send is one SMTP session."""


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(f"{code} {text}".split())


def _check_address(url: Url, address: str, what: str) -> None:
    _, parsed = parseaddr(address)
    if "@" not in parsed or parsed.startswith("@") or parsed.endswith("@"):
        raise UsageError(f"{url}: {what} {address!r} is not a mail address")


def _domain(host: str) -> str:
    return host if "." in host else f"{host}.localdomain"
