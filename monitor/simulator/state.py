"""One simulator's whole world: clock, jobs, tokens, faults and counters, with the operations
that Box routes, the control API and the steady stream share."""

from __future__ import annotations

import random
from collections.abc import Sequence

from aiohttp import web

from monitor.simulator.auth import TokenStore
from monitor.simulator.clock import SimClock
from monitor.simulator.config import OutcomeMix, SimulatorConfig, TimelineConfig
from monitor.simulator.distortions import Distortions
from monitor.simulator.faults import FaultRegistry
from monitor.simulator.jobs import Batch, BatchPlan, JobTable, JobView
from monitor.simulator.stats import RequestStats
from monitor.simulator.users import Directory
from monitor.simulator.webhooks import Settings, Webhooks

OUTPUT_TYPES = ("pdf", "docx")
# Seeded history is spread over this window before "now", ending this long ago.
SEED_HISTORY_S = 30 * 24 * 3600.0
SEED_HISTORY_END_S = 3600.0


class SimulatorState:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.clock = SimClock(frozen=config.frozen_clock)
        # Separate streams: a fault draw never shifts a job's schedule, and vice versa.
        self._rng = random.Random(f"{config.seed}:jobs")
        self.jobs = JobTable(self._rng)
        self.tokens = TokenStore(config, self.clock)
        self.faults = FaultRegistry(random.Random(f"{config.seed}:faults"))
        self.distortions = Distortions(seed=config.seed)
        self.directory = Directory(config)
        self.stats = RequestStats()
        self.webhooks = Webhooks(
            self.jobs,
            Settings(config.webhook_primary_key, config.webhook_secondary_key),
            random.Random(f"{config.seed}:webhooks"),
        )
        self.template_file_ids = tuple(
            str(1_300_000_000_000 + self._rng.randrange(1_000_000_000)) for _ in range(5)
        )

    def now(self) -> float:
        return self.clock.now()

    def find_job(self, job_id: str) -> JobView | None:
        """A live job by its Box id (a numeric string), as of now."""
        if not job_id.isdecimal() or not job_id.isascii():
            return None
        row = self.jobs.find(int(job_id))
        return None if row is None else self.jobs.view(row, self.now())

    def find_batch(self, batch_id: str) -> Batch | None:
        if not batch_id.isdecimal() or not batch_id.isascii():
            return None
        return self.jobs.batch(int(batch_id))

    def start_batch(
        self,
        count: int,
        *,
        timeline: TimelineConfig | None = None,
        outcomes: OutcomeMix | None = None,
        template_file_id: str | None = None,
        template_file_version_id: str | None = None,
        output_type: str | None = None,
        created_by_id: str | None = None,
        errors: Sequence[str] | None = None,
        warnings: Sequence[str] | None = None,
    ) -> Batch:
        """A new batch, created now, whose jobs run through the timeline from here on."""
        timeline = timeline or self.config.timeline
        plan = BatchPlan(
            count=count,
            submitted_after_s=timeline.submitted_after_s,
            min_duration_s=timeline.min_duration_s,
            max_duration_s=timeline.max_duration_s,
            outcomes=outcomes or timeline.outcomes,
        )
        batch = self.jobs.add_batch(
            plan,
            created_at_s=self.now(),
            template_file_id=template_file_id or self._rng.choice(self.template_file_ids),
            template_file_version_id=template_file_version_id,
            output_type=output_type or self._rng.choice(OUTPUT_TYPES),
            created_by_id=created_by_id or self.config.service_account_user_id,
            errors=errors,
            warnings=warnings,
        )
        self.webhooks.schedule(batch)
        return batch

    def seed_history(
        self,
        count: int,
        *,
        batch_size: int = 100,
        outcomes: OutcomeMix | None = None,
        template_file_id: str | None = None,
        output_type: str | None = None,
        created_by_id: str | None = None,
    ) -> int:
        """Add `count` jobs that finished in the past 30 days, created by `created_by_id` (default:
        the Service Account); return how many batches that took."""
        outcomes = outcomes or self.config.timeline.outcomes
        n_batches = -(-count // batch_size)
        now_s = self.now()
        start_s = now_s - SEED_HISTORY_S
        step_s = (SEED_HISTORY_S - SEED_HISTORY_END_S) / max(n_batches, 1)
        rng = self._rng
        left = count
        for k in range(n_batches):
            size = min(batch_size, left)
            left -= size
            plan = BatchPlan(
                count=size,
                submitted_after_s=rng.uniform(0.2, 2.0),
                min_duration_s=2.0,
                max_duration_s=120.0,
                outcomes=outcomes,
            )
            self.jobs.add_batch(
                plan,
                created_at_s=start_s + k * step_s + rng.uniform(0, step_s / 2),
                template_file_id=template_file_id or rng.choice(self.template_file_ids),
                template_file_version_id=None,
                output_type=output_type or rng.choice(OUTPUT_TYPES),
                created_by_id=created_by_id or self.config.service_account_user_id,
                historic=True,
            )
        return n_batches


STATE_KEY = web.AppKey("docgen_simulator_state", SimulatorState)
