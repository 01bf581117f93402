"""Every metric, defined once, on a registry passed in (never the process-wide default), so that
each test and each daemon instance has its own. Metrics about a Box account's work carry an
`account` label whose values are only the configured account names. No label ever carries a job
or batch id, and no label carries text from Box as it is: a job status label is one of Box's
five or `unknown`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.samples import Sample

from monitor import __version__
from monitor.model import DEFAULT_ACCOUNT, KNOWN_STATUSES

_JOB_BUCKETS_S = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DETECTION_BUCKETS_S = (0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300, 600)
_LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


M = TypeVar("M", Counter, Gauge, Histogram)


class Labelled(Generic[M]):
    """One account's part of a labelled metric: `labels(...)` takes the other labels only."""

    def __init__(self, metric: M, account: str) -> None:
        self._metric: M = metric
        self._account = account

    def labels(self, *values: str, **named: str) -> M:
        if named:
            return self._metric.labels(account=self._account, **named)
        return self._metric.labels(self._account, *values)

    def remove(self, *values: str) -> None:
        self._metric.remove(self._account, *values)

    def samples(self) -> Iterator[Sample]:
        """This account's samples (`_total`, `_bucket`, ... included)."""
        for family in self._metric.collect():
            for sample in family.samples:
                if sample.labels.get("account") == self._account:
                    yield sample


class _Families:
    """Every collector, registered once on a registry; the ones about an account's work carry
    `account` first among their labels (its values only the configured account names)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs = Gauge(
            "box_docgen_jobs", "Jobs in the snapshot, by status.", ["account", "status"], registry=r
        )
        self.job_transitions = Counter(
            "box_docgen_job_transitions",
            "Job status changes detected.",
            ["account", "from_status", "to_status"],
            registry=r,
        )
        self.events = Counter(
            "box_docgen_events", "Events emitted, by type.", ["account", "type"], registry=r
        )
        self.unknown_statuses = Counter(
            "box_docgen_unknown_status",
            "Jobs seen with a status this build does not know (treated as non-terminal).",
            labelnames=["account"],
            registry=r,
        )
        self.poll_duration = Histogram(
            "box_docgen_poll_duration_seconds",
            "Wall time of one poll, by kind.",
            ["account", "kind"],
            buckets=_DURATION_BUCKETS_S,
            registry=r,
        )
        self.polls = Counter(
            "box_docgen_polls",
            "Polls finished, by kind and outcome.",
            ["account", "kind", "outcome"],
            registry=r,
        )
        self.poll_last_success = Gauge(
            "box_docgen_poll_last_success_timestamp_seconds",
            "Unix time the last complete sweep was committed.",
            labelnames=["account"],
            registry=r,
        )
        self.api_requests = Counter(
            "box_docgen_api_requests",
            "HTTP requests to Box, by endpoint and status code ('error' when no answer).",
            ["account", "endpoint", "code"],
            registry=r,
        )
        self.api_request_duration = Histogram(
            "box_docgen_api_request_duration_seconds",
            "Wall time of one HTTP request to Box, by endpoint.",
            ["account", "endpoint"],
            buckets=_DURATION_BUCKETS_S,
            registry=r,
        )
        self.api_retries = Counter(
            "box_docgen_api_retries",
            "Box requests retried, by reason.",
            ["account", "reason"],
            registry=r,
        )
        self.auth_failures = Counter(
            "box_docgen_auth_failures",
            "Token requests that got no token, by reason (invalid_client, invalid_grant, "
            "unauthorized, server_error, network, other).",
            ["account", "reason"],
            registry=r,
        )
        self.retry_after_clamped = Counter(
            "box_docgen_retry_after_clamped",
            "Retry-After values from Box longer than box.max_retry_after, cut down to it.",
            labelnames=["account"],
            registry=r,
        )
        self.notifications = Counter(
            "box_docgen_notifications",
            "Delivery attempts, by notifier and outcome (delivered, retry, dead, silenced).",
            ["account", "notifier", "outcome"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            "box_docgen_outbox_pending",
            "Events waiting for delivery (pending or in flight), by notifier.",
            ["account", "notifier"],
            registry=r,
        )
        self.outbox_dead = Gauge(
            "box_docgen_outbox_dead",
            "Events that failed for delivery.give_up_after (or max_attempts), by notifier.",
            ["account", "notifier"],
            registry=r,
        )
        self.job_duration = Histogram(
            "box_docgen_job_duration_seconds",
            "Time from a job's created_at (or first sighting) to its terminal status, by outcome.",
            ["account", "outcome"],
            buckets=_JOB_BUCKETS_S,
            registry=r,
        )
        self.active_batches = Gauge(
            "box_docgen_active_batches",
            "Batches in the active set (non-terminal jobs, or watched), polled every interval.",
            labelnames=["account"],
            registry=r,
        )
        self.detection_lag = Gauge(
            "box_docgen_detection_lag_seconds",
            "Age of the oldest observation among active batches (0 when none is active).",
            labelnames=["account"],
            registry=r,
        )
        self.budget_used = Counter(
            "box_docgen_request_budget_used",
            "Box requests granted by the request budget.",
            labelnames=["account"],
            registry=r,
        )
        self.budget_available = Gauge(
            "box_docgen_request_budget_available",
            "Requests the budget could grant at once (0 while Box's retry-after pauses all).",
            labelnames=["account"],
            registry=r,
        )
        self.budget_rate = Gauge(
            "box_docgen_request_budget_rate_per_minute",
            "The budget's current rate: the configured ceiling, shrunk after 429s (AIMD).",
            labelnames=["account"],
            registry=r,
        )
        self.discovery_lag = Gauge(
            "box_docgen_discovery_lag_seconds",
            "Seconds since the listing's head was last read (discovery or sweep).",
            labelnames=["account"],
            registry=r,
        )
        self.listing_newest_first = Gauge(
            "box_docgen_listing_newest_first",
            "1 if the last discovery read proved the listing newest-first, else 0 (head only).",
            labelnames=["account"],
            registry=r,
        )
        self.degradation = Gauge(
            "box_docgen_degradation_level",
            "0 normal, 1 sweep interval stretched, 2 active interval stretched too.",
            labelnames=["account"],
            registry=r,
        )
        self.effective_interval = Gauge(
            "box_docgen_effective_interval_seconds",
            "Poll interval in force after degradation, by kind (sweep, active).",
            ["account", "kind"],
            registry=r,
        )
        self.event_loop_lag = Histogram(
            "box_docgen_event_loop_lag_seconds",
            "How late the event loop woke a sampling task (a stall delays every task at once).",
            buckets=_LAG_BUCKETS_S,
            registry=r,
        )
        self.listing_invalid_entries = Counter(
            "box_docgen_listing_invalid_entries",
            "Listing entries set aside as malformed (job left as it was; no vanish that sweep).",
            labelnames=["account"],
            registry=r,
        )
        self.listing_misses = Counter(
            "box_docgen_listing_misses",
            "Jobs a complete listing missed that Box still returned by id (the listing shifted).",
            labelnames=["account"],
            registry=r,
        )
        self.listing_regressions = Counter(
            "box_docgen_listing_regressions",
            "Listing entries older than a committed terminal status (ignored).",
            labelnames=["account"],
            registry=r,
        )
        self.listing_conflicts = Counter(
            "box_docgen_listing_conflicts",
            "Job ids one listing showed with different statuses (settled by reading the job).",
            labelnames=["account"],
            registry=r,
        )
        self.vanish_confirmations = Counter(
            "box_docgen_vanish_confirmations",
            "Jobs missing from a listing, read by id before a vanish, by outcome "
            "(gone, present, error).",
            ["account", "outcome"],
            registry=r,
        )
        self.vanish_suspects = Gauge(
            "box_docgen_vanish_suspects",
            "Jobs a complete listing missed that wait for a confirmation by id.",
            labelnames=["account"],
            registry=r,
        )
        self.mass_change_refused = Counter(
            "box_docgen_mass_change_refused",
            "Sweeps whose change was refused as too large to be true, by reason "
            "(vanish, identity).",
            ["account", "reason"],
            registry=r,
        )
        # HA (monitor/lease.py): which replica leads each Box account. The account label is
        # bounded by configuration.
        self.leader = Gauge(
            "box_docgen_leader",
            "1 while this replica holds the account's lease (polls it, delivers its events).",
            ["account"],
            registry=r,
        )
        self.lease_epoch = Gauge(
            "box_docgen_lease_epoch",
            "The account's lease epoch as last read from the store (grows on every takeover).",
            ["account"],
            registry=r,
        )
        self.lease_transitions = Counter(
            "box_docgen_lease_transitions",
            "Changes of this replica's role for an account, by reason (acquired, released, "
            "rebalanced, lost, expired, fenced).",
            ["account", "reason"],
            registry=r,
        )
        self.detection_latency = Histogram(
            "box_docgen_detection_latency_seconds",
            "Per job change, seconds to its commit by what found it: since the previous look "
            "(sweep, active_poll) or since the Box notification (webhook_hint).",
            ["account", "found_by"],
            buckets=_DETECTION_BUCKETS_S,
            registry=r,
        )
        self.box_webhooks = Counter(
            "box_docgen_box_webhooks",
            "Box webhook notifications received, by trigger (`unknown` when not verified) and "
            "outcome (accepted, bad_signature, stale, replayed).",
            ["trigger", "outcome"],
            registry=r,
        )
        self.box_webhook_polls = Counter(
            "box_docgen_box_webhook_polls",
            "Batch polls asked for by verified Box notifications, by outcome "
            "(polled, coalesced, failed; unrelated: no active batch).",
            ["account", "outcome"],
            registry=r,
        )
        self.box_webhooks_healthy = Gauge(
            "box_docgen_box_webhooks_healthy",
            "1 while Box webhooks are healthy (the active interval is stretched), else 0.",
            labelnames=["account"],
            registry=r,
        )
        self.build_info = Info("box_docgen_monitor_build", "Version of docgen-monitor.", registry=r)
        self.build_info.info({"version": __version__})



class Metrics:
    """The metrics one Box account's components update: every metric about an account's work
    has its `account` label set here (`metrics.polls.labels(kind, outcome)` is the account's
    series), so no component knows which account it serves. `for_account(name)` is another
    account's view on the same registry; the event-loop, build and lease metrics are shared
    (the lease ones name their account themselves)."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        account: str = DEFAULT_ACCOUNT,
        families: _Families | None = None,
    ) -> None:
        f = families if families is not None else _Families(registry)
        self._families = f
        self.account = account
        self.registry = f.registry
        self.jobs = Labelled(f.jobs, account)
        self.job_transitions = Labelled(f.job_transitions, account)
        self.events = Labelled(f.events, account)
        self.unknown_statuses = f.unknown_statuses.labels(account)
        self.poll_duration = Labelled(f.poll_duration, account)
        self.polls = Labelled(f.polls, account)
        self.poll_last_success = f.poll_last_success.labels(account)
        self.api_requests = Labelled(f.api_requests, account)
        self.api_request_duration = Labelled(f.api_request_duration, account)
        self.api_retries = Labelled(f.api_retries, account)
        self.auth_failures = Labelled(f.auth_failures, account)
        self.retry_after_clamped = f.retry_after_clamped.labels(account)
        self.notifications = Labelled(f.notifications, account)
        self.outbox_pending = Labelled(f.outbox_pending, account)
        self.outbox_dead = Labelled(f.outbox_dead, account)
        self.job_duration = Labelled(f.job_duration, account)
        self.active_batches = f.active_batches.labels(account)
        self.detection_lag = f.detection_lag.labels(account)
        self.budget_used = f.budget_used.labels(account)
        self.budget_available = f.budget_available.labels(account)
        self.budget_rate = f.budget_rate.labels(account)
        self.discovery_lag = f.discovery_lag.labels(account)
        self.listing_newest_first = f.listing_newest_first.labels(account)
        self.degradation = f.degradation.labels(account)
        self.effective_interval = Labelled(f.effective_interval, account)
        self.event_loop_lag = f.event_loop_lag
        self.listing_invalid_entries = f.listing_invalid_entries.labels(account)
        self.listing_misses = f.listing_misses.labels(account)
        self.listing_regressions = f.listing_regressions.labels(account)
        self.listing_conflicts = f.listing_conflicts.labels(account)
        self.vanish_confirmations = Labelled(f.vanish_confirmations, account)
        self.vanish_suspects = f.vanish_suspects.labels(account)
        self.mass_change_refused = Labelled(f.mass_change_refused, account)
        self.leader = f.leader
        self.lease_epoch = f.lease_epoch
        self.lease_transitions = f.lease_transitions
        self.detection_latency = Labelled(f.detection_latency, account)
        self.box_webhooks = f.box_webhooks  # the endpoint's: a notification may verify for none
        self.box_webhook_polls = Labelled(f.box_webhook_polls, account)
        self.box_webhooks_healthy = f.box_webhooks_healthy.labels(account)
        self.build_info = f.build_info

    def for_account(self, account: str) -> Metrics:
        """The same registry, seen from `account` (its series exist from now on)."""
        return Metrics(account=account, families=self._families)

    def forget_holder_gauges(self, account: str) -> None:
        """A replica that stops leading `account` exports none of its job, batch or outbox
        gauges, so a sum over replicas counts the holder's alone."""
        f = self._families
        for gauge in (
            f.jobs, f.outbox_pending, f.outbox_dead, f.active_batches, f.detection_lag,
            f.vanish_suspects,
        ):
            mine = [
                tuple(sample.labels.values())
                for family in gauge.collect()
                for sample in family.samples
                if sample.labels.get("account") == account
            ]
            for values in mine:
                with contextlib.suppress(KeyError):
                    gauge.remove(*values)

    def set_job_counts(self, counts: Mapping[str, int]) -> None:
        """`box_docgen_jobs` from the snapshot's counts per raw status; every status Box does
        not document is summed under `unknown`, and every label reads 0 when none."""
        by_label = dict.fromkeys(STATUS_LABELS, 0)
        for status, count in counts.items():
            by_label[status_label(status)] += count
        for label, count in by_label.items():
            self.jobs.labels(label).set(count)

    def count_transition(self, from_status: str | None, to_status: str | None) -> None:
        self.job_transitions.labels(status_label(from_status), status_label(to_status)).inc()

    def observe_job_duration(self, outcome: str, duration_s: float) -> None:
        self.job_duration.labels(status_label(outcome)).observe(duration_s)


def status_label(status: str | None) -> str:
    """A job status as a label value: Box's five as they are, anything else `unknown` (a status
    is text from Box: used as it is, every invented value would be a new series)."""
    return status if status in KNOWN_STATUSES else UNKNOWN_STATUS


UNKNOWN_STATUS = "unknown"
STATUS_LABELS = (*sorted(KNOWN_STATUSES), UNKNOWN_STATUS)
