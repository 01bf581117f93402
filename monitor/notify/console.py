"""`type: console`: one readable line per event on stdout, for the demo and for a first look.
Text from Box reaches a terminal here: every string goes out without control or bidirectional
characters (`monitor.safe_text`), so a status or a failure text cannot rewrite the screen."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import ClassVar, Literal, TextIO

import orjson

from monitor.model import Event, EventType
from monitor.notify.base import DeliveryResult, Notifier, NotifierConfig
from monitor.safe_text import clean, clean_data


class ConsoleConfig(NotifierConfig):
    type: Literal["console"] = "console"
    format: Literal["text", "json"] = "text"


def describe(event: Event, *, show_account: bool = False) -> str:
    """A one-line summary a person can read at a glance (its account first when asked)."""
    when = event.detected_at.strftime("%H:%M:%S")
    if show_account:
        when = f"{when} [{event.account}]"
    if event.type is EventType.BATCH_COMPLETED and event.batch is not None:
        counts = ", ".join(f"{n} {status}" for status, n in event.batch.counts.items())
        took = f" in {event.batch.duration_s:.1f}s" if event.batch.duration_s is not None else ""
        return f"{when} batch {event.batch.id} completed{took}: {counts}"
    if event.template is not None:
        t = event.template
        return (f"{when} template {t.id} version {t.version_id} fails "
                f"{t.failed_jobs}/{t.jobs} finished jobs ({100 * t.failure_ratio:.0f}%), "
                f"version {t.previous_version_id} failed {t.previous_failed_jobs}/"
                f"{t.previous_jobs} ({100 * t.previous_failure_ratio:.0f}%)")
    job = event.job
    where = f"job {job.id} (batch {job.batch_id}, {job.output_type})" if job else "job ?"
    if event.type is EventType.JOB_DISCOVERED:
        return f"{when} {where} discovered: {event.to_status}"
    if event.type is EventType.JOB_VANISHED:
        return f"{when} {where} vanished (was {event.from_status})"
    if event.type is EventType.JOB_REAPPEARED:
        return f"{when} {where} reappeared: {event.to_status}"
    return f"{when} {where} {event.from_status} -> {event.to_status}"


class ConsoleNotifier(Notifier):
    type_name: ClassVar[str] = "console"
    config_model: ClassVar[type[NotifierConfig]] = ConsoleConfig
    config: ConsoleConfig

    def __init__(
        self, config: NotifierConfig, *, timeout_s: float, stream: TextIO | None = None
    ) -> None:
        super().__init__(config, timeout_s=timeout_s)
        self.stream = stream

    async def send(self, events: Sequence[Event]) -> DeliveryResult:
        out = self.stream or sys.stdout
        for event in events:
            if self.config.format == "json":
                out.write(orjson.dumps(clean_data(event.wire())).decode() + "\n")
            else:
                out.write(clean(describe(event, show_account=self.show_account)) + "\n")
        out.flush()
        return DeliveryResult.delivered()
