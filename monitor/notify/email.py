"""`type: email`: digests on aiosmtplib, multipart text + HTML from templates.

One mail per batch instead of one per job: with `digest: batch` (the default) a batch's events
are held (in the outbox, so a restart keeps them) until the batch is complete or its oldest
event has waited `digest_max_wait`; with `digest: window` each group flush (`group_by`,
`group_wait`, `group_interval`) becomes one mail. Every mail of a batch carries
`In-Reply-To`/`References` naming the batch's thread id, so mail clients thread them together.

HTML is autoescaped by Jinja2, the plain-text part is plain text: untrusted Box texts cannot
inject markup (see `render.py`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import ClassVar, Literal

import aiosmtplib
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from monitor.config import DurationS
from monitor.model import Event
from monitor.notify.base import DeliveryResult, GroupField, Notifier, NotifierConfig
from monitor.notify.render import (
    RISE_TEMPLATE,
    Templates,
    by_batch,
    cap,
    rise_context,
    rise_subject,
    sample_context,
    sample_rise,
    template_events,
)


class SmtpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True  # upgrade a plain connection (port 587)
    tls: bool = False  # implicit TLS from the first byte (port 465)
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = None  # a private CA that signed the relay's certificate

    @model_validator(mode="after")
    def _one_tls(self) -> SmtpConfig:
        if self.starttls and self.tls:
            raise ValueError("starttls and tls exclude each other (tls: implicit TLS, port 465)")
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither")
        return self


class EmailConfig(NotifierConfig):
    type: Literal["email"] = "email"
    from_: str = Field(alias="from", min_length=3)
    to: list[str] = Field(min_length=1)
    smtp: SmtpConfig
    template_dir: str | None = None
    digest: Literal["batch", "window"] = "batch"
    digest_max_wait: DurationS = 3600.0  # a batch that never completes still gets its mail
    group_by: list[GroupField] | None = ["batch"]  # noqa: RUF012 (pydantic copies it)
    group_wait: DurationS = 30.0
    group_interval: DurationS = 60.0


class EmailNotifier(Notifier):
    type_name: ClassVar[str] = "email"
    config_model: ClassVar[type[NotifierConfig]] = EmailConfig
    config: EmailConfig

    def __init__(self, config: NotifierConfig, *, timeout_s: float) -> None:
        super().__init__(config, timeout_s=timeout_s)
        self.templates = Templates(self.config.template_dir)
        self.domain = self.config.from_.rpartition("@")[2] or "docgen-monitor"

    def check_templates(self) -> list[str]:
        names = [("text", "email_subject.j2"), ("text", "email_body.txt.j2"),
                 ("html", "email_body.html.j2")]
        problems = self.templates.check(names, sample_context())
        rise = rise_context(sample_rise())
        return problems + self.templates.check([("text", RISE_TEMPLATE),
                                                ("html", RISE_TEMPLATE)], rise)

    async def send(self, events: Sequence[Event]) -> DeliveryResult:
        groups = by_batch(events)
        held: set[str] = set()
        settled: set[str] = set()
        sent = 0
        for batch_id, batch_events in groups.items():
            view = await self.batch_view(batch_id, batch_events)
            oldest = min(e.detected_at.timestamp() for e in batch_events)
            waiting = time.time() - oldest < self.config.digest_max_wait
            if self.config.digest == "batch" and not view.complete and waiting:
                held |= {e.id for e in batch_events}
                continue
            # A complete batch's digest shows the whole batch from the snapshot, so rows that
            # come late (a claim split the group) need no second mail.
            marker = f"digest-sent:{batch_id}"
            final = self.config.digest == "batch" and view.complete
            if final and self.store and await self.store.group_flushed_at(self.name, marker):
                settled |= {e.id for e in batch_events}
                continue
            try:
                await self._mail(self.message(view.context(), batch_id, batch_events))
            except (aiosmtplib.SMTPException, OSError) as exc:
                return DeliveryResult.failed(
                    f"smtp: {type(exc).__name__}: {cap(str(exc), 200)}", settled=settled,
                    held=held,
                )
            if final and self.store is not None:
                await self.store.set_group_flushed(self.name, marker, time.time())
            settled |= {e.id for e in batch_events}
            sent += 1
        for event in template_events(events):  # a mail of its own, at once (no batch to wait on)
            try:
                await self._mail(self.rise_message(event))
            except (aiosmtplib.SMTPException, OSError) as exc:
                return DeliveryResult.failed(
                    f"smtp: {type(exc).__name__}: {cap(str(exc), 200)}", settled=settled,
                    held=held,
                )
            settled.add(event.id)
            sent += 1
        return DeliveryResult.delivered(f"{sent} mail(s)", held=held)

    def rise_message(self, event: Event) -> EmailMessage:
        """A `template.failure_rate_rose` mail: text and HTML from `template_rise.j2`."""
        assert event.template is not None
        context = rise_context(event.template)
        msg = self._envelope(rise_subject(event.template))
        digest = hashlib.sha256(event.id.encode()).hexdigest()[:16]
        msg["Message-ID"] = f"<rise.{digest}@{self.domain}>"
        msg.set_content(self.templates.render("text", RISE_TEMPLATE, context) + "\n")
        msg.add_alternative(
            "<html><body>" + self.templates.render("html", RISE_TEMPLATE, context)
            + "</body></html>\n", subtype="html",
        )
        return msg

    def _envelope(self, subject: str) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = cap(" ".join(subject.split()), 200)  # one line, bounded
        msg["From"] = self.config.from_
        msg["To"] = ", ".join(self.config.to)
        msg["Date"] = formatdate(localtime=False)
        return msg

    def message(self, context: dict[str, object], batch_id: str,
                events: Sequence[Event]) -> EmailMessage:
        msg = self._envelope(self.templates.render("text", "email_subject.j2", context))
        # Stable per content: a re-sent mail (crash after send) keeps its Message-ID.
        digest = hashlib.sha256("\n".join(e.id for e in events).encode()).hexdigest()[:16]
        safe_batch = "".join(c for c in batch_id if c.isalnum() or c in "-_") or "none"
        thread = f"<batch-{safe_batch}@{self.domain}>"
        msg["Message-ID"] = f"<batch-{safe_batch}.{digest}@{self.domain}>"
        msg["In-Reply-To"] = thread
        msg["References"] = thread
        msg.set_content(self.templates.render("text", "email_body.txt.j2", context) + "\n")
        msg.add_alternative(
            self.templates.render("html", "email_body.html.j2", context) + "\n", subtype="html"
        )
        return msg

    async def _mail(self, msg: EmailMessage) -> None:
        smtp = self.config.smtp
        await aiosmtplib.send(
            msg,
            hostname=smtp.host,
            port=smtp.port,
            use_tls=smtp.tls,
            start_tls=smtp.starttls,
            username=smtp.username,
            password=smtp.password.get_secret_value() if smtp.password else None,
            cert_bundle=smtp.ca_file,
            timeout=self.timeout_s,
        )
