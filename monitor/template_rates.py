"""Failure ratio per template version, and `template.failure_rate_rose` when a new version of a
template fails markedly more than the previous one.

A version's ratio is its failed and completed-with-error jobs over its finished jobs, counted
over the snapshot's jobs that finished within the window (by `changed_at`). Versions are
ordered by when the monitor first saw a job of theirs. Only versions with at least `min_jobs`
finished jobs count; the newest two of those are compared, and the rise must pass both the
absolute `min_increase` (0.1: ten points) and the relative `min_factor` (2: twice the old
ratio), so that 30% -> 41% (noise) stays quiet and 2% -> 15% does not.

The Recorder folds the commit's own changes into the stored counts before deciding, so the
event commits with the snapshot rows that caused it. Its id names the template and the two
versions: the same regression is one event, whatever replays. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from monitor.config import TemplateFailuresConfig
from monitor.model import Event, EventTemplate, EventType, JobState, is_terminal

FAILED_STATUSES = frozenset({"failed", "completed_with_error"})


@dataclass(frozen=True, slots=True)
class RatePolicy:
    """`enabled` off: no counting, no event. Defaults: config.TemplateFailuresConfig."""

    enabled: bool = True
    window_s: float = 86_400.0
    min_jobs: int = 20
    min_increase: float = 0.1
    min_factor: float = 2.0


def policy_of(config: TemplateFailuresConfig) -> RatePolicy:
    return RatePolicy(config.enabled, config.window, config.min_jobs, config.min_increase,
                      config.min_factor)


@dataclass(slots=True)
class VersionCounts:
    """Finished and failed jobs of one template version in the window, and when the monitor
    first saw one of them (orders the versions)."""

    jobs: int = 0
    failed: int = 0
    first_seen_at: float = float("inf")

    @property
    def ratio(self) -> float:
        return self.failed / self.jobs if self.jobs else 0.0


#: (template file id, template file version id) -> counts
Counts = dict[tuple[str, str], VersionCounts]


def counted(job: JobState, since: float) -> bool:
    """A finished job of a known version, within the window."""
    return (
        job.template_file_version_id is not None
        and is_terminal(job.status)
        and job.changed_at >= since
    )


def finished_templates(upserts: Iterable[JobState], before: Mapping[str, JobState]) -> set[str]:
    """Templates with a job that finished in this commit: only their ratios can have moved."""
    out = set()
    for job in upserts:
        old = before.get(job.id)
        if job.template_file_version_id is not None and is_terminal(job.status) and (
            old is None or old.status != job.status
        ):
            out.add(job.template_file_id)
    return out


def fold(
    counts: Counts,
    templates: set[str],
    upserts: Iterable[JobState],
    removed: Iterable[JobState],
    before: Mapping[str, JobState],
    since: float,
) -> Counts:
    """`counts` (the stored rows) as they will be once this commit's rows are written:
    each upserted job's old row leaves its version's counts and the new one enters (for the
    jobs of `templates`, the ones `counts` was read for)."""

    def add(job: JobState, sign: int) -> None:
        if job.template_file_id not in templates or not counted(job, since):
            return
        assert job.template_file_version_id is not None
        c = counts.setdefault((job.template_file_id, job.template_file_version_id),
                              VersionCounts())
        c.jobs += sign
        c.failed += sign * (job.status in FAILED_STATUSES)
        if sign > 0:
            c.first_seen_at = min(c.first_seen_at, job.first_seen_at)

    for job in upserts:
        old = before.get(job.id)
        if old is not None:
            add(old, -1)
        add(job, 1)
    for job in removed:
        add(job, -1)
    return counts


def rise_id(template_id: str, previous: str, version: str) -> str:
    return f"template:{template_id}:{previous}:{version}:failure_rate_rose"


def rises(counts: Counts, policy: RatePolicy, now: float) -> list[Event]:
    """One `template.failure_rate_rose` per template whose newest qualifying version fails
    markedly more than the qualifying one before it."""
    by_template: dict[str, list[tuple[str, VersionCounts]]] = {}
    for (template_id, version), c in counts.items():
        if c.jobs >= policy.min_jobs:
            by_template.setdefault(template_id, []).append((version, c))
    events = []
    for template_id, versions in sorted(by_template.items()):
        if len(versions) < 2:
            continue
        versions.sort(key=lambda vc: (vc[1].first_seen_at, vc[0]))
        (previous, old), (version, new) = versions[-2:]
        if not _marked(old.ratio, new.ratio, policy):
            continue
        events.append(Event(
            id=rise_id(template_id, previous, version),
            type=EventType.TEMPLATE_FAILURE_RATE_ROSE,
            detected_at=datetime.fromtimestamp(now, UTC),
            template=EventTemplate(
                id=template_id, version_id=version, failure_ratio=round(new.ratio, 4),
                jobs=new.jobs, failed_jobs=new.failed, previous_version_id=previous,
                previous_failure_ratio=round(old.ratio, 4), previous_jobs=old.jobs,
                previous_failed_jobs=old.failed, window_s=policy.window_s,
            ),
        ))
    return events


def _marked(old: float, new: float, policy: RatePolicy) -> bool:
    slack = 1e-9  # ratios are floats: 0.3 - 0.2 is a hair under 0.1
    return new - old >= policy.min_increase - slack and new >= old * policy.min_factor - slack
