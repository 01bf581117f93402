"""Text for people: escaping of untrusted text, the template context, and sandboxed Jinja2.

Everything Box reports about a job (error texts, ids, and whatever the batch's submitter put in
file names) is untrusted. In Slack mrkdwn exactly `&`, `<` and `>` are control characters, so
`<!channel>` or `<https://evil|click>` in an error text would page a channel or spoof a link;
escaping those three turns them into literal text. HTML mail is autoescaped by Jinja2. Every
untrusted text is also capped, so one giant error cannot push a message over Slack's limits.

Templates run in Jinja2's `SandboxedEnvironment` (a template file is configuration, and
configuration should not be able to run code). Template variables are documented in
`docs/notifications.md`."""

from __future__ import annotations

import html
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import ChoiceLoader, FileSystemLoader, PackageLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from monitor.failures import FailureGroup, group_failures
from monitor.model import Event, EventTemplate, EventType, JobState, is_terminal

if TYPE_CHECKING:
    from monitor.store.base import SnapshotReader

MAX_TEXT_CHARS = 300  # one untrusted text (an error message) in a message
MAX_TEXTS_PER_JOB = 3
FAILED_STATUSES = frozenset({"failed", "completed_with_error"})
STATUS_ORDER = ("pending", "submitted", "completed", "completed_with_error", "failed")


def cap(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """At most `limit` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def escape_mrkdwn(value: object) -> str:
    """Literal text for Slack mrkdwn: `&`, `<`, `>` as entities (Slack decodes only these three;
    `html.escape(quote=False)` replaces exactly them, `&` first)."""
    return html.escape(str(value), quote=False)


def _finalize_mrkdwn(value: object) -> object:
    # Applied to every `{{ expression }}` of a Slack template: template text itself is trusted
    # mrkdwn, anything interpolated is escaped. Numbers pass through unchanged.
    if value is None:
        return ""
    if isinstance(value, int | float):
        return value
    return escape_mrkdwn(value)


@dataclass(frozen=True, slots=True)
class FailedJob:
    """A failed or completed-with-error job as a template sees it (texts capped, raw)."""

    id: str
    status: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    output_type: str
    template_file_id: str
    created_by_id: str | None
    more_texts: int = 0


@dataclass(frozen=True, slots=True)
class FailureLine:
    """One group of failed jobs sharing an error signature (`monitor.failures`), as a
    message shows it: "42 jobs (failed): The tag '…' was not provided — e.g. customer_name,
    city". Texts are capped here and escaped by the template's environment."""

    jobs: int
    signature: str
    statuses: str  # "failed", or "2 failed, 1 completed_with_error"
    examples: tuple[str, ...]  # the values that vary (tag names, file names)
    text: str  # one raw error text of the group, whole (capped)
    job_ids: tuple[str, ...]  # a few of its jobs, to look up

    @property
    def more_jobs(self) -> int:
        return self.jobs - len(self.job_ids)

    @classmethod
    def of(cls, group: FailureGroup) -> FailureLine:
        statuses = sorted(group.statuses.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls(
            jobs=group.jobs,
            signature=cap(group.signature),
            statuses=(statuses[0][0] if len(statuses) == 1
                      else ", ".join(f"{n} {s}" for s, n in statuses)),
            examples=tuple(group.examples),
            text=cap(group.texts[0]) if group.texts else "",
            job_ids=tuple(cap(j, 80) for j in group.job_ids),
        )


def failure_lines(jobs: Iterable[JobState]) -> tuple[FailureLine, ...]:
    """Failed jobs grouped by signature, largest group first."""
    return tuple(FailureLine.of(g) for g in group_failures(jobs))


def event_state(event: Event) -> JobState:
    """The job a failure event announces, as `group_failures` takes it."""
    assert event.job is not None
    job = event.job
    return JobState(job.id, job.batch_id, event.to_status or job.status or "",
                    job.template_file_id, job.output_type, job.output_file_id,
                    created_by_id=job.created_by_id, changed_at=event.detected_at.timestamp(),
                    errors=job.errors, warnings=job.warnings)


@dataclass(frozen=True, slots=True)
class BatchView:
    """One batch as a message shows it: counts and failures from the stored snapshot (the
    truth, whatever events this message carries)."""

    id: str
    counts: dict[str, int]
    total: int
    done: int
    complete: bool
    elapsed_s: float
    template_file_ids: tuple[str, ...]
    output_types: tuple[str, ...]
    failures: tuple[FailedJob, ...] = ()
    failure_groups: tuple[FailureLine, ...] = ()
    events: tuple[Event, ...] = field(default=())
    account: str | None = None  # the Box account, shown when several are configured

    @property
    def failed_count(self) -> int:
        return sum(self.counts.get(s, 0) for s in FAILED_STATUSES)

    def progress_bar(self, width: int = 20) -> str:
        filled = round(width * self.done / self.total) if self.total else 0
        return "█" * filled + "░" * (width - filled)

    def context(self, **extra: Any) -> dict[str, Any]:
        statuses = [s for s in STATUS_ORDER if s in self.counts]
        statuses += sorted(s for s in self.counts if s not in STATUS_ORDER)
        return {
            "batch": self,
            "counts": [(s, self.counts[s]) for s in statuses],
            "progress_bar": self.progress_bar(),
            "percent": round(100 * self.done / self.total) if self.total else 0,
            "elapsed": format_duration(self.elapsed_s),
            "failures": self.failures,
            "failure_groups": self.failure_groups,
            "events": [e.wire() for e in self.events],
            "account": self.account,
            **extra,
        }


def format_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def is_failure(event: Event) -> bool:
    """A job that reached a failed outcome, including one first seen (or seen again after a
    vanish) already failed."""
    return (
        event.type
        in (EventType.JOB_STATUS_CHANGED, EventType.JOB_DISCOVERED, EventType.JOB_REAPPEARED)
        and event.to_status in FAILED_STATUSES
    )


def failed_job(event: Event) -> FailedJob:
    """The failed job an event announces, with its texts as the event carries them."""
    assert event.job is not None
    job = event.job
    return _failed(job.id, event.to_status or "", job.errors, job.warnings, job.output_type,
                   job.template_file_id, job.created_by_id)


def _failed(
    job_id: str,
    status: str,
    errors: tuple[str, ...],
    warnings: tuple[str, ...],
    output_type: str,
    template_file_id: str,
    created_by_id: str | None,
) -> FailedJob:
    kept_warnings = max(MAX_TEXTS_PER_JOB - len(errors), 0)
    return FailedJob(
        id=job_id,
        status=status,
        errors=tuple(cap(t) for t in errors[:MAX_TEXTS_PER_JOB]),
        warnings=tuple(cap(t) for t in warnings[:kept_warnings]),
        output_type=output_type,
        template_file_id=template_file_id,
        created_by_id=created_by_id,
        more_texts=max(len(errors) + len(warnings) - MAX_TEXTS_PER_JOB, 0),
    )


def batch_view(
    batch_id: str, jobs: Iterable[JobState], events: Sequence[Event], now: float
) -> BatchView:
    """The view of `batch_id` from its snapshot rows (failures too: a digest is whole however
    the batch's events were split into sends); from the events alone when the snapshot has none
    (a sample event from `test-notify`)."""
    rows = sorted((j for j in jobs if j.batch_id == batch_id), key=lambda j: j.id)
    failures = tuple(failed_job(e) for e in events if is_failure(e))
    groups = failure_lines(event_state(e) for e in events if is_failure(e))
    if rows:
        failed = [j for j in rows if j.status in FAILED_STATUSES]
        failures = tuple(
            _failed(j.id, j.status, j.errors, j.warnings, j.output_type, j.template_file_id,
                    j.created_by_id)
            for j in failed
        )
        groups = failure_lines(failed)
        counts = Counter(j.status for j in rows)
        complete = all(is_terminal(j.status) for j in rows)
        started = min(j.first_seen_at for j in rows)
        finished = max(j.changed_at for j in rows) if complete else now
        templates = sorted({j.template_file_id for j in rows})
        outputs = sorted({j.output_type for j in rows})
    else:
        counts = Counter()
        for e in events:
            if e.batch is not None:
                counts = Counter(e.batch.counts)  # a completion's counts are the whole batch
                break
        else:
            counts.update(e.to_status for e in events if e.job is not None and e.to_status)
        complete = any(e.type is EventType.BATCH_COMPLETED for e in events)
        started = finished = now
        templates = sorted({e.job.template_file_id for e in events if e.job})
        outputs = sorted({e.job.output_type for e in events if e.job})
    total = sum(counts.values())
    done = sum(n for s, n in counts.items() if is_terminal(s))
    return BatchView(
        id=batch_id,
        counts=dict(counts),
        total=total,
        done=done,
        complete=complete,
        elapsed_s=max(finished - started, 0.0),
        template_file_ids=tuple(templates),
        output_types=tuple(outputs),
        failures=failures,
        failure_groups=groups,
        events=tuple(events),
    )


class Templates:
    """Named templates of one notifier: files in `template_dir` override the built-ins.

    `kind` "mrkdwn" escapes every interpolated value for Slack; "html" autoescapes for HTML;
    "text" leaves values as they are (plain-text mail)."""

    def __init__(self, template_dir: str | None = None) -> None:
        loaders: list[Any] = [PackageLoader("monitor.notify", "templates")]
        if template_dir is not None:
            loaders.insert(0, FileSystemLoader(Path(template_dir)))
        loader = ChoiceLoader(loaders)
        common: dict[str, Any] = {
            "loader": loader,
            "undefined": StrictUndefined,
            "trim_blocks": True,
            "lstrip_blocks": True,
            "keep_trailing_newline": False,
        }
        self._envs = {
            "mrkdwn": SandboxedEnvironment(autoescape=False, finalize=_finalize_mrkdwn, **common),
            "html": SandboxedEnvironment(autoescape=True, **common),
            "text": SandboxedEnvironment(autoescape=False, **common),
        }
        for env in self._envs.values():
            env.filters["cap"] = cap

    def render(self, kind: str, name: str, context: Mapping[str, Any]) -> str:
        return self._envs[kind].get_template(name).render(**context).strip()

    def check(self, names: Iterable[tuple[str, str]], context: Mapping[str, Any]) -> list[str]:
        """Render each (kind, name) against `context`; one problem per template that fails."""
        problems = []
        for kind, name in names:
            try:
                self.render(kind, name, context)
            except TemplateError as exc:
                problems.append(f"template {name}: {type(exc).__name__}: {exc}")
        return problems


async def load_batch_view(
    store: SnapshotReader | None,
    batch_id: str,
    events: Sequence[Event],
    *,
    account: str | None = None,
) -> BatchView:
    """`batch_view` over the batch's stored snapshot rows (none without a store); `account`
    names the Box account in the message (None: not shown, the only one configured)."""
    jobs = (await store.load_batches([batch_id])).values() if store is not None else ()
    view = batch_view(batch_id, jobs, events, time.time())
    return view if account is None else replace(view, account=account)


def by_batch(events: Sequence[Event]) -> dict[str, list[Event]]:
    """Events by batch id, in order (a message is about one batch). Template events
    (`template.failure_rate_rose`) belong to no batch: `template_events` takes them."""
    out: dict[str, list[Event]] = {}
    for event in events:
        if event.template is None:
            out.setdefault(event.batch_id or "", []).append(event)
    return out


def template_events(events: Sequence[Event]) -> list[Event]:
    """The events about a template rather than a batch: each is a message of its own."""
    return [e for e in events if e.template is not None]


#: The template that renders a `template.failure_rate_rose` (every notifier, its own escaping).
RISE_TEMPLATE = "template_rise.j2"


def rise_context(template: EventTemplate) -> dict[str, Any]:
    """The variables of `template_rise.j2`."""
    return {
        "template": template,
        "percent": _percent(template.failure_ratio),
        "previous_percent": _percent(template.previous_failure_ratio),
        "window": format_duration(template.window_s),
    }


def rise_subject(template: EventTemplate) -> str:
    """A mail subject (or chat title) for a rise: one line, capped."""
    return cap(f"[docgen-monitor] Template {template.id}: failure rate rose to "
               f"{_percent(template.failure_ratio)}% (version {template.version_id})", 200)


def _percent(ratio: float) -> str:
    return f"{100 * ratio:.0f}"


def sample_rise() -> EventTemplate:
    """The rise `check-config` renders `template_rise.j2` against."""
    return EventTemplate(
        id="sample-template <!channel>", version_id="2", failure_ratio=0.35, jobs=40,
        failed_jobs=14, previous_version_id="1", previous_failure_ratio=0.05, previous_jobs=60,
        previous_failed_jobs=3, window_s=86400.0,
    )


def sample_context(**extra: Any) -> dict[str, Any]:
    """The template context of the sample batch: what `check-config` renders against."""
    now = time.time()
    return batch_view("sample-batch", (), sample_events(now), now).context(**extra)


def sample_events(now: float, test_run: str | None = None) -> list[Event]:
    """A small batch with a failure whose texts try every injection: what `test-notify` sends
    and `check-config` renders templates against. With `test_run` (a fresh id per run) the
    event ids carry it, so a receiver that drops repeats by id takes every run, and the
    payload says `"test": true`."""
    from datetime import UTC, datetime

    from monitor.model import EventBatch, EventJob

    at = datetime.fromtimestamp(now, UTC)
    prefix = f"test-{test_run}:" if test_run else ""
    extra: dict[str, object] = {"test": True} if test_run else {}
    job = EventJob(
        id="sample-job-1",
        batch_id="sample-batch",
        status="failed",
        template_file_id="sample-template",
        output_file_id=None,
        output_type="pdf",
        created_by_id="sample-user",
        errors=("Sample error for <!channel> & <@U123> <https://evil.example|click> <script>",),
    )
    return [
        Event(
            id=f"{prefix}sample-job-1:2:submitted:failed",
            type=EventType.JOB_STATUS_CHANGED,
            detected_at=at,
            from_status="submitted",
            to_status="failed",
            job=job,
            extra=extra,
        ),
        Event(
            id=f"{prefix}sample-batch:completed:2",
            type=EventType.BATCH_COMPLETED,
            detected_at=at,
            batch=EventBatch(
                id="sample-batch", counts={"completed": 1, "failed": 1}, duration_s=12.0
            ),
            extra=extra,
        ),
    ]
