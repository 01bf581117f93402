"""The sweep recognises unchanged jobs on the raw listing entry, without building a JobState;
that shortcut must agree with `JobState.same_observation` on every input."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.model import JobState
from monitor.poller import _unchanged, listed_job_state

texts = st.lists(st.sampled_from(["missing tag", "bad template", "<!channel>"]), max_size=2)
failures = st.one_of(st.none(), st.fixed_dictionaries({"errors": texts, "warnings": texts}))
ids = st.sampled_from(["1", "2"])


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "j1", "type": "docgen_job", "batch": {"id": draw(ids)},
        "template_file": {"id": draw(ids)}, "status": draw(st.sampled_from(
            ["pending", "submitted", "completed", "failed", "new_status"])),
        "output_type": draw(st.sampled_from(["pdf", "docx"])), "created_by": {"id": "u1"},
        "output_file": draw(st.one_of(st.none(), st.builds(lambda i: {"id": i}, ids))),
    }
    if (f := draw(failures)) is not None or draw(st.booleans()):
        entry["failures"] = f
    return entry


@given(entries(), entries())
@settings(max_examples=500)
def test_unchanged_on_the_raw_entry_agrees_with_same_observation(
    stored_entry: dict[str, Any], entry: dict[str, Any]
) -> None:
    stored = listed_job_state(stored_entry)  # type: ignore[arg-type]
    assert isinstance(stored, JobState)
    expected = stored.same_observation(listed_job_state(entry))  # type: ignore[arg-type]
    assert _unchanged(stored, entry) == expected  # type: ignore[arg-type]
    assert _unchanged(stored, stored_entry)  # type: ignore[arg-type]
