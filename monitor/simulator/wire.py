"""Box's JSON shapes, written from Box's OpenAPI spec (never shared with the Box client, so each
checks the other): job variants, list envelopes, ClientError and OAuth2Error bodies, and the
POST /docgen_batches request model."""

from __future__ import annotations

import functools
import secrets
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from monitor.simulator.jobs import JobView
from monitor.simulator.users import User

JSON = dict[str, Any]

HELP_URL = "https://developer.box.com/guides/api-calls/permissions-and-errors/common-errors/"


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def request_id() -> str:
    """Box's request ids are opaque hex strings, quoted to support."""
    return secrets.token_hex(8)


def client_error(
    status: int,
    code: str,
    message: str,
    *,
    context_info: JSON | None = None,
    help_url: str = HELP_URL,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A ClientError body. `code` follows Box's guides, which use codes (rate_limit_exceeded,
    invalid_api_version) that the spec's enum leaves out."""
    body: JSON = {
        "type": "error",
        "status": status,
        "code": code,
        "message": message,
        "context_info": context_info,
        "help_url": help_url,
        "request_id": request_id(),
    }
    return json_response(body, status=status, headers=headers)


def oauth2_error(error: str, description: str, *, status: int = 400) -> web.Response:
    return json_response({"error": error, "error_description": description}, status=status)


@functools.lru_cache(maxsize=4096)
def created_at_text(at_s: float, utc_offset_min: int) -> str:
    """RFC 3339 with a local offset and whole seconds, like Box's `2022-05-11T10:56:11-07:00`.
    Cached: the jobs of a batch share their creation time, and a page holds whole batches."""
    zone = timezone(timedelta(minutes=utc_offset_min)) if utc_offset_min else UTC
    text = datetime.fromtimestamp(int(at_s), tz=zone).isoformat()
    return text.replace("+00:00", "Z") if not utc_offset_min else text


def job_standard(job: JobView) -> JSON:
    """DocGenJob: returned by GET /docgen_jobs/{id} and in batch job lists."""
    batch = job.batch
    output_file_id = job.output_file_id
    return {
        "id": str(job.id),
        "type": "docgen_job",
        "batch": {"id": str(batch.id), "type": "docgen_batch"},
        "template_file": {"id": batch.template_file_id, "type": "file"},
        "template_file_version": {"id": batch.template_file_version_id, "type": "file_version"},
        "output_file": (
            {"id": output_file_id, "type": "file"} if output_file_id is not None else None
        ),
        "output_file_version": (
            {"id": job.output_file_version_id, "type": "file_version"}
            if output_file_id is not None
            else None
        ),
        "status": job.status,
        "output_type": batch.output_type,
        "failures": (
            {"errors": list(job.failures.errors), "warnings": list(job.failures.warnings)}
            if job.failures is not None
            else None
        ),
    }


def job_full(job: JobView, *, enterprise_id: str, created_at: str) -> JSON:
    """DocGenJob--Full: the entries of GET /docgen_jobs."""
    body = job_standard(job)
    body["created_at"] = created_at
    body["created_by"] = {"id": job.batch.created_by_id, "type": "user"}
    body["enterprise"] = {"id": enterprise_id, "type": "enterprise"}
    body["source"] = "api"
    return body


def job_page(entries: list[JSON], *, limit: int, next_marker: str | None) -> JSON:
    """The marker-paged envelope. prev_marker is always null: Box documents no use for it."""
    return {"entries": entries, "limit": limit, "next_marker": next_marker, "prev_marker": None}


_USER_MINI = ("type", "id", "name", "login")


def user(who: User, *, fields: list[str] | None = None) -> JSON:
    """Box's user object. Without `fields`, the standard representation (which has no
    `enterprise`); with `fields`, the mini one plus the fields asked for, as Box documents."""
    every: JSON = {
        "type": "user",
        "id": who.id,
        "name": who.name,
        "login": who.login,
        "created_at": "2024-01-15T09:30:00-08:00",
        "modified_at": "2024-01-15T09:30:00-08:00",
        "language": "en",
        "timezone": "America/Los_Angeles",
        "space_amount": 1_099_511_627_776,
        "space_used": 0,
        "max_upload_size": 5_368_709_120,
        "status": "active",
        "job_title": "",
        "phone": "",
        "address": "",
        "avatar_url": f"https://app.box.com/api/avatar/large/{who.id}",
    }
    if fields is None:
        return every
    every["enterprise"] = {
        "id": who.enterprise.id,
        "type": "enterprise",
        "name": who.enterprise.name,
    }
    wanted = {*_USER_MINI, *(f.strip() for f in fields)}
    return {key: value for key, value in every.items() if key in wanted}


# ---------------------------------------------------------------------- request models


class _Strict(BaseModel):
    # Unknown fields are tolerated, as a public API must; wrong types are not coerced.
    model_config = ConfigDict(extra="ignore", strict=True)


class FileReference(_Strict):
    type: Literal["file"]
    id: str = Field(min_length=1)


class FileVersionBase(_Strict):
    type: Literal["file_version"]
    id: str = Field(min_length=1)


class FolderReference(_Strict):
    type: Literal["folder"]
    id: str = Field(min_length=1)


class DocumentGenerationData(_Strict):
    generated_file_name: str = Field(min_length=1)
    user_input: dict[str, Any]


class DocGenBatchCreateRequest(_Strict):
    """The body of POST /docgen_batches. Box generates .docx and .pdf only."""

    file: FileReference
    file_version: FileVersionBase | None = None
    input_source: Literal["api"]
    destination_folder: FolderReference
    output_type: Literal["docx", "pdf"]
    document_generation_data: list[DocumentGenerationData] = Field(min_length=1)
