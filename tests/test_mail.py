"""mail:// and smtp:// against a real SMTP server (aiosmtpd) on 127.0.0.1: STARTTLS, implicit TLS, AUTH."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dewy.errors import DewyError, UsageError
from dewy.notifiers import NOTIFIERS, Message
from dewy.notifiers.mail import MailNotifier
from dewy.urls import Url
from tests.conftest import publish
from tests.harness import Dewy, free_port

USER, PASSWORD = "deployer@example.com", "s3cr3t-p4ss"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dewy test SMTP")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return directory / "cert.pem", directory / "key.pem"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: email.message.EmailMessage
    tls: bool
    login: bytes | None


@dataclass
class Mailbox:
    """aiosmtpd handler: keeps every delivered message."""

    received: list[Received] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server, session, envelope) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        with self.arrived:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message,
                                          server.transport.get_extra_info("ssl_object") is not None, login))
            self.arrived.notify_all()
        return "250 OK queued"

    def authenticator(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self.logins.append((auth_data.login, auth_data.password))
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def wait(self, count: int, timeout: float = 20) -> list[Received]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.received) >= count, timeout), f"{len(self.received)} mails"
            return list(self.received)


def server_context(certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def client_context(certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


@pytest.fixture
def smtp(certificate):
    """An SMTP submission server: STARTTLS, AUTH only after STARTTLS. Yields (mailbox, port)."""
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=server_context(certificate),
                            require_starttls=True, auth_require_tls=True, authenticator=mailbox.authenticator)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def deployed() -> Message:
    return Message("deployed", "deployed v1.2.3", app="site", host="web-1", version="v1.2.3", previous_version="v1.2.2",
                   details={"after hook output": "purging cache\npurged 42 objects\n"})


def send(notifier: MailNotifier, message: Message) -> None:
    asyncio.run(notifier.send(message))


def test_starttls_and_auth_deliver_headers_and_body(smtp, certificate) -> None:
    mailbox, port = smtp
    url = Url.parse(f"mail://127.0.0.1:{port}/ops@example.com,oncall@example.com"
                    f"?username={USER}&password={PASSWORD}&from=dewy@example.com")
    notifier = MailNotifier(url, ssl_context=client_context(certificate))
    assert notifier.tls == "starttls"
    send(notifier, deployed())
    [mail] = mailbox.wait(1)
    assert mail.tls and mail.login == USER.encode()
    assert mail.mail_from == "dewy@example.com"
    assert mail.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    headers = mail.message
    assert headers["Subject"] == "[dewy] site@web-1: deployed v1.2.3"
    assert headers["From"] == "dewy@example.com"
    assert headers["To"] == "ops@example.com, oncall@example.com"
    assert headers["Date"] and headers["Message-ID"]
    assert headers["Auto-Submitted"] == "auto-generated"
    assert headers["X-Dewy-Outcome"] == "deployed" and headers["X-Dewy-Version"] == "v1.2.3"
    assert headers.get_content_type() == "text/plain"
    body = headers.get_content().replace("\r\n", "\n")
    assert body.startswith("deployed v1.2.3\n")
    for line in ("Outcome:          deployed", "App:              site", "Host:             web-1",
                 "Version:          v1.2.3", "Previous version: v1.2.2",
                 "after hook output:\n    purging cache\n    purged 42 objects"):
        assert line in body
    assert PASSWORD not in mail.message.as_string()


def test_subject_prefix_env_fallbacks_and_smtp_alias(smtp, certificate, monkeypatch) -> None:
    mailbox, port = smtp
    monkeypatch.setenv("MAIL_USERNAME", USER)
    monkeypatch.setenv("MAIL_PASSWORD", PASSWORD)
    monkeypatch.setenv("MAIL_FROM", "Deploy Bot <bot@example.com>")
    url = NOTIFIERS.url(f"smtp://127.0.0.1:{port}/ops@example.com?subject=[prod]&tls=starttls")
    notifier = NOTIFIERS.load(url, ssl_context=client_context(certificate))
    assert isinstance(notifier, MailNotifier)
    send(notifier, Message("error", "before hook 'x' exited with status 1:\nno", app="api", host="db-2",
                           details={"hook output": "line 1\nno"}))
    [mail] = mailbox.wait(1)
    assert mail.login == USER.encode()
    assert mail.mail_from == "bot@example.com"
    assert mail.message["From"] == "Deploy Bot <bot@example.com>"
    assert mail.message["Subject"] == "[prod] api@db-2: before hook 'x' exited with status 1: no"
    assert "X-Dewy-Version" not in mail.message
    assert "Previous version" not in mail.message.get_content()


def test_wrong_password_is_one_line_without_the_password(smtp, certificate) -> None:
    mailbox, port = smtp
    url = Url.parse(f"mail://127.0.0.1:{port}/ops@example.com?username={USER}&password=wrong-{PASSWORD}")
    with pytest.raises(DewyError) as caught:
        send(MailNotifier(url, ssl_context=client_context(certificate)), deployed())
    message = str(caught.value)
    assert "login as 'deployer@example.com' refused: 535" in message, message
    assert PASSWORD not in message and "\n" not in message
    assert mailbox.logins and set(mailbox.logins) == {(USER.encode(), f"wrong-{PASSWORD}".encode())}
    assert not mailbox.received
    assert PASSWORD not in str(url) and "password=***" in str(url)


def test_untrusted_certificate_and_missing_starttls_are_refused(smtp, certificate) -> None:
    mailbox, port = smtp
    with pytest.raises(DewyError, match="TLS certificate not trusted"):
        send(MailNotifier(Url.parse(f"mail://127.0.0.1:{port}/ops@example.com")), deployed())
    plain, plain_port = Mailbox(), free_port()
    controller = Controller(plain, hostname="127.0.0.1", port=plain_port)
    controller.start()
    try:
        with pytest.raises(DewyError, match="does not offer STARTTLS"):
            send(MailNotifier(Url.parse(f"mail://127.0.0.1:{plain_port}/ops@example.com")), deployed())
        with pytest.raises(DewyError, match="does not offer AUTH"):  # aiosmtpd offers AUTH only over TLS by default
            send(MailNotifier(Url.parse(f"mail://127.0.0.1:{plain_port}/ops@example.com?tls=false"
                                        f"&username={USER}&password={PASSWORD}")), deployed())
        send(MailNotifier(Url.parse(f"mail://127.0.0.1:{plain_port}/ops@example.com?tls=false")), deployed())
        [mail] = plain.wait(1)
        assert not mail.tls and mail.login is None
    finally:
        controller.stop()
    assert not mailbox.received


def test_implicit_tls(certificate) -> None:
    mailbox, port = Mailbox(), free_port()
    # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; this whole connection is TLS
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, ssl_context=server_context(certificate),
                            auth_require_tls=False, authenticator=mailbox.authenticator)
    controller.start()
    try:
        url = Url.parse(f"mail://127.0.0.1:{port}/ops@example.com?tls=true&username={USER}&password={PASSWORD}")
        send(MailNotifier(url, ssl_context=client_context(certificate)), deployed())
        [mail] = mailbox.wait(1)
        assert mail.tls and mail.login == USER.encode()
        assert mail.message["Subject"] == "[dewy] site@web-1: deployed v1.2.3"
    finally:
        controller.stop()


def test_refused_connection_is_a_one_line_error() -> None:
    port = free_port()
    with pytest.raises(DewyError) as caught:
        send(MailNotifier(Url.parse(f"mail://127.0.0.1:{port}/ops@example.com?tls=false")), deployed())
    assert str(caught.value) == f"mail: sending to ops@example.com via 127.0.0.1:{port} failed: connection refused"


@pytest.mark.parametrize("raw, problem", [
    ("mail://smtp.example.com:587/", "missing recipient"),
    ("mail://smtp.example.com:587/ops", "recipient 'ops' is not a mail address"),
    ("mail:///ops@example.com", "missing server"),
    ("mail://smtp.example.com/ops@example.com?tls=maybe", "tls='maybe'"),
    ("mail://smtp.example.com/ops@example.com?user=x", "unknown query key 'user'; did you mean 'username'?"),
    ("mail://smtp.example.com/ops@example.com?username=x", "needs a password"),
    ("mail://smtp.example.com/ops@example.com?tls=false&username=x&password=hunter2", "refusing to send the password unencrypted"),
    ("mail://smtp.example.com/ops@example.com?from=nobody", "from 'nobody' is not a mail address"),
])
def test_bad_urls_fail_at_startup(raw: str, problem: str, monkeypatch) -> None:
    for name in ("MAIL_USERNAME", "MAIL_PASSWORD", "MAIL_FROM"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UsageError) as caught:
        MailNotifier(Url.parse(raw))
    assert problem in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_defaults() -> None:
    assert (MailNotifier(Url.parse("mail://smtp.example.com/a@example.com")).port, MailNotifier(
        Url.parse("mail://smtp.example.com/a@example.com")).tls) == (587, "starttls")
    implicit = MailNotifier(Url.parse("mail://smtp.example.com:465/a@example.com"))
    assert (implicit.port, implicit.tls) == (465, "implicit")
    relay = MailNotifier(Url.parse("smtp://localhost/a@example.com?tls=false&username=u&password=p"))
    assert (relay.port, relay.tls) == (25, "none")
    userinfo = MailNotifier(Url.parse("mail://bot%40example.com:p%40ss@smtp.example.com/a@example.com"))
    assert (userinfo.username, userinfo.password, userinfo.sender) == ("bot@example.com", "p@ss", "bot@example.com")


def test_dewy_process_mails_a_deploy_over_starttls(tmp_path, smtp, certificate) -> None:
    """The whole path in a real dewy: URL from the command line, SSL_CERT_FILE trust, smtplib in a thread."""
    mailbox, port = smtp
    publish(tmp_path / "registry", "v1.0.0", {"index.html": "one"})
    dewy = Dewy(["assets", "--registry", (tmp_path / "registry").as_uri(), "-i", "0.2", "-d", str(tmp_path / "site"),
                 "-c", (tmp_path / "cache").as_uri(), "--after-deploy-hook", "echo purged",
                 "--notifier", f"mail://127.0.0.1:{port}/ops@example.com?from=dewy@example.com"],
                cwd=tmp_path, env={"MAIL_USERNAME": USER, "MAIL_PASSWORD": PASSWORD, "SSL_CERT_FILE": str(certificate[0])})
    try:
        dewy.wait_for("deployed", version="v1.0.0")
        [mail] = mailbox.wait(1)
        hostname = mail.message["Subject"].split("@", 1)[1].split(":", 1)[0]
        assert mail.message["Subject"] == f"[dewy] site@{hostname}: deployed v1.0.0"
        body = mail.message.get_content().replace("\r\n", "\n")
        assert "Previous version: none" in body and "after hook output:\n    purged" in body
        assert mail.tls and mail.login == USER.encode()
    finally:
        assert dewy.stop() == 0
    assert not any(PASSWORD in str(record) for record in dewy.seen)
