"""The sweep recognises unchanged jobs by a listing entry's fingerprint (or, for a row stored
without one, by comparing the entry with what the row holds: `listed_observed` against
`load_observed`), without building a JobState; both must agree with `JobState.same_observation` on
every input, and every field they compare must count. A first baseline builds its rows straight
from the entries: they must be the rows of the JobStates."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.box.listing import parse_listing
from monitor.box.models import ListedJob
from monitor.listed import listed_fingerprint, listed_job_state, listed_observed, listed_row
from monitor.store.rows import fingerprint, job_to_row, observed_of

texts = st.lists(st.sampled_from(["missing tag", "bad template", "<!channel>", "é \"q\""]),
                 max_size=2)
failures = st.one_of(st.none(), st.fixed_dictionaries({"errors": texts, "warnings": texts}))
ids = st.sampled_from(["1", "2"])


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    """A `DocGenJob--Full` entry as Box sends it (nested references)."""
    entry: dict[str, Any] = {
        "id": "j1", "type": "docgen_job", "batch": {"id": draw(ids), "type": "docgen_batch"},
        "template_file": {"id": draw(ids), "type": "file"}, "status": draw(st.sampled_from(
            ["pending", "submitted", "completed", "failed", "new_status"])),
        "output_type": draw(st.sampled_from(["pdf", "docx"])),
        "created_by": {"id": draw(ids), "type": "user"},
        "created_at": draw(st.sampled_from([None, "2026-05-01T10:00:00Z"])),
        "output_file": draw(st.one_of(st.none(), st.builds(lambda i: {"id": i}, ids))),
    }
    if (f := draw(failures)) is not None or draw(st.booleans()):
        entry["failures"] = f
    return entry


def read(*raw: dict[str, Any]) -> list[ListedJob]:
    """The entries as a sweep reads them: one page through the listing's parser."""
    page = parse_listing(orjson.dumps({"entries": list(raw), "next_marker": None}))
    assert page.invalid == ()
    return page.entries


@given(entries(), entries())
@settings(max_examples=500)
def test_the_raw_comparison_agrees_with_same_observation(
    stored_entry: dict[str, Any], entry: dict[str, Any]
) -> None:
    stored_listed, listed = read(stored_entry, entry)
    stored = listed_job_state(stored_listed)
    assert listed_observed(listed) == observed_of(listed_job_state(listed))
    expected = stored.same_observation(listed_job_state(listed))
    assert (observed_of(stored) == listed_observed(listed)) == expected
    assert observed_of(stored) == listed_observed(stored_listed)


BASE: dict[str, Any] = {
    "id": "j1", "type": "docgen_job", "batch": {"id": "b1"}, "template_file": {"id": "t1"},
    "status": "completed", "output_type": "pdf", "created_by": {"id": "u1"},
    "output_file": {"id": "f1"}, "failures": {"errors": [], "warnings": ["w"]},
}


@pytest.mark.parametrize(
    ("change", "counts"),
    [
        ({"status": "failed"}, True),
        ({"batch": {"id": "b2"}}, True),
        ({"template_file": {"id": "t2"}}, True),
        ({"output_type": "docx"}, True),
        ({"output_file": {"id": "f2"}}, True),
        ({"output_file": None}, True),
        ({"failures": {"errors": ["e"], "warnings": ["w"]}}, True),
        ({"failures": {"errors": [], "warnings": ["w", "x"]}}, True),
        ({"failures": None}, True),
        # Not part of an observation: the stored row keeps what the listing said first.
        ({"created_at": "2026-05-01T10:00:00Z"}, False),
        ({"created_by": {"id": "u2"}}, False),
        ({"source": "ui", "enterprise": {"id": "9"}}, False),
    ],
)
def test_each_observed_field_makes_the_entry_changed(change: dict[str, Any], counts: bool) -> None:
    """A table of one-field changes: each field the snapshot compares is caught by the
    comparison, and the others are not."""
    (before,) = read(BASE)
    (after,) = read({**BASE, **change})
    assert (listed_observed(after) != observed_of(listed_job_state(before))) is counts
    assert listed_job_state(before).same_observation(listed_job_state(after)) is not counts


@given(entries(), entries())
@settings(max_examples=500)
def test_fingerprints_are_equal_exactly_when_the_observations_are(
    stored_entry: dict[str, Any], entry: dict[str, Any]
) -> None:
    """What the sweep's fast path relies on: an entry's fingerprint equals its stored row's
    exactly when nothing it observed differs (a row written by `job_to_row` carries it)."""
    stored_listed, listed = read(stored_entry, entry)
    stored = listed_job_state(stored_listed).booked(3, 1.0, 2.0)
    same = stored.same_observation(listed_job_state(listed))
    assert (listed_fingerprint(listed) == job_to_row(stored)[-1]) == same
    assert listed_fingerprint(listed) == fingerprint(listed["id"], listed_observed(listed))


@given(entries(), st.integers(1, 5), st.floats(0, 2e9))
@settings(max_examples=200)
def test_a_baselines_row_is_the_row_of_the_job_state(
    entry: dict[str, Any], seq: int, at: float
) -> None:
    (listed,) = read(entry)
    assert listed_row(listed, seq, at) == job_to_row(listed_job_state(listed).booked(seq, at, at))
