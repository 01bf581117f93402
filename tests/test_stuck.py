"""`stuck_events` (pure): once per crossing, re-armed by a transition, per-template thresholds."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from monitor.model import TERMINAL_STATUSES, JobState
from monitor.stuck import StuckPolicy, stuck_events, stuck_id

T0 = 1_800_000_000.0


def job(status: str = "pending", template: str = "t1", seq: int = 1,
        changed_at: float = T0) -> JobState:
    return JobState(id="j1", batch_id="b1", status=status, template_file_id=template,
                    output_type="pdf", seq=seq, first_seen_at=T0, changed_at=changed_at)


def test_a_job_past_its_threshold_is_stuck_once() -> None:
    policy = StuckPolicy(after_s=60)
    assert stuck_events([job()], {}, policy, T0 + 60) == ()
    (event,) = stuck_events([job()], {}, policy, T0 + 61)
    assert event.id == stuck_id("j1", 1) and event.to_status == "pending"
    assert stuck_events([job()], {"j1": event.id}, policy, T0 + 10_000) == ()


def test_a_transition_rearms_the_job() -> None:
    policy = StuckPolicy(after_s=60)
    moved = job(status="submitted", seq=2, changed_at=T0 + 100)
    marks = {"j1": stuck_id("j1", 1)}
    assert stuck_events([moved], marks, policy, T0 + 150) == ()
    (event,) = stuck_events([moved], marks, policy, T0 + 161)
    assert event.id == stuck_id("j1", 2)


def test_a_template_threshold_overrides_the_global_one() -> None:
    policy = StuckPolicy(after_s=60, by_template_s={"slow": 600})
    assert stuck_events([job(template="slow")], {}, policy, T0 + 300) == ()
    assert len(stuck_events([job(template="slow")], {}, policy, T0 + 601)) == 1
    only_slow = StuckPolicy(by_template_s={"slow": 600})
    assert stuck_events([job(template="fast")], {}, only_slow, T0 + 10**6) == ()


@given(st.sampled_from(sorted(TERMINAL_STATUSES)), st.floats(0, 10**7))
def test_a_terminal_job_is_never_stuck(status: str, waited_s: float) -> None:
    assert stuck_events([job(status=status)], {}, StuckPolicy(after_s=1), T0 + waited_s) == ()


@given(st.lists(st.floats(0, 10**5), min_size=1, max_size=20))
def test_replaying_with_the_marks_it_produced_never_fires_again(times: list[float]) -> None:
    """Feeding back each event as a mark (what the store does): at most one event per seq."""
    policy = StuckPolicy(after_s=100)
    marks: dict[str, str] = {}
    fired = []
    for t in sorted(times):
        for event in stuck_events([job()], marks, policy, T0 + t):
            marks["j1"] = event.id
            fired.append(event.id)
    assert len(fired) <= 1
    assert fired == ([stuck_id("j1", 1)] if max(times) > 100 else [])


def test_a_disabled_policy_says_so() -> None:
    assert not StuckPolicy().enabled
    assert StuckPolicy(after_s=1).enabled
    assert replace(job(), seq=3).seq == 3
