"""Box Doc Gen API models (version 2025.0), written from Box's OpenAPI spec
(`/work/shared/box-api/openapi-docgen.json`, the schema authority).

Each class names the schema it mirrors. Required fields follow the spec's `required` lists;
everything else is optional. Two deliberate choices:

- `status` is a plain `str`. Box may add a status; an unknown value is kept as it is (the poller
  treats it as non-terminal) and is never a validation error.
- `ClientError.code` is a plain `str`: Box documents codes (`rate_limit_exceeded`,
  `invalid_api_version`, ...) that the spec's enum does not list.

And one deviation: the spec lists no required field on the page envelopes, but a page without
`entries` is treated as malformed here. Reading it as an empty page would let a sweep declare
every job gone.

Unknown fields are ignored, so that Box can add fields without breaking the monitor. The models
hold no Python validators: page bodies are validated straight from bytes with
`Model.model_validate_json(raw)`, which keeps the whole sweep inside pydantic-core.

The small nested references (file, file version, batch, user, enterprise, failures) are frozen
pydantic dataclasses with `__slots__` rather than `BaseModel`s: a page of 1000 jobs holds 8000 of
them, and a slotted object with no `__dict__` and no fields-set costs about half as much to build
and to garbage-collect. They read the same way (`job.batch.id`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import AliasPath, BaseModel, ConfigDict, Field, SecretStr
from pydantic.dataclasses import dataclass
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

_REF_CONFIG = ConfigDict(extra="ignore", defer_build=True)


class BoxModel(BaseModel):
    """Base of the Box models: unknown fields ignored, instances immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


# -- nested references ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True, config=_REF_CONFIG)
class FileReference:
    """`FileReference`: a file by id."""

    type: Literal["file"]
    id: str


@dataclass(frozen=True, slots=True, kw_only=True, config=_REF_CONFIG)
class FileVersion:
    """`FileVersion--Base`: a file version by id."""

    id: str
    type: Literal["file_version"]


@dataclass(frozen=True, slots=True, kw_only=True, config=_REF_CONFIG)
class UserRef:
    """`User--Base`: a user by id."""

    id: str
    type: Literal["user"]


@dataclass(frozen=True, slots=True, kw_only=True, config=_REF_CONFIG)
class EnterpriseRef:
    """`EnterpriseReference`: the spec requires neither field."""

    id: str | None = None
    type: Literal["enterprise"] | None = None


@dataclass(frozen=True, slots=True, kw_only=True, config=_REF_CONFIG)
class DocGenBatch:
    """`DocGenBatch--Base`: what `POST /docgen_batches` answers, and a job's `batch`."""

    id: str
    type: Literal["docgen_batch"]


@dataclass(frozen=True, slots=True, kw_only=True, config=_REF_CONFIG)
class DocGenJobFailures:
    """The `failures` object of a job: errors and warnings from document generation."""

    errors: list[str]
    warnings: list[str]


# -- jobs ----------------------------------------------------------------------------------------


class DocGenJob(BoxModel):
    """`DocGenJob` (standard variant): `GET /docgen_jobs/{id}` and the batch and template lists.

    `output_file` and `output_file_version` stay `None` until the job completes.
    """

    id: str
    type: Literal["docgen_job"]
    batch: DocGenBatch
    template_file: FileReference
    template_file_version: FileVersion
    output_file: FileReference | None = None
    output_file_version: FileVersion | None = None
    status: str
    output_type: str
    failures: DocGenJobFailures | None = None


class DocGenJobFull(DocGenJob):
    """`DocGenJob--Full`: the entries of `GET /docgen_jobs`. `created_at` is an unparsed string
    (the spec declares no format)."""

    created_at: str | None = None
    created_by: UserRef
    enterprise: EnterpriseRef
    source: str


class DocGenJobs(BoxModel):
    """`DocGenJobs`: one page of `GET /docgen_batch_jobs/{batch_id}`. The last page has a
    `next_marker` that is `None` or empty."""

    entries: list[DocGenJob]
    limit: int | None = None
    next_marker: str | None = None
    prev_marker: str | None = None


class DocGenJobsFull(BoxModel):
    """`DocGenJobs--Full`: one page of `GET /docgen_jobs`."""

    entries: list[DocGenJobFull]
    limit: int | None = None
    next_marker: str | None = None
    prev_marker: str | None = None


# -- the sweep's projection of `DocGenJobs--Full` -------------------------------------------------
# A sweep reads a million jobs and needs eight fields of each. Validating only those, into plain
# dicts, still refuses a page that breaks them (a missing `status`, a batch without an id) and
# costs less than parsing the page with orjson (pydantic-core builds only what is kept). The ids
# of the batch, template and creator are read out of their objects (`AliasPath`: a missing or
# malformed object is a missing required field), which spares three dicts per entry.


class IdRef(TypedDict):
    id: str


class ListedFailures(TypedDict):
    errors: list[str]
    warnings: list[str]


def _id_of(name: str) -> Any:
    return Field(validation_alias=AliasPath(name, "id"))


class ListedJob(TypedDict):
    """The fields of a `DocGenJob--Full` that a sweep reads (others are ignored)."""

    id: str
    type: Literal["docgen_job"]
    batch_id: Annotated[str, _id_of("batch")]
    template_file_id: Annotated[str, _id_of("template_file")]
    # Required by Box's spec; read leniently (a listing without it still sweeps).
    template_file_version_id: NotRequired[Annotated[str, _id_of("template_file_version")]]
    output_file: NotRequired[IdRef | None]
    status: str
    output_type: str
    created_at: NotRequired[str | None]
    created_by_id: Annotated[str, _id_of("created_by")]
    failures: NotRequired[ListedFailures | None]


class JobListingPage(TypedDict):
    """One page of `GET /docgen_jobs`, as a sweep reads it."""

    entries: list[ListedJob]
    next_marker: NotRequired[str | None]


# -- the user behind a token ---------------------------------------------------------------------


class User(BoxModel):
    """`User` (`GET /2.0/users/me`), the fields the monitor reads: which account's jobs a token
    sees. `enterprise` is sent only when asked for with `fields`, and is null for a free
    account."""

    id: str
    type: Literal["user"]
    name: str | None = None
    login: str | None = None
    enterprise: EnterpriseRef | None = None


# -- webhooks (Box's unversioned API) ------------------------------------------------------------


class WebhookTarget(BoxModel):
    id: str
    type: str  # file or folder


class Webhook(BoxModel):
    """`Webhook` / `Webhook--Mini`. `triggers` is a list of strings: Box's spec enum (and the
    SDK's model) omit the Doc Gen triggers that Box's trigger table lists (FACTS §10)."""

    id: str
    type: Literal["webhook"]
    target: WebhookTarget | None = None
    address: str | None = None
    triggers: list[str] | None = None
    created_at: str | None = None


class Webhooks(BoxModel):
    """`Webhooks`: one page of `GET /2.0/webhooks`."""

    entries: list[Webhook] = []
    next_marker: str | None = None


# -- errors and tokens -----------------------------------------------------------------------


class ClientError(BoxModel):
    """`ClientError`: the JSON body of most 4xx and some 5xx answers. The spec requires no
    field, and `code` is not checked against the spec's enum."""

    type: str | None = None
    status: int | None = None
    code: str | None = None
    message: str | None = None
    context_info: dict[str, Any] | None = None
    help_url: str | None = None
    request_id: str | None = None


class OAuth2Error(BoxModel):
    """`OAuth2Error`: the body of a refused `POST /oauth2/token`."""

    error: str | None = None
    error_description: str | None = None


class AccessToken(BoxModel):
    """`AccessToken`: a successful `POST /oauth2/token`. The spec requires no field; a client
    relies only on `access_token` and `expires_in`. `token_type` and `issued_token_type` are
    plain strings because Box's own examples disagree with the spec's enums. The tokens are
    `SecretStr` so that no repr or log line can show them."""

    access_token: SecretStr | None = None
    expires_in: int | None = None
    token_type: str | None = None
    restricted_to: list[Any] | None = None
    refresh_token: SecretStr | None = None
    issued_token_type: str | None = None
