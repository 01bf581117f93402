"""The Box routes: POST /oauth2/token and the Doc Gen job endpoints, with the checks Box makes
before it answers (box-version, then the bearer token) and Box's error shapes when they fail."""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from monitor.simulator import faults, listing, paging, webhooks, wire
from monitor.simulator.auth import ISSUED_TOKEN_TYPE, GrantError, Principal, parse_form
from monitor.simulator.state import STATE_KEY

BOX_VERSION = "2025.0"
VERSION_HELP_URL = "https://developer.box.com/reference/error-codes/invalid-api-version"
DOCGEN_ROUTES = frozenset({"create_batch", "list_jobs", "get_job", "batch_jobs"})
# Routes behind a bearer token; /users/me exists in the unversioned API (2024.0), so it needs
# no box-version header (but accepts 2025.0, which a Doc Gen client sends everywhere).
WEBHOOK_ROUTES = frozenset({"webhooks_create", "webhooks_list", "webhook_get", "webhook_delete"})
# Unversioned routes (2024.0): no box-version needed, 2025.0 accepted.
UNVERSIONED_ROUTES = WEBHOOK_ROUTES | {"users_me"}
TOKEN_ROUTES = DOCGEN_ROUTES | UNVERSIONED_ROUTES
USERS_VERSIONS = frozenset({None, "2024.0", BOX_VERSION})
UNMATCHED = "unmatched"
PRINCIPAL_KEY = web.RequestKey("docgen_simulator_principal", Principal)

_VERSION_SHAPE = re.compile(r"\d{4}\.\d+")


def box_version_problem(value: str | None) -> str | None:
    """Box's documented message for a box-version header it refuses, or None when it is fine."""
    if value is None:
        return "Missing required box-version header."
    value = value.strip()
    if not value:
        return "Invalid (empty) API version specified in 'box-version' header."
    if "," in value:
        return "Multiple API versions specified in 'box-version' header."
    if value == BOX_VERSION:
        return None
    if _VERSION_SHAPE.fullmatch(value):
        return "Unsupported API version specified in 'box-version' header."
    return "Invalid API version specified in 'box-version' header."


def _unauthorized(with_token: bool) -> web.Response:
    challenge = 'Bearer realm="Service"'
    if with_token:
        challenge += (
            ', error="invalid_token", error_description="The access token provided is invalid."'
        )
    return wire.client_error(
        401, "unauthorized", "Unauthorized", headers={"WWW-Authenticate": challenge}
    )


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _route_name(request: web.Request) -> str | None:
    """The Box route a request matched, UNMATCHED for an unknown Box URL, None for /_sim."""
    if request.path.startswith("/_sim/") or request.path == "/_sim":
        return None
    name = request.match_info.route.name
    return name if name is not None else UNMATCHED


@web.middleware
async def box_middleware(request: web.Request, handler: faults.Handler) -> web.StreamResponse:
    """Count, inject faults, then check the box-version header and the bearer token. Faults
    come first: Box's rate limiter and gateways answer before the API looks at a request."""
    route = _route_name(request)
    if route is None:
        return await handler(request)
    state = request.app[STATE_KEY]
    try:
        if route == UNMATCHED:
            response = await _unmatched(request, handler)
        else:
            draw = state.faults.draw(route)
            response = await faults.apply(draw, request, _gate(route, handler))
    except web.HTTPException as exc:
        state.stats.record(route, exc.status)
        raise
    state.stats.record(route, response.status)
    return response


def _gate(route: str, handler: faults.Handler) -> faults.Handler:
    """The handler behind Box's checks: box-version first (an unversioned call never reaches
    Doc Gen), then the bearer token. The token route has neither."""

    async def gated(request: web.Request) -> web.StreamResponse:
        if route not in TOKEN_ROUTES:
            return await handler(request)
        version = request.headers.get("box-version")
        problem = None if route in UNVERSIONED_ROUTES and version in USERS_VERSIONS else (
            box_version_problem(version)
        )
        if problem is not None:
            return wire.client_error(400, "invalid_api_version", problem, help_url=VERSION_HELP_URL)
        token = _bearer_token(request)
        principal = request.app[STATE_KEY].tokens.authenticate(token) if token else None
        if principal is None:
            return _unauthorized(with_token=token is not None)
        request[PRINCIPAL_KEY] = principal
        return await handler(request)

    return gated


async def _unmatched(request: web.Request, handler: faults.Handler) -> web.StreamResponse:
    """An unknown Box URL gets Box's ClientError, not aiohttp's plain-text page."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        return wire.client_error(405, "method_not_allowed", "Method Not Allowed")
    except web.HTTPNotFound:
        return wire.client_error(404, "not_found", "Not Found")


def _not_found(name: str, value: str, kind: str) -> web.Response:
    return wire.client_error(
        404,
        "not_found",
        "Not Found",
        context_info={
            "errors": [
                {
                    "reason": "invalid_parameter",
                    "name": name,
                    "message": f"Invalid value '{value}'. '{kind}' with value '{value}' not found",
                }
            ]
        },
    )


def _bad_request(errors: list[dict[str, str]]) -> web.Response:
    return wire.client_error(400, "bad_request", "Bad Request", context_info={"errors": errors})


def _parameter_error(error: ErrorDetails) -> dict[str, str]:
    """One pydantic error in Box's context_info terms."""
    return {
        "reason": "missing_parameter" if error["type"] == "missing" else "invalid_parameter",
        "name": ".".join(str(part) for part in error["loc"]) or "body",
        "message": error["msg"],
    }


def _page_error(exc: paging.BadPageRequest) -> web.Response:
    return _bad_request([{"reason": "invalid_parameter", "name": exc.name, "message": str(exc)}])


# ------------------------------------------------------------------------- handlers


async def post_token(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        form = parse_form(request.content_type, await request.read())
        token, expires_in_s = state.tokens.grant(form)
    except GrantError as exc:
        return wire.oauth2_error(exc.error, exc.description)
    return wire.json_response(
        {
            "access_token": token,
            "expires_in": expires_in_s,
            "token_type": "bearer",
            "restricted_to": [],
            "issued_token_type": ISSUED_TOKEN_TYPE,
        }
    )


async def post_batch(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        raw: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _bad_request(
            [{"reason": "invalid_request_body", "name": "body", "message": "Invalid JSON body."}]
        )
    try:
        body = wire.DocGenBatchCreateRequest.model_validate(raw)
    except ValidationError as exc:
        return _bad_request([_parameter_error(e) for e in exc.errors()])
    batch = state.start_batch(
        len(body.document_generation_data),
        template_file_id=body.file.id,
        template_file_version_id=body.file_version.id if body.file_version else None,
        output_type=body.output_type,
        created_by_id=request[PRINCIPAL_KEY].user_id,
    )
    return wire.json_response({"id": str(batch.id), "type": "docgen_batch"}, status=202)


def _owner(request: web.Request) -> str:
    return request[PRINCIPAL_KEY].user_id


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    job = request.app[STATE_KEY].find_job(job_id)
    if job is None or job.batch.created_by_id != _owner(request):  # Box: missing or no access
        return _not_found("job_id", job_id, "job")
    return wire.json_response(wire.job_standard(job))


async def list_jobs(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    owner = _owner(request)
    try:
        page = listing.serve(
            state,
            listing.Listing(scope=f"jobs:{owner}", owner=owner, distorted=True),
            marker=request.query.get("marker"),
            limit=request.query.get("limit"),
        )
    except paging.BadPageRequest as exc:
        return _page_error(exc)
    offset_min = state.config.created_at_utc_offset_min
    directory = state.directory
    entries = [
        wire.job_full(
            job,
            enterprise_id=directory.user(job.batch.created_by_id).enterprise.id,
            created_at=wire.created_at_text(job.batch.created_at_s, offset_min),
        )
        for job in page.jobs
    ]
    surrogate = listing.malform(entries, state.distortions.malformed)
    body = wire.job_page(entries, limit=page.limit, next_marker=page.next_marker)
    return web.Response(
        body=listing.dumps(body, lone_surrogate=surrogate), content_type="application/json"
    )


async def list_batch_jobs(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    state = request.app[STATE_KEY]
    owner = _owner(request)
    batch = state.find_batch(batch_id)
    if batch is None or batch.created_by_id != owner:
        return _not_found("batch_id", batch_id, "batch")
    try:
        page = listing.serve(
            state,
            listing.Listing(scope=f"batch:{batch.id}", owner=owner, batch=batch),
            marker=request.query.get("marker"),
            limit=request.query.get("limit"),
        )
    except paging.BadPageRequest as exc:
        return _page_error(exc)
    entries = [wire.job_standard(job) for job in page.jobs]
    return wire.json_response(
        wire.job_page(entries, limit=page.limit, next_marker=page.next_marker)
    )


async def get_users_me(request: web.Request) -> web.Response:
    """Box's user object for the token's user; `fields` as Box treats it (the mini fields plus
    those asked for: `enterprise` comes only when asked for)."""
    state = request.app[STATE_KEY]
    user = state.directory.user(_owner(request))
    fields = request.query.get("fields")
    return wire.json_response(
        wire.user(user, fields=None if fields is None else fields.split(","))
    )


def _webhook(hook: webhooks.Webhook) -> dict[str, Any]:
    return {
        "id": hook.id,
        "type": "webhook",
        "target": {"id": hook.target_id, "type": hook.target_type},
        "created_by": {"type": "user", "id": hook.created_by_id},
        "created_at": wire.created_at_text(hook.created_at_s, 0),
        "address": hook.address,
        "triggers": list(hook.triggers),
    }


def _webhook_problems(raw: Any) -> list[dict[str, str]]:
    """Box's checks of `POST /2.0/webhooks` that the simulator makes: a file or folder target
    with an id, an http(s) address, a non-empty list of triggers; Doc Gen triggers on files
    only (Box's trigger table). Box also wants HTTPS on port 443; the simulator takes plain
    http, so that tests and the demo can receive on loopback."""
    if not isinstance(raw, dict):
        return [{"reason": "invalid_request_body", "name": "body", "message": "Invalid JSON."}]
    problems = []
    target = raw.get("target")
    if not (isinstance(target, dict) and isinstance(target.get("id"), str) and target["id"]
            and target.get("type") in ("file", "folder")):
        problems.append({"reason": "invalid_parameter", "name": "target",
                         "message": "target needs an id and a type of file or folder"})
    address = raw.get("address")
    if not (isinstance(address, str) and address.startswith(("https://", "http://"))):
        problems.append({"reason": "invalid_parameter", "name": "address",
                         "message": "address must be an https URL"})
    triggers = raw.get("triggers")
    if not (isinstance(triggers, list) and triggers and all(isinstance(t, str) for t in triggers)):
        problems.append({"reason": "invalid_parameter", "name": "triggers",
                         "message": "triggers must be a non-empty list"})
    elif isinstance(target, dict) and target.get("type") == "folder" and (
            set(triggers) & webhooks.DOCGEN_TRIGGERS):
        problems.append({"reason": "invalid_parameter", "name": "triggers",
                         "message": "Doc Gen triggers are available on files only"})
    return problems


async def post_webhook(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        raw: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raw = None
    problems = _webhook_problems(raw)
    if problems:
        return _bad_request(problems)
    hook = state.webhooks.create(
        raw["target"]["id"], raw["target"]["type"], raw["address"], raw["triggers"],
        _owner(request), state.now(),
    )
    if hook is None:
        return wire.client_error(409, "conflict", "Webhook already exists for this target")
    return wire.json_response(_webhook(hook), status=201)


async def list_webhooks(request: web.Request) -> web.Response:
    """The caller's webhooks, marker-paged (the marker is the index to start from)."""
    state = request.app[STATE_KEY]
    mine = [h for h in state.webhooks.hooks.values() if h.created_by_id == _owner(request)]
    try:
        limit = min(int(request.query.get("limit", "100")), 200)
        start = int(request.query.get("marker") or 0)
    except ValueError:
        return _bad_request([{"reason": "invalid_parameter", "name": "limit",
                              "message": "limit and marker are numbers"}])
    page = mine[start:start + max(limit, 1)]
    next_marker = str(start + len(page)) if start + len(page) < len(mine) else None
    entries = [{"id": h.id, "type": "webhook",
                "target": {"id": h.target_id, "type": h.target_type}} for h in page]
    return wire.json_response({"entries": entries, "limit": limit, "next_marker": next_marker})


def _own_webhook(request: web.Request) -> webhooks.Webhook | None:
    hook = request.app[STATE_KEY].webhooks.hooks.get(request.match_info["webhook_id"])
    return hook if hook is not None and hook.created_by_id == _owner(request) else None


async def get_webhook(request: web.Request) -> web.Response:
    hook = _own_webhook(request)
    if hook is None:
        return _not_found("webhook_id", request.match_info["webhook_id"], "webhook")
    return wire.json_response(_webhook(hook))


async def delete_webhook(request: web.Request) -> web.Response:
    hook = _own_webhook(request)
    if hook is None:
        return _not_found("webhook_id", request.match_info["webhook_id"], "webhook")
    del request.app[STATE_KEY].webhooks.hooks[hook.id]
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/oauth2/token", post_token, name="token")
    app.router.add_post("/2.0/docgen_batches", post_batch, name="create_batch")
    app.router.add_get("/2.0/docgen_jobs", list_jobs, name="list_jobs", allow_head=False)
    app.router.add_get("/2.0/docgen_jobs/{job_id}", get_job, name="get_job", allow_head=False)
    app.router.add_get(
        "/2.0/docgen_batch_jobs/{batch_id}", list_batch_jobs, name="batch_jobs", allow_head=False
    )
    app.router.add_get("/2.0/users/me", get_users_me, name="users_me", allow_head=False)
    app.router.add_post("/2.0/webhooks", post_webhook, name="webhooks_create")
    app.router.add_get("/2.0/webhooks", list_webhooks, name="webhooks_list", allow_head=False)
    app.router.add_get(
        "/2.0/webhooks/{webhook_id}", get_webhook, name="webhook_get", allow_head=False
    )
    app.router.add_delete("/2.0/webhooks/{webhook_id}", delete_webhook, name="webhook_delete")
