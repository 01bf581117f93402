"""A real SMTP server on loopback (aiosmtpd, in its own thread) that keeps every mail, parsed
back with the standard library. `stop()` then `start()` on the same port is an SMTP outage."""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from tests.harness import free_port


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self.sink.lock:
            self.sink.mails.append(msg)
            self.sink.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key): also the CA a client trusts."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


class SmtpSink:
    """`tls`: None plain (no STARTTLS offered), "starttls" (offered and required, with AUTH
    for `credentials`), or "implicit" (TLS from the first byte)."""

    def __init__(self, port: int | None = None, *, tls: str | None = None,
                 cert: tuple[Path, Path] | None = None,
                 credentials: tuple[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.cert = cert
        self.credentials = credentials
        self.mails: list[EmailMessage] = []
        self.recipients: list[list[str]] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    def start(self) -> SmtpSink:
        kwargs: dict[str, Any] = {}
        if self.tls is not None:
            assert self.cert is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.cert)
            if self.tls == "starttls":
                kwargs |= {"tls_context": context, "require_starttls": True}
            else:
                # aiosmtpd cannot tell a wrapped socket is TLS: allow AUTH on it explicitly.
                kwargs |= {"ssl_context": context, "auth_require_tls": False}
        if self.credentials is not None:
            # AUTH offered; required only where aiosmtpd knows the session is TLS (STARTTLS).
            kwargs |= {"authenticator": self._authenticate,
                       "auth_required": self.tls == "starttls"}
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port,
                                      **kwargs)
        self._controller.start()
        return self

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        login = (auth_data.login.decode(), auth_data.password.decode())
        return AuthResult(success=login == self.credentials)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list[EmailMessage]:
        with self.lock:
            return list(self.mails)


def parts(msg: EmailMessage) -> tuple[str, str]:
    """The plain-text and HTML bodies of a multipart/alternative mail."""
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return tuple(p.get_content().replace("\r\n", "\n") for p in (text, html))  # type: ignore[return-value]
