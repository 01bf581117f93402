"""Which missing jobs a sweep reads by id, which it holds as suspects, and when it refuses."""

from __future__ import annotations

from monitor.vanish import MASS_MIN_JOBS, is_mass_vanish, plan_vanish

NOW = 1_800_000_000.0


def test_every_missing_job_is_confirmed_when_they_fit_in_one_sweep() -> None:
    plan = plan_vanish({"b": 1.0, "a": 2.0}, {}, snapshot_size=100, confirm_max=5, now=NOW)
    assert plan.confirm == ("a", "b") and dict(plan.hold) == {} and not plan.refused


def test_beyond_the_cap_the_rest_are_held_and_the_held_go_first_next_time() -> None:
    missing = {f"j{i:02d}": 0.0 for i in range(8)}
    first = plan_vanish(missing, {}, snapshot_size=1000, confirm_max=3, now=NOW)
    assert first.confirm == ("j00", "j01", "j02")
    assert dict(first.hold) == {f"j{i:02d}": NOW for i in range(3, 8)}
    missing_now = {**{k: 0.0 for k in first.hold}, "a-new": 0.0}
    second = plan_vanish(missing_now, first.hold, snapshot_size=1000, confirm_max=3,
                         now=NOW + 60)
    assert second.confirm == ("j03", "j04", "j05")
    assert dict(second.hold) == {"j06": NOW, "j07": NOW, "a-new": NOW + 60}


def test_a_suspect_the_listing_showed_again_is_no_suspect() -> None:
    plan = plan_vanish({"x": 0.0}, {"x": NOW - 5, "y": NOW - 9}, snapshot_size=100,
                       confirm_max=0, now=NOW)
    assert plan.confirm == () and dict(plan.hold) == {"x": NOW - 5}


def test_missing_more_than_a_fifth_of_the_snapshot_is_refused_whole() -> None:
    missing = {f"j{i}": 0.0 for i in range(30)}
    plan = plan_vanish(missing, {"old": NOW - 1}, snapshot_size=100, confirm_max=200, now=NOW)
    assert plan.refused and plan.confirm == () and dict(plan.hold) == {"old": NOW - 1}
    assert not plan_vanish(dict(list(missing.items())[:20]), {}, snapshot_size=100,
                           confirm_max=200, now=NOW).refused


def test_a_small_account_losing_a_few_jobs_is_not_a_mass_change() -> None:
    assert not is_mass_vanish(MASS_MIN_JOBS - 1, MASS_MIN_JOBS)
    assert is_mass_vanish(MASS_MIN_JOBS, MASS_MIN_JOBS)
