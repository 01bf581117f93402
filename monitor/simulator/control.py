"""The control API under /_sim: how tests, the demo and benchmarks shape the simulated world.
Not Box's: no token, no box-version, never subject to faults. Specified, and kept in step with
this module, in docs/simulator-control-api.md."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.simulator.config import OutcomeMix, TimelineConfig
from monitor.simulator.distortions import DuplicateSpec, MalformedSpec, OmitSpec, ShiftSpec
from monitor.simulator.faults import FaultSpec
from monitor.simulator.jobs import JobView
from monitor.simulator.state import STATE_KEY, SimulatorState
from monitor.simulator.wire import json_response

Body = TypeVar("Body", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedRequest(_Body):
    count: int = Field(ge=0, le=5_000_000)
    # The owner of the seeded jobs; default: the Service Account of the default app.
    created_by_id: str | None = Field(default=None, min_length=1)
    batch_size: int = Field(default=100, ge=1, le=100_000)
    outcomes: OutcomeMix | None = None
    template_file_id: str | None = Field(default=None, min_length=1)
    output_type: Literal["docx", "pdf"] | None = None


class BatchRequest(_Body):
    jobs: int = Field(ge=1, le=100_000)
    outcomes: OutcomeMix | None = None
    template_file_id: str | None = Field(default=None, min_length=1)
    output_type: Literal["docx", "pdf"] | None = None
    submitted_after_s: float | None = Field(default=None, ge=0)
    min_duration_s: float | None = Field(default=None, ge=0)
    max_duration_s: float | None = Field(default=None, ge=0)
    created_by_id: str | None = Field(default=None, min_length=1)
    # Texts for this batch's failed / completed_with_error jobs instead of realistic ones.
    errors: list[str] | None = None
    warnings: list[str] | None = None


class PinRequest(_Body):
    # Any string: an unknown status is how a client's tolerance of new statuses gets tested.
    status: str = Field(min_length=1)
    errors: list[str] | None = None
    warnings: list[str] | None = None


class WebhookFaultRequest(_Body):
    kind: Literal["drop", "late", "duplicate", "bad_signature"]
    rate: float = Field(default=1.0, ge=0, le=1)
    count: int | None = Field(default=None, ge=1)
    delay_s: float = Field(default=5.0, ge=0, le=3600)


class WebhookSettingsRequest(_Body):
    primary_key: str | None = Field(default=None, min_length=1)
    secondary_key: str | None = Field(default=None, min_length=1)
    retry_first_s: float | None = Field(default=None, ge=0)
    timeout_s: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0, le=20)


class AdvanceRequest(_Body):
    seconds: float = Field(ge=0)


class RevokeRequest(_Body):
    token: str | None = None


class SecretRotation(_Body):
    client_secret: str = Field(min_length=1)
    # Also revoke every token issued so far (Box keeps them until they expire).
    revoke_tokens: bool = False


class DeveloperTokenRequest(_Body):
    token: str = Field(min_length=1)
    user_id: str = Field(min_length=1)


class BadBody(Exception):
    def __init__(self, details: list[dict[str, Any]]) -> None:
        self.details = details
        super().__init__("invalid body")


async def _parse(model: type[Body], request: web.Request) -> Body:
    raw = await request.read()
    try:
        data: Any = orjson.loads(raw) if raw.strip() else {}
        return model.model_validate(data)
    except orjson.JSONDecodeError as exc:
        raise BadBody([{"loc": [], "msg": f"not JSON: {exc}"}]) from None
    except ValidationError as exc:
        raise BadBody(
            [{"loc": list(err["loc"]), "msg": err["msg"]} for err in exc.errors()]
        ) from None


class NotFound(Exception):
    def __init__(self, **what: str) -> None:
        self.what = what
        super().__init__(f"not found: {what}")


def _error(status: int, error: str, **extra: Any) -> web.Response:
    return json_response({"error": error, **extra}, status=status)


def job_internal(job: JobView) -> dict[str, Any]:
    """The control API's view of a job: Box's facts plus the schedule behind them."""
    batch = job.batch
    return {
        "id": str(job.id),
        "batch_id": str(batch.id),
        "status": job.status,
        "outcome": job.outcome,
        "pinned": job.pinned,
        "historic": batch.historic,
        "created_at_s": batch.created_at_s,
        "submitted_at_s": job.submitted_at_s,
        "finished_at_s": job.finished_at_s,
        "template_file_id": batch.template_file_id,
        "template_file_version_id": batch.template_file_version_id,
        "output_type": batch.output_type,
        "output_file_id": job.output_file_id,
        "created_by_id": batch.created_by_id,
        "failures": (
            {"errors": list(job.failures.errors), "warnings": list(job.failures.warnings)}
            if job.failures is not None
            else None
        ),
    }


def _state(request: web.Request) -> SimulatorState:
    return request.app[STATE_KEY]


@web.middleware
async def control_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A bad control request is answered in JSON with every problem listed."""
    try:
        response: web.StreamResponse = await handler(request)
    except BadBody as exc:
        return _error(400, "invalid_body", details=exc.details)
    except NotFound as exc:
        return _error(404, "not_found", **exc.what)
    return response


async def seed(request: web.Request) -> web.Response:
    body = await _parse(SeedRequest, request)
    batches = _state(request).seed_history(
        body.count,
        batch_size=body.batch_size,
        outcomes=body.outcomes,
        template_file_id=body.template_file_id,
        output_type=body.output_type,
        created_by_id=body.created_by_id,
    )
    return json_response({"jobs": body.count, "batches": batches})


async def start_batch(request: web.Request) -> web.Response:
    body = await _parse(BatchRequest, request)
    state = _state(request)
    overrides = body.model_dump(
        include={"submitted_after_s", "min_duration_s", "max_duration_s", "outcomes"},
        exclude_none=True,
    )
    try:
        timeline = TimelineConfig.model_validate(
            {**state.config.timeline.model_dump(), **overrides}
        )
    except ValidationError as exc:
        raise BadBody([{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]) from None
    batch = state.start_batch(
        body.jobs,
        timeline=timeline,
        template_file_id=body.template_file_id,
        output_type=body.output_type,
        created_by_id=body.created_by_id,
        errors=body.errors,
        warnings=body.warnings,
    )
    ids = state.jobs.batch_job_ids(batch)
    return json_response({"batch_id": str(batch.id), "job_ids": [str(i) for i in ids]})


def _job_or_404(request: web.Request) -> JobView:
    job_id = request.match_info["job_id"]
    job = _state(request).find_job(job_id)
    if job is None:
        raise NotFound(job_id=job_id)
    return job


async def get_job(request: web.Request) -> web.Response:
    return json_response(job_internal(_job_or_404(request)))


async def put_job(request: web.Request) -> web.Response:
    state = _state(request)
    job = _job_or_404(request)
    body = await _parse(PinRequest, request)
    now_s = state.now()
    state.jobs.pin(job.row, body.status, errors=body.errors, warnings=body.warnings, now_s=now_s)
    return json_response(job_internal(state.jobs.view(job.row, now_s)))


async def delete_job(request: web.Request) -> web.Response:
    state = _state(request)
    job = _job_or_404(request)
    state.jobs.delete(job.row, state.now())
    return web.Response(status=204)


async def list_jobs(request: web.Request) -> web.Response:
    state = _state(request)
    batch = None
    batch_id = request.query.get("batch_id")
    if batch_id is not None:
        batch = state.find_batch(batch_id)
        if batch is None:
            raise NotFound(batch_id=batch_id)
    status = request.query.get("status")
    owner = request.query.get("created_by_id")
    now_s = state.now()
    rows = state.jobs.newest_first(batch=batch, owner=owner)
    views = (state.jobs.view(row, now_s) for row in rows)
    entries = [job_internal(v) for v in views if status is None or v.status == status]
    return json_response({"entries": entries})


async def transitions(request: web.Request) -> web.Response:
    state = _state(request)
    job_id = request.query.get("job_id")
    batch_id = request.query.get("batch_id")
    entries = [
        {
            "job_id": str(t.job_id),
            "batch_id": str(t.batch_id),
            "from_status": t.from_status,
            "to_status": t.to_status,
            "at": t.at_s,
        }
        for t in state.jobs.transitions(state.now())
        if (job_id is None or str(t.job_id) == job_id)
        and (batch_id is None or str(t.batch_id) == batch_id)
    ]
    return json_response({"entries": entries})


async def add_fault(request: web.Request) -> web.Response:
    fault = _state(request).faults.add(await _parse(FaultSpec, request))
    return json_response({"fault_id": fault.id})


async def list_faults(request: web.Request) -> web.Response:
    return json_response({"entries": [f.public() for f in _state(request).faults.active()]})


async def clear_faults(request: web.Request) -> web.Response:
    _state(request).faults.clear()
    return web.Response(status=204)


async def delete_fault(request: web.Request) -> web.Response:
    fault_id = request.match_info["fault_id"]
    if not _state(request).faults.remove(fault_id):
        raise NotFound(fault_id=fault_id)
    return web.Response(status=204)


async def get_clock(request: web.Request) -> web.Response:
    clock = _state(request).clock
    return json_response({"now": clock.now(), "frozen": clock.frozen})


async def advance_clock(request: web.Request) -> web.Response:
    body = await _parse(AdvanceRequest, request)
    return json_response({"now": _state(request).clock.advance(body.seconds)})


async def revoke_tokens(request: web.Request) -> web.Response:
    body = await _parse(RevokeRequest, request)
    _state(request).tokens.revoke(body.token)
    return web.Response(status=204)


async def rotate_secret(request: web.Request) -> web.Response:
    state = _state(request)
    client_id = request.match_info["client_id"]
    app = state.tokens.apps.get(client_id)
    if app is None:
        raise NotFound(client_id=client_id)
    body = await _parse(SecretRotation, request)
    app.rotate(body.client_secret)
    revoked = state.tokens.revoke(client_id=client_id) if body.revoke_tokens else 0
    return json_response({"client_id": client_id, "revoked_tokens": revoked})


async def add_developer_token(request: web.Request) -> web.Response:
    body = await _parse(DeveloperTokenRequest, request)
    _state(request).tokens.add_developer_token(body.token, body.user_id)
    return web.Response(status=204)


def _distortions(request: web.Request) -> web.Response:
    return json_response(_state(request).distortions.public())


async def omit_jobs(request: web.Request) -> web.Response:
    _state(request).distortions.omit(await _parse(OmitSpec, request))
    return _distortions(request)


async def add_shift(request: web.Request) -> web.Response:
    shift = _state(request).distortions.add_shift(await _parse(ShiftSpec, request))
    return json_response({"shift_id": shift.id})


async def duplicate_job(request: web.Request) -> web.Response:
    body = await _parse(DuplicateSpec, request)
    _state(request).distortions.duplicates[int(body.job_id)] = body.status
    return _distortions(request)


async def malform_jobs(request: web.Request) -> web.Response:
    body = await _parse(MalformedSpec, request)
    _state(request).distortions.malformed.update((int(i), body.kind) for i in body.job_ids)
    return _distortions(request)


async def get_distortions(request: web.Request) -> web.Response:
    return _distortions(request)


async def clear_distortions(request: web.Request) -> web.Response:
    _state(request).distortions.clear()
    return web.Response(status=204)


async def add_webhook_fault(request: web.Request) -> web.Response:
    body = await _parse(WebhookFaultRequest, request)
    fault = _state(request).webhooks.add_fault(body.kind, body.rate, body.count, body.delay_s)
    return json_response({"fault_id": fault.id})


async def list_webhook_faults(request: web.Request) -> web.Response:
    faults = _state(request).webhooks.faults.values()
    return json_response({"entries": [f.public() for f in faults]})


async def clear_webhook_faults(request: web.Request) -> web.Response:
    _state(request).webhooks.faults.clear()
    return web.Response(status=204)


async def webhook_deliveries(request: web.Request) -> web.Response:
    return json_response({"entries": list(_state(request).webhooks.deliveries)})


async def webhook_settings(request: web.Request) -> web.Response:
    body = await _parse(WebhookSettingsRequest, request)
    settings = _state(request).webhooks.settings
    for name, value in body.model_dump(exclude_none=True).items():
        setattr(settings, name, value)
    return json_response({"retry_first_s": settings.retry_first_s,
                          "timeout_s": settings.timeout_s, "max_retries": settings.max_retries})


async def get_stats(request: web.Request) -> web.Response:
    state = _state(request)
    return json_response(
        {"requests": state.stats.snapshot(), "jobs": state.jobs.status_counts(state.now())}
    )


async def reset_stats(request: web.Request) -> web.Response:
    _state(request).stats.reset()
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/_sim/seed", seed, name="sim_seed")
    r.add_post("/_sim/batches", start_batch, name="sim_batches")
    r.add_get("/_sim/jobs", list_jobs, name="sim_jobs")
    r.add_get("/_sim/jobs/{job_id}", get_job, name="sim_job")
    r.add_put("/_sim/jobs/{job_id}", put_job, name="sim_job_put")
    r.add_delete("/_sim/jobs/{job_id}", delete_job, name="sim_job_delete")
    r.add_get("/_sim/transitions", transitions, name="sim_transitions")
    r.add_post("/_sim/faults", add_fault, name="sim_faults_add")
    r.add_get("/_sim/faults", list_faults, name="sim_faults")
    r.add_delete("/_sim/faults", clear_faults, name="sim_faults_clear")
    r.add_delete("/_sim/faults/{fault_id}", delete_fault, name="sim_fault_delete")
    r.add_get("/_sim/clock", get_clock, name="sim_clock")
    r.add_post("/_sim/clock/advance", advance_clock, name="sim_clock_advance")
    r.add_post("/_sim/tokens/revoke", revoke_tokens, name="sim_tokens_revoke")
    r.add_post("/_sim/tokens/developer", add_developer_token, name="sim_tokens_developer")
    r.add_post("/_sim/clients/{client_id}/secret", rotate_secret, name="sim_client_secret")
    r.add_post("/_sim/listing/omit", omit_jobs, name="sim_listing_omit")
    r.add_post("/_sim/listing/shift", add_shift, name="sim_listing_shift")
    r.add_post("/_sim/listing/duplicate", duplicate_job, name="sim_listing_duplicate")
    r.add_post("/_sim/listing/malformed", malform_jobs, name="sim_listing_malformed")
    r.add_get("/_sim/listing", get_distortions, name="sim_listing")
    r.add_delete("/_sim/listing", clear_distortions, name="sim_listing_clear")
    r.add_post("/_sim/webhooks/faults", add_webhook_fault, name="sim_webhook_faults_add")
    r.add_get("/_sim/webhooks/faults", list_webhook_faults, name="sim_webhook_faults")
    r.add_delete("/_sim/webhooks/faults", clear_webhook_faults, name="sim_webhook_faults_clear")
    r.add_get("/_sim/webhooks/deliveries", webhook_deliveries, name="sim_webhook_deliveries")
    r.add_post("/_sim/webhooks/settings", webhook_settings, name="sim_webhook_settings")
    r.add_get("/_sim/stats", get_stats, name="sim_stats")
    r.add_delete("/_sim/stats", reset_stats, name="sim_stats_reset")
