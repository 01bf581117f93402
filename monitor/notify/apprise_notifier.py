"""`type: apprise` (extra `[apprise]`): Teams, Discord, PagerDuty, Telegram, ntfy and the rest of
Apprise's services, one URL each. Registered through the entry point group
`docgen_monitor.notifiers` exactly as a third-party plugin would be; the module imports without
apprise installed, so a missing extra breaks only this type, with a clear message.

Each group flush becomes one notification: title and body from the plain-text mail templates
(`email_subject.j2`, `email_body.txt.j2`), so a batch reads the same everywhere."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from monitor.config import DurationS
from monitor.model import Event
from monitor.notify.base import DeliveryResult, GroupField, Notifier, NotifierConfig
from monitor.notify.render import (
    RISE_TEMPLATE,
    Templates,
    by_batch,
    rise_context,
    rise_subject,
    sample_context,
    sample_rise,
    template_events,
)

MISSING = "apprise is not installed: pip install 'docgen-monitor[apprise]'"


class AppriseConfig(NotifierConfig):
    type: Literal["apprise"] = "apprise"
    urls: list[SecretStr] = Field(min_length=1)  # Apprise URLs carry their services' tokens
    template_dir: str | None = None
    group_by: list[GroupField] | None = ["batch"]  # noqa: RUF012 (pydantic copies it)
    group_wait: DurationS = 30.0
    group_interval: DurationS = 300.0


class AppriseNotifier(Notifier):
    type_name: ClassVar[str] = "apprise"
    config_model: ClassVar[type[NotifierConfig]] = AppriseConfig
    config: AppriseConfig

    def __init__(self, config: NotifierConfig, *, timeout_s: float) -> None:
        super().__init__(config, timeout_s=timeout_s)
        self.templates = Templates(self.config.template_dir)

    def check_templates(self) -> list[str]:
        if importlib.util.find_spec("apprise") is None:
            return [MISSING]
        names = [("text", "email_subject.j2"), ("text", "email_body.txt.j2")]
        problems = self.templates.check(names, sample_context())
        return problems + self.templates.check([("text", RISE_TEMPLATE)],
                                               rise_context(sample_rise()))

    async def send(self, events: Sequence[Event]) -> DeliveryResult:
        try:
            import apprise
        except ImportError:
            return DeliveryResult.failed(MISSING)
        # One notification per batch, and one per template event (no batch).
        messages: list[tuple[str, str, list[Event]]] = []
        for batch_id, batch_events in by_batch(events).items():
            context = (await self.batch_view(batch_id, batch_events)).context()
            messages.append((self.templates.render("text", "email_subject.j2", context),
                             self.templates.render("text", "email_body.txt.j2", context),
                             batch_events))
        for event in template_events(events):
            assert event.template is not None
            body = self.templates.render("text", RISE_TEMPLATE, rise_context(event.template))
            messages.append((rise_subject(event.template), body, [event]))
        settled: set[str] = set()
        for title, body, sent in messages:
            client: Any = apprise.Apprise()
            for url in self.config.urls:
                client.add(url.get_secret_value())
            ok = await client.async_notify(title=title, body=body)
            if not ok:
                # Apprise logs the per-service cause; its URLs are secrets, so none here.
                return DeliveryResult.failed("apprise: a service refused", settled=settled)
            settled |= {e.id for e in sent}
        return DeliveryResult.delivered(f"{len(messages)} notification(s)")
