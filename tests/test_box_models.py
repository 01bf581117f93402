"""The Box models read what Box's OpenAPI spec (version 2025.0) says Box sends, keep what the
monitor must not lose (unknown statuses), ignore what it does not know (extra fields) and refuse
bodies that break the spec's required lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from monitor.box.models import (
    AccessToken,
    ClientError,
    DocGenBatch,
    DocGenJob,
    DocGenJobFull,
    DocGenJobs,
    DocGenJobsFull,
    OAuth2Error,
)

SPEC_PATH = Path("/work/shared/box-api/openapi-docgen.json")


def standard_job(**overrides: Any) -> dict[str, Any]:
    """A `DocGenJob` built from the spec's examples."""
    job: dict[str, Any] = {
        "id": "12345",
        "type": "docgen_job",
        "batch": {"id": "12345", "type": "docgen_batch"},
        "template_file": {"type": "file", "id": "42037322"},
        "template_file_version": {"id": "12345", "type": "file_version"},
        "output_file": {"type": "file", "id": "42037322"},
        "output_file_version": {"id": "12345", "type": "file_version"},
        "status": "completed",
        "output_type": "docx",
    }
    job.update(overrides)
    return job


def full_job(**overrides: Any) -> dict[str, Any]:
    """A `DocGenJob--Full` built from the spec's examples."""
    job = standard_job(
        created_at="2022-05-11T10:56:11-07:00",
        created_by={"id": "11446498", "type": "user"},
        enterprise={"id": "1910967", "type": "enterprise"},
        source="api",
    )
    job.update(overrides)
    return job


def raw(value: Any) -> bytes:
    return orjson.dumps(value)


# -- jobs ------------------------------------------------------------------------------------


def test_standard_job_parses_from_bytes() -> None:
    job = DocGenJob.model_validate_json(raw(standard_job()))

    assert job.id == "12345"
    assert job.batch.id == "12345"
    assert job.template_file.id == "42037322"
    assert job.template_file_version.id == "12345"
    assert job.output_file is not None and job.output_file.id == "42037322"
    assert job.status == "completed"
    assert job.output_type == "docx"
    assert job.failures is None


def test_full_job_parses_and_is_a_standard_job() -> None:
    job = DocGenJobFull.model_validate_json(raw(full_job()))

    assert isinstance(job, DocGenJob)
    assert job.created_at == "2022-05-11T10:56:11-07:00"
    assert job.created_by.id == "11446498"
    assert job.enterprise.id == "1910967"
    assert job.source == "api"


def test_output_file_is_null_until_completion() -> None:
    body = standard_job(status="pending", output_file=None, output_file_version=None)
    job = DocGenJob.model_validate_json(raw(body))

    assert job.output_file is None
    assert job.output_file_version is None


def test_output_fields_may_be_absent() -> None:
    body = standard_job(status="submitted")
    del body["output_file"], body["output_file_version"]

    job = DocGenJob.model_validate_json(raw(body))

    assert job.output_file is None and job.output_file_version is None


def test_failures_carry_errors_and_warnings() -> None:
    body = standard_job(
        status="completed_with_error",
        failures={
            "errors": ["The tag 'customer_name' was not provided in the input data."],
            "warnings": ["The tag 'optional_field' was provided but not used in the template."],
        },
    )
    job = DocGenJob.model_validate_json(raw(body))

    assert job.failures is not None
    assert job.failures.errors == ["The tag 'customer_name' was not provided in the input data."]
    assert len(job.failures.warnings) == 1


@pytest.mark.parametrize(
    "status", ["submitted", "completed", "failed", "completed_with_error", "pending"]
)
def test_every_documented_status_parses(status: str) -> None:
    assert DocGenJob.model_validate_json(raw(standard_job(status=status))).status == status


def test_unknown_status_is_kept_not_rejected() -> None:
    """Box may add a status; the model keeps the string so the poller can treat it as
    non-terminal instead of failing the whole page."""
    job = DocGenJobFull.model_validate_json(raw(full_job(status="cancelled_by_admin")))

    assert job.status == "cancelled_by_admin"


def test_unknown_fields_are_ignored() -> None:
    body = full_job(priority="high", template_file={"type": "file", "id": "1", "name": "x.docx"})

    job = DocGenJobFull.model_validate_json(raw(body))

    assert job.template_file.id == "1"
    assert "priority" not in job.model_dump()


@pytest.mark.parametrize(
    "field", ["id", "type", "batch", "template_file", "template_file_version", "status",
              "output_type"],
)
def test_standard_job_requires_the_spec_fields(field: str) -> None:
    body = standard_job()
    del body[field]

    with pytest.raises(ValidationError):
        DocGenJob.model_validate_json(raw(body))


@pytest.mark.parametrize("field", ["created_by", "enterprise", "source"])
def test_full_job_requires_its_extra_fields(field: str) -> None:
    body = full_job()
    del body[field]

    with pytest.raises(ValidationError):
        DocGenJobFull.model_validate_json(raw(body))


def test_full_job_created_at_is_optional() -> None:
    body = full_job()
    del body["created_at"]

    assert DocGenJobFull.model_validate_json(raw(body)).created_at is None


def test_wrong_types_are_rejected() -> None:
    with pytest.raises(ValidationError):
        DocGenJob.model_validate_json(raw(standard_job(batch="12345")))
    with pytest.raises(ValidationError):
        DocGenJob.model_validate_json(raw(standard_job(type="docgen_batch")))


# -- pages -----------------------------------------------------------------------------------


def test_full_page_parses_entries_and_markers() -> None:
    body = {
        "entries": [full_job(id="1"), full_job(id="2", status="failed")],
        "limit": 1000,
        "next_marker": "JV9IRGZmieiBasejOG9yDCRNgd2ymoZIbjsxbJMjIs3kioVii",
        "prev_marker": None,
    }
    page = DocGenJobsFull.model_validate_json(raw(body))

    assert [j.id for j in page.entries] == ["1", "2"]
    assert all(isinstance(j, DocGenJobFull) for j in page.entries)
    assert page.limit == 1000
    assert page.next_marker == "JV9IRGZmieiBasejOG9yDCRNgd2ymoZIbjsxbJMjIs3kioVii"
    assert page.prev_marker is None


def test_standard_page_parses_and_markers_are_optional() -> None:
    page = DocGenJobs.model_validate_json(raw({"entries": [standard_job()]}))

    assert len(page.entries) == 1
    assert page.next_marker is None and page.limit is None


def test_page_without_entries_is_malformed() -> None:
    """Reading a page without `entries` as empty would let a sweep declare every job gone."""
    with pytest.raises(ValidationError):
        DocGenJobsFull.model_validate_json(raw({"limit": 1000, "next_marker": None}))


def test_one_bad_entry_rejects_the_page() -> None:
    bad = full_job()
    del bad["batch"]
    with pytest.raises(ValidationError):
        DocGenJobsFull.model_validate_json(raw({"entries": [full_job(), bad]}))


@pytest.mark.parametrize(
    "body", [b"", b"{", b'{"entries": [', b"[]", b"null", b'{"entries": [{"id": "1"}'],
)
def test_malformed_or_truncated_json_is_a_validation_error(body: bytes) -> None:
    with pytest.raises(ValidationError):
        DocGenJobsFull.model_validate_json(body)


# -- batch, errors, tokens -------------------------------------------------------------------


def test_batch_parses() -> None:
    batch = TypeAdapter(DocGenBatch).validate_json(b'{"id": "12345", "type": "docgen_batch"}')

    assert batch.id == "12345"


def test_client_error_parses_the_documented_rate_limit_body() -> None:
    body = {
        "type": "error",
        "status": 429,
        "code": "rate_limit_exceeded",
        "help_url": "https://developer.box.com/guides/api-calls/permissions-and-errors/rate-limits/",
        "message": "Request rate limit exceeded, please try again later",
        "request_id": "abcdef123456",
        "context_info": {"message": "Something went wrong"},
    }
    error = ClientError.model_validate_json(raw(body))

    assert error.code == "rate_limit_exceeded"  # not in the spec's enum, and still accepted
    assert error.status == 429
    assert error.request_id == "abcdef123456"
    assert error.context_info == {"message": "Something went wrong"}


def test_client_error_requires_no_field() -> None:
    assert ClientError.model_validate_json(b"{}").code is None


def test_oauth2_error_parses() -> None:
    error = OAuth2Error.model_validate_json(
        b'{"error": "invalid_client", "error_description": "The client credentials are not valid"}'
    )

    assert error.error == "invalid_client"
    assert error.error_description == "The client credentials are not valid"


def test_access_token_parses_and_hides_the_token() -> None:
    body = {
        "access_token": "c3FIOG9vSGV4VHo4QzAyg5T1JvNnJoZ3ExaVNyQWw6WjRsanRKZG5lQk9qUE1BVQ",
        "expires_in": 3600,
        "token_type": "bearer",
        "restricted_to": [],
        "issued_token_type": "bearer",  # Box's guide shows this, against the spec's enum
    }
    token = AccessToken.model_validate_json(raw(body))

    assert token.access_token is not None
    assert token.access_token.get_secret_value() == body["access_token"]
    assert token.expires_in == 3600
    assert body["access_token"] not in repr(token)
    assert body["access_token"] not in str(token)


# -- against the spec itself -----------------------------------------------------------------


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        return _resolve(spec, spec["components"]["schemas"][name])
    return node


def _example(spec: dict[str, Any], node: dict[str, Any]) -> Any:
    """An instance of a schema made of the spec's own `example` values (required fields and
    every declared property)."""
    node = _resolve(spec, node)
    if "allOf" in node or "oneOf" in node:
        merged: dict[str, Any] = {}
        for part in node.get("allOf", []) + node.get("oneOf", [])[:1]:
            value = _example(spec, part)
            if isinstance(value, dict):
                merged.update(value)
        if "properties" in node:
            merged.update(_example(spec, {"properties": node["properties"]}))
        return merged
    if "properties" in node:
        return {k: _example(spec, v) for k, v in node["properties"].items()}
    if "example" in node:
        return node["example"]
    if node.get("type") == "array":
        return [_example(spec, node["items"])]
    if "enum" in node:
        return node["enum"][0]
    return {"string": "x", "integer": 1}.get(node.get("type", ""))


@pytest.mark.skipif(not SPEC_PATH.exists(), reason="Box OpenAPI spec not available")
@pytest.mark.parametrize(
    ("schema", "model"),
    [
        ("DocGenJob", DocGenJob),
        ("DocGenJob--Full", DocGenJobFull),
        ("DocGenJobs", DocGenJobs),
        ("DocGenJobs--Full", DocGenJobsFull),
        ("DocGenBatch--Base", DocGenBatch),
        ("ClientError", ClientError),
        ("OAuth2Error", OAuth2Error),
        ("AccessToken", AccessToken),
    ],
)
def test_example_built_from_the_spec_parses(schema: str, model: type[Any]) -> None:
    spec = json.loads(SPEC_PATH.read_text())
    example = _example(spec, spec["components"]["schemas"][schema])

    TypeAdapter(model).validate_json(raw(example))


@pytest.mark.skipif(not SPEC_PATH.exists(), reason="Box OpenAPI spec not available")
@pytest.mark.parametrize(
    ("schema", "model"),
    [("DocGenJob", DocGenJob), ("DocGenJob--Full", DocGenJobFull)],
)
def test_required_fields_match_the_spec(schema: str, model: type[Any]) -> None:
    spec = json.loads(SPEC_PATH.read_text())

    def required_of(node: dict[str, Any]) -> set[str]:
        node = _resolve(spec, node)
        found = set(node.get("required", []))
        for part in node.get("allOf", []):
            found |= required_of(part)
        return found

    required = required_of(spec["components"]["schemas"][schema])

    assert {name for name, f in model.model_fields.items() if f.is_required()} == required
