"""Failure signatures: texts that differ only in a quoted name, a file name, an id or a number
are one group, shown with the values that varied."""

from __future__ import annotations

import pytest

from monitor.failures import MAX_SIGNATURE_CHARS, group_failures, signature, varying_values
from monitor.model import JobState
from monitor.simulator.failure_texts import ERRORS, WARNINGS


def failed(job_id: str, *errors: str, batch_id: str = "b1", status: str = "failed",
           changed_at: float = 0.0, warnings: tuple[str, ...] = ()) -> JobState:
    return JobState(id=job_id, batch_id=batch_id, status=status, template_file_id="t1",
                    output_type="pdf", errors=errors, warnings=warnings, changed_at=changed_at)


@pytest.mark.parametrize(("a", "b"), [
    ("The tag 'customer_name' was not provided in the input data.",
     "The tag 'city' was not provided in the input data."),
    ('The tag "customer_name" was not provided', "The tag `zip` was not provided"),
    ("The tag \u2018customer_name\u2019 was not provided",
     "The tag \u201czip\u201d was not provided"),
    ("Could not read Invoice-2024.docx", "Could not read contract_v2.final.pdf"),
    ("Request 8f3a9c2e-1b2c-4d5e-8f9a-0123456789ab failed",
     "Request 00000000-aaaa-bbbb-cccc-0123456789ab failed"),
    ("Template 1300389489282 version 1900005183143 at paragraph 14",
     "Template 7 version 8 at paragraph 3"),
    ("Trace id a1b2c3d4e5f6a7b8c9 refused", "Trace id zz99yy88xx77ww66 refused"),
    ("size 12.5 MB over   the\nlimit", "size 3 MB over the limit"),
])
def test_texts_that_differ_in_names_files_ids_or_numbers_share_a_signature(
    a: str, b: str
) -> None:
    assert signature(a) == signature(b)


@pytest.mark.parametrize(("a", "b"), [
    ("The tag 'x' was not provided in the input data.",
     "The input data for tag 'x' must be an array, but an object was provided."),
    ("The template file version could not be found.", "Document generation timed out."),
])
def test_different_problems_keep_different_signatures(a: str, b: str) -> None:
    assert signature(a) != signature(b)


def test_a_signature_reads_as_the_text_with_placeholders() -> None:
    assert signature("The tag 'customer_name' was not provided at paragraph 14.") == (
        "The tag '…' was not provided at paragraph <n>.")
    assert signature("Could not read Invoice-2024.docx (request 8f3a9c2e-1b2c-4d5e-8f9a-"
                     "0123456789ab)") == "Could not read <file> (request <id>)"
    # An extension alone is not a file name: "a valid .docx document" stays as it is.
    assert signature("The template file is not a valid .docx document.") == (
        "The template file is not a valid .docx document.")


def test_the_simulator_catalogue_falls_into_as_many_groups_as_it_has_problems() -> None:
    texts = [*ERRORS, *WARNINGS, "The tag 'city' was not provided in the input data."]
    # The two "tag was not provided in the input data." errors (and 'city') are one problem.
    assert len({signature(t) for t in texts}) == len(ERRORS) + len(WARNINGS) - 1


def test_varying_values_are_the_quoted_names_and_file_names() -> None:
    assert varying_values("The tag 'customer_name' was not provided") == ["customer_name"]
    assert varying_values("Tag \"a\" and 'b' in report.docx") == ["a", "b", "report.docx"]
    assert varying_values("x" * 50) == []
    assert len(varying_values(f"The tag '{'y' * 150}' was not provided")[0]) == 80


def test_a_long_text_gets_a_bounded_signature() -> None:
    sig = signature("word " * 10_000)
    assert len(sig) == MAX_SIGNATURE_CHARS and sig.endswith("…")


def test_group_failures_counts_jobs_per_signature_with_examples_largest_first() -> None:
    jobs = [
        failed("j1", "The tag 'customer_name' was not provided.", changed_at=1),
        failed("j2", "The tag 'city' was not provided.", batch_id="b2", changed_at=2),
        failed("j3", "The tag 'city' was not provided.", changed_at=3),
        failed("j4", "Document generation timed out.", changed_at=9),
        failed("j5", status="completed_with_error", warnings=("The font 'Brand Sans' is gone",)),
    ]

    groups = group_failures(jobs)

    assert [(g.signature, g.jobs) for g in groups] == [
        ("The tag '…' was not provided.", 3),
        ("Document generation timed out.", 1),
        ("The font '…' is gone", 1),
    ]
    tags = groups[0]
    assert tags.examples == ["customer_name", "city"]
    assert tags.texts == ["The tag 'customer_name' was not provided.",
                          "The tag 'city' was not provided."]
    assert tags.job_ids == ["j1", "j2", "j3"]
    assert tags.batches == {"b1", "b2"}
    assert tags.statuses == {"failed": 3}
    assert tags.last_at == 3
    assert groups[2].statuses == {"completed_with_error": 1}


def test_a_job_counts_once_per_signature_and_a_job_without_text_has_the_empty_one() -> None:
    jobs = [
        failed("j1", "The tag 'a' was not provided.", "The tag 'b' was not provided."),
        failed("j2"),
    ]
    groups = {g.signature: g for g in group_failures(jobs)}
    assert groups["The tag '…' was not provided."].jobs == 1
    assert groups["The tag '…' was not provided."].examples == ["a", "b"]
    assert groups[""].jobs == 1


def test_examples_are_bounded() -> None:
    jobs = [failed(f"j{i}", f"The tag 'tag{i}' was not provided.") for i in range(50)]
    (group,) = group_failures(jobs)
    assert group.jobs == 50
    assert len(group.examples) == len(group.texts) == len(group.job_ids) == 5
