"""A listing page with one bad entry: the rest is read, the bad one set aside with a reason
that never echoes Box's text; a page whose envelope breaks still fails whole."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from monitor.box.listing import parse_listing


def entry(job_id: Any = "101", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": job_id, "type": "docgen_job", "batch": {"id": "9", "type": "docgen_batch"},
        "template_file": {"id": "7", "type": "file"}, "status": "completed",
        "output_type": "pdf", "created_by": {"id": "5", "type": "user"}, "source": "api",
    }
    body.update(fields)
    return body


def page(*entries: dict[str, Any], marker: str | None = "m2") -> bytes:
    return orjson.dumps({"entries": list(entries), "limit": 100, "next_marker": marker})


def test_a_clean_page_has_no_invalid_entries() -> None:
    result = parse_listing(page(entry("1"), entry("2")))
    assert [e["id"] for e in result.entries] == ["1", "2"]
    assert result.next_marker == "m2" and result.invalid == ()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({k: v for k, v in entry("3").items() if k != "status"}, "status: Field required"),
        (entry("3", batch=None), "batch.id: Field required"),
        (entry(3), "id: Input should be a valid string"),
    ],
)
def test_an_entry_that_breaks_the_projection_is_set_aside_and_the_rest_kept(
    bad: dict[str, Any], reason: str
) -> None:
    result = parse_listing(page(entry("1"), bad, entry("2")))
    assert [e["id"] for e in result.entries] == ["1", "2"]
    (invalid,) = result.invalid
    assert invalid.job_id == "3" and invalid.reason.startswith(reason)


def test_a_lone_surrogate_escape_sets_only_its_entry_aside() -> None:
    body = page(entry("1"), entry("2", output_type="PLACEHOLDER"), marker=None)
    body = body.replace(b'"PLACEHOLDER"', b'"pdf\\ud800"')
    result = parse_listing(body)
    assert [e["id"] for e in result.entries] == ["1"]
    (invalid,) = result.invalid
    assert invalid.job_id == "2" and "surrogate" in invalid.reason
    assert result.next_marker is None


def test_the_reason_never_carries_the_offending_value() -> None:
    hostile = "<!channel> " + "x" * 500
    result = parse_listing(page(entry("1", status=["list", hostile]),
                                entry(hostile, batch=hostile)))
    assert len(result.invalid) == 2 and result.entries == []
    assert all(hostile not in i.reason for i in result.invalid)
    assert result.invalid[1].job_id is None  # not a Box id: not repeated in the log


@pytest.mark.parametrize(
    "body",
    [b'{"entries": "nope"}', b'{"limit": 3}', b'{"entries": [', b"not json",
     b'{"entries": [], "next_marker": 5}'],
)
def test_a_page_whose_envelope_breaks_still_fails_whole(body: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_listing(body)
