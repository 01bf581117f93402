"""The simulator behaves like Box's Doc Gen API, over real sockets, as a Box client sees it;
and its control API shapes that behaviour on demand.

Every simulator here runs a frozen clock (time moves only through /_sim/clock/advance), so
timelines are exact and no test waits on wall time except where wall time is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import secrets
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import SecretStr

from monitor.simulator import (
    AppConfig,
    RunningSimulator,
    SimulatorConfig,
    SteadyStreamConfig,
    UserConfig,
    serve_forever,
    start_simulator,
)
from monitor.simulator.auth import GrantError, TokenStore, parse_form
from monitor.simulator.clock import SimClock

JSON = dict[str, Any]

BOX_HEADERS = {"box-version": "2025.0", "Authorization": "Bearer dev-token"}
DOCGEN_ROUTES = [
    ("GET", "/2.0/docgen_jobs"),
    ("GET", "/2.0/docgen_jobs/{job_id}"),
    ("GET", "/2.0/docgen_batch_jobs/{batch_id}"),
    ("POST", "/2.0/docgen_batches"),
]
CCG_FORM = {
    "grant_type": "client_credentials",
    "client_id": "sim-client-id",
    "client_secret": "sim-client-secret",
    "box_subject_type": "enterprise",
    "box_subject_id": "sim-enterprise",
}
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FORM = "application/x-www-form-urlencoded"
BATCH_BODY: JSON = {
    "file": {"type": "file", "id": "1234567890"},
    "input_source": "api",
    "destination_folder": {"type": "folder", "id": "42037322"},
    "output_type": "pdf",
    "document_generation_data": [
        {"generated_file_name": "Invoice 1", "user_input": {"customer_name": "Aaron Levie"}},
        {"generated_file_name": "Invoice 2", "user_input": {"customer_name": "Dylan Smith"}},
    ],
}


# -- fixtures ---------------------------------------------------------------------------------

SimFactory = Callable[..., Awaitable[RunningSimulator]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    """Builds simulators (frozen clock unless told otherwise) and closes every one it built."""
    built: list[RunningSimulator] = []

    async def make(**overrides: Any) -> RunningSimulator:
        settings: dict[str, Any] = {"seed": 7, "frozen_clock": True, **overrides}
        simulator = await start_simulator(SimulatorConfig(**settings))
        built.append(simulator)
        return simulator

    yield make
    for simulator in built:
        await simulator.close()


@pytest.fixture
async def sim(make_sim: SimFactory) -> RunningSimulator:
    return await make_sim()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Client:
    """A thin caller: Box routes with Box's headers, and the control API."""

    def __init__(self, http: aiohttp.ClientSession, sim: RunningSimulator) -> None:
        self.http = http
        self.url = sim.url

    async def box(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.request(
            method, self.url + path, headers=BOX_HEADERS if headers is None else headers, **kwargs
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None, response

    async def raw(self, path: str, **params: str) -> tuple[int, bytes]:
        async with self.http.get(self.url + path, headers=BOX_HEADERS, params=params) as response:
            return response.status, await response.read()

    async def ctl(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.url + "/_sim" + path, json=body) as response:
            assert response.status < 300, (
                f"{method} {path}: {response.status} {await response.text()}"
            )
            return await response.json() if response.status != 204 else None

    async def token(self, **form: str) -> tuple[int, JSON]:
        async with self.http.post(
            self.url + "/oauth2/token", data={**CCG_FORM, **form}
        ) as response:
            return response.status, await response.json()

    async def all_job_ids(self, path: str = "/2.0/docgen_jobs", limit: int = 1000) -> list[str]:
        ids: list[str] = []
        marker: str | None = None
        while True:
            params = {"limit": str(limit), **({"marker": marker} if marker else {})}
            status, body, _ = await self.box("GET", path, params=params)
            assert status == 200, body
            ids += [entry["id"] for entry in body["entries"]]
            marker = body["next_marker"]
            if marker is None:
                return ids


@pytest.fixture
def client(http: aiohttp.ClientSession, sim: RunningSimulator) -> Client:
    return Client(http, sim)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll `check` until it holds; fail the test after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.01)


async def start_batch(client: Client, **body: Any) -> JSON:
    result: JSON = await client.ctl("POST", "/batches", {"jobs": 1, **body})
    return result


# -- auth -------------------------------------------------------------------------------------


async def test_a_request_without_a_token_gets_401_with_a_challenge(client: Client) -> None:
    status, body, response = await client.box(
        "GET", "/2.0/docgen_jobs", headers={"box-version": "2025.0"}
    )
    assert status == 401
    assert body["type"] == "error"
    assert body["code"] == "unauthorized"
    assert body["status"] == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="Service"'


async def test_an_unknown_token_gets_401_invalid_token(client: Client) -> None:
    status, body, response = await client.box(
        "GET", "/2.0/docgen_jobs", headers={"box-version": "2025.0", "Authorization": "Bearer nope"}
    )
    assert status == 401
    assert body["code"] == "unauthorized"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_a_ccg_token_works_and_carries_no_refresh_token(client: Client) -> None:
    status, token = await client.token()
    assert status == 200
    assert token["token_type"] == "bearer"
    assert token["expires_in"] == 3600
    assert token["restricted_to"] == []
    assert "refresh_token" not in token
    headers = {"box-version": "2025.0", "Authorization": f"Bearer {token['access_token']}"}
    status, body, _ = await client.box("GET", "/2.0/docgen_jobs", headers=headers)
    assert status == 200
    assert body["entries"] == []


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"client_secret": "wrong"}, "invalid_grant"),
        ({"client_id": "someone-else"}, "invalid_client"),
        ({"box_subject_id": "another-enterprise"}, "invalid_grant"),
        ({"box_subject_type": "user", "box_subject_id": "123"}, "invalid_grant"),
        ({"box_subject_type": "group"}, "invalid_request"),
        ({"grant_type": ""}, "invalid_request"),
        ({"grant_type": "password"}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({"client_secret": ""}, "invalid_request"),
    ],
)
async def test_a_refused_grant_gets_400_with_an_oauth2_body(
    client: Client, form: dict[str, str], error: str
) -> None:
    status, body = await client.token(**form)
    assert status == 400
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    assert set(body) == {"error", "error_description"}


async def test_a_user_token_acts_for_that_user(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """Jobs started with a box_subject_type=user token are created by that user."""
    client = Client(http, await make_sim(user_ids=["31415926"]))
    status, token = await client.token(box_subject_type="user", box_subject_id="31415926")
    assert status == 200
    headers = {"box-version": "2025.0", "Authorization": f"Bearer {token['access_token']}"}
    status, _, _ = await client.box("POST", "/2.0/docgen_batches", headers=headers, json=BATCH_BODY)
    assert status == 202
    _, page, _ = await client.box("GET", "/2.0/docgen_jobs", headers=headers)
    assert [entry["created_by"]["id"] for entry in page["entries"]] == ["31415926"] * 2


async def test_a_revoked_token_gets_401_and_developer_tokens_survive(client: Client) -> None:
    _, token = await client.token()
    headers = {"box-version": "2025.0", "Authorization": f"Bearer {token['access_token']}"}
    assert (await client.box("GET", "/2.0/docgen_jobs", headers=headers))[0] == 200
    await client.ctl("POST", "/tokens/revoke")
    status, body, _ = await client.box("GET", "/2.0/docgen_jobs", headers=headers)
    assert status == 401
    assert body["code"] == "unauthorized"
    assert (await client.box("GET", "/2.0/docgen_jobs"))[0] == 200


async def test_one_developer_token_can_be_revoked(client: Client) -> None:
    await client.ctl("POST", "/tokens/revoke", {"token": "dev-token"})
    assert (await client.box("GET", "/2.0/docgen_jobs"))[0] == 401


async def test_an_issued_token_expires_on_the_simulator_clock(client: Client) -> None:
    _, token = await client.token()
    headers = {"box-version": "2025.0", "Authorization": f"Bearer {token['access_token']}"}
    await client.ctl("POST", "/clock/advance", {"seconds": 3599})
    assert (await client.box("GET", "/2.0/docgen_jobs", headers=headers))[0] == 200
    await client.ctl("POST", "/clock/advance", {"seconds": 1})
    assert (await client.box("GET", "/2.0/docgen_jobs", headers=headers))[0] == 401


# -- 403 and retry-after on every route -------------------------------------------------------

EVERY_ROUTE = [
    ("list_jobs", "GET", "/2.0/docgen_jobs"),
    ("get_job", "GET", "/2.0/docgen_jobs/1"),
    ("batch_jobs", "GET", "/2.0/docgen_batch_jobs/1"),
    ("create_batch", "POST", "/2.0/docgen_batches"),
    ("users_me", "GET", "/2.0/users/me"),
    ("token", "POST", "/oauth2/token"),
]


async def _call(client: Client, method: str, path: str) -> tuple[int, Any, aiohttp.ClientResponse]:
    if path == "/oauth2/token":
        return await client.box(method, path, headers={}, data=CCG_FORM)
    return await client.box(method, path, json=BATCH_BODY if method == "POST" else None)


@pytest.mark.parametrize(("route", "method", "path"), EVERY_ROUTE)
async def test_a_403_fault_answers_on_every_route_with_its_retry_after(
    client: Client, route: str, method: str, path: str
) -> None:
    await client.ctl("POST", "/faults", {"route": route, "kind": "403", "count": 1,
                                         "retry_after_s": 3600})
    status, body, response = await _call(client, method, path)
    assert (status, body["type"], body["status"]) == (403, "error", 403)
    assert body["code"] == "access_denied_insufficient_permissions"
    assert response.headers["retry-after"] == "3600"
    assert (await _call(client, method, path))[0] != 403  # spent after one


async def test_retry_after_is_chosen_per_fault(client: Client) -> None:
    """Each fault sends its own retry-after: huge numbers, verbatim text, or none at all."""
    faults = [
        {"route": "list_jobs", "kind": "429", "retry_after_s": 1e9},
        {"route": "get_job", "kind": "503", "retry_after": "1e9"},
        {"route": "batch_jobs", "kind": "429"},
        {"route": "users_me", "kind": "500"},
        {"route": "token", "kind": "502", "retry_after_s": 2.5},
        {"route": "create_batch", "kind": "503", "retry_after_s": 0},
    ]
    for fault in faults:
        await client.ctl("POST", "/faults", fault)
    got = {}
    for route, method, path in EVERY_ROUTE:
        status, _, response = await _call(client, method, path)
        got[route] = (status, response.headers.get("retry-after"))
    assert got == {
        "list_jobs": (429, "1000000000"),
        "get_job": (503, "1e9"),
        "batch_jobs": (429, "1"),
        "users_me": (500, None),
        "token": (502, "2.5"),
        "create_batch": (503, None),
    }


async def test_a_403_can_say_that_doc_gen_is_off(client: Client) -> None:
    await client.ctl("POST", "/faults", {
        "route": "list_jobs", "kind": "403", "code": "forbidden",
        "message": "Doc Gen is not enabled for this enterprise.",
    })
    status, body, response = await client.box("GET", "/2.0/docgen_jobs")
    assert (status, body["code"], body["message"]) == (
        403, "forbidden", "Doc Gen is not enabled for this enterprise.")
    assert "retry-after" not in response.headers


# -- the token endpoint answers bad requests with OAuth2 errors, never 500 --------------------


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        ({**CCG_FORM, "client_secret": "s\u00e9cret-\U0001f511"}, None, "invalid_grant"),
        ({**CCG_FORM, "client_id": "cli\u00e9nt"}, None, "invalid_client"),
        ({"grant_type": JWT_GRANT, "assertion": "\u00e9.\u00e9.\u00e9",
          "client_id": "sim-client-id", "client_secret": "sim-client-secret"}, None,
         "invalid_grant"),
        ({"grant_type": JWT_GRANT, "assertion": "x", "client_id": "sim-client-id",
          "client_secret": "\u00fcber"}, None, "invalid_client"),
        (b"grant_type=client_credentials&client_secret=%ff%fe", FORM, "invalid_request"),
        (b"\xff\xfe\x00garbage", FORM, "invalid_request"),
        (b"grant_type=client_credentials&&client_id=x", FORM, "invalid_request"),
        (b"grant_type", FORM, "invalid_request"),
        (b"grant_type=client_credentials&grant_type=client_credentials", FORM,
         "invalid_request"),
        (b"", FORM, "invalid_request"),
        (json.dumps(CCG_FORM).encode(), "application/json", "invalid_request"),
        ({k: v for k, v in CCG_FORM.items() if k != "client_id"}, None, "invalid_request"),
        ({k: v for k, v in CCG_FORM.items() if k != "box_subject_id"}, None, "invalid_request"),
    ],
)
async def test_a_bad_token_request_is_a_400_oauth2_error(
    client: Client, body: Any, content_type: str | None, error: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else None
    async with client.http.post(client.url + "/oauth2/token", data=body,
                                headers=headers) as response:
        status, answer = response.status, await response.json()
    assert (status, answer["error"]) == (400, error)
    assert set(answer) == {"error", "error_description"}
    assert "sim-client-secret" not in answer["error_description"]


@settings(max_examples=300, deadline=None)
@given(body=st.one_of(
    st.binary(max_size=200),
    st.dictionaries(
        st.sampled_from(["grant_type", "client_id", "client_secret", "box_subject_type",
                         "box_subject_id", "assertion", "other"]),
        st.one_of(st.text(max_size=40), st.sampled_from(
            ["client_credentials", JWT_GRANT, "sim-client-id", "sim-client-secret",
             "enterprise", "user", "sim-enterprise"])),
    ).map(lambda form: urllib.parse.urlencode(form).encode()),
))
def test_the_token_grant_refuses_any_body_with_an_oauth2_error(body: bytes) -> None:
    """Whatever the bytes, parsing and granting either issue a token or raise GrantError."""
    tokens = TokenStore(SimulatorConfig(user_ids=["31415926"]), SimClock(frozen=True))
    refusal = None
    try:
        tokens.grant(parse_form("application/x-www-form-urlencoded", body))
    except GrantError as exc:
        refusal = exc.error
    assert refusal in {None, "invalid_request", "invalid_client", "invalid_grant",
                       "unsupported_grant_type"}


# -- secret rotation --------------------------------------------------------------------------


async def test_a_rotated_secret_is_refused_as_invalid_client(client: Client) -> None:
    _, before = await client.token()
    rotated = await client.ctl("POST", "/clients/sim-client-id/secret",
                               {"client_secret": "new-secret"})
    assert rotated == {"client_id": "sim-client-id", "revoked_tokens": 0}
    status, body = await client.token()
    assert (status, body["error"]) == (400, "invalid_client")
    assert (await client.token(client_secret="never-valid"))[1]["error"] == "invalid_grant"
    status, after = await client.token(client_secret="new-secret")
    assert status == 200
    for token in (before, after):  # tokens issued before a rotation live until they expire
        assert (await client.box("GET", "/2.0/docgen_jobs",
                                 headers=bearer(token["access_token"])))[0] == 200


async def test_a_rotation_can_revoke_the_apps_tokens(client: Client) -> None:
    _, before = await client.token()
    rotated = await client.ctl("POST", "/clients/sim-client-id/secret",
                               {"client_secret": "new-secret", "revoke_tokens": True})
    assert rotated["revoked_tokens"] == 1
    status, _, _ = await client.box("GET", "/2.0/docgen_jobs",
                                    headers=bearer(before["access_token"]))
    assert status == 401
    assert (await client.box("GET", "/2.0/docgen_jobs"))[0] == 200  # developer tokens stay
    async with client.http.post(f"{client.url}/_sim/clients/nobody/secret",
                                json={"client_secret": "x"}) as response:
        assert response.status == 404


# -- box-version ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), DOCGEN_ROUTES)
@pytest.mark.parametrize(
    ("version", "message"),
    [
        (None, "Missing required box-version header."),
        ("", "Invalid (empty) API version specified in 'box-version' header."),
        ("2024.0", "Unsupported API version specified in 'box-version' header."),
        ("latest", "Invalid API version specified in 'box-version' header."),
        ("2025.0,2024.0", "Multiple API versions specified in 'box-version' header."),
    ],
)
async def test_every_docgen_route_requires_box_version_2025_0(
    client: Client, method: str, path: str, version: str | None, message: str
) -> None:
    headers = {"Authorization": "Bearer dev-token"}
    if version is not None:
        headers["box-version"] = version
    url = path.format(job_id="1", batch_id="1")
    status, body, _ = await client.box(method, url, headers=headers, json=BATCH_BODY)
    assert status == 400
    assert body["code"] == "invalid_api_version"
    assert body["message"] == message


async def test_the_version_is_checked_before_the_token(client: Client) -> None:
    status, body, _ = await client.box("GET", "/2.0/docgen_jobs", headers={})
    assert (status, body["code"]) == (400, "invalid_api_version")


# -- paging -----------------------------------------------------------------------------------


async def test_limit_defaults_to_100_and_is_clamped_to_1000(client: Client) -> None:
    await client.ctl("POST", "/seed", {"count": 1500})
    _, body, _ = await client.box("GET", "/2.0/docgen_jobs")
    assert (len(body["entries"]), body["limit"]) == (100, 100)
    _, body, _ = await client.box("GET", "/2.0/docgen_jobs", params={"limit": "5000"})
    assert (len(body["entries"]), body["limit"]) == (1000, 1000)
    assert body["prev_marker"] is None
    assert isinstance(body["next_marker"], str)


@pytest.mark.parametrize("limit", ["0", "-3", "ten", "1.5"])
async def test_a_bad_limit_is_400_bad_request(client: Client, limit: str) -> None:
    status, body, _ = await client.box("GET", "/2.0/docgen_jobs", params={"limit": limit})
    assert (status, body["code"]) == (400, "bad_request")
    assert body["context_info"]["errors"][0]["name"] == "limit"


async def test_paging_serves_every_job_exactly_once_while_jobs_are_added(client: Client) -> None:
    """A batch created half way through a pass lands at the head, before the marker: the pass
    serves every job it started with exactly once, and the next pass starts with the new ones."""
    await client.ctl("POST", "/seed", {"count": 950})
    before = [job["id"] for job in (await client.ctl("GET", "/jobs"))["entries"]]
    seen: list[str] = []
    marker: str | None = None
    pages = 0
    while True:
        params = {"limit": "200", **({"marker": marker} if marker else {})}
        _, body, _ = await client.box("GET", "/2.0/docgen_jobs", params=params)
        seen += [entry["id"] for entry in body["entries"]]
        pages += 1
        if pages == 2:  # a batch lands while the client is half way through
            landed = await start_batch(client, jobs=30)
        marker = body["next_marker"]
        if marker is None:
            break
    assert len(seen) == len(set(seen)) == 950
    assert seen == before
    assert await client.all_job_ids() == landed["job_ids"][::-1] + before


async def test_markers_are_opaque_and_a_foreign_marker_is_400(client: Client) -> None:
    batch = await start_batch(client, jobs=5)
    _, body, _ = await client.box("GET", "/2.0/docgen_jobs", params={"limit": "2"})
    marker = body["next_marker"]
    assert body["entries"][-1]["id"] not in marker
    for bad in ["not-a-marker", "eyJ2IjoxfQ", marker[:-3]]:
        status, error, _ = await client.box("GET", "/2.0/docgen_jobs", params={"marker": bad})
        assert (status, error["code"]) == (400, "bad_request"), bad
    # A marker from one listing does not work on another.
    status, error, _ = await client.box(
        "GET", f"/2.0/docgen_batch_jobs/{batch['batch_id']}", params={"marker": marker}
    )
    assert (status, error["code"]) == (400, "bad_request")


async def test_batch_jobs_are_paged_newest_first(client: Client) -> None:
    """A batch's jobs share their created_at, so Box's order puts the highest id first (this
    test expected creation order before issue 8; that order was not Box's)."""
    await client.ctl("POST", "/seed", {"count": 300})
    batch = await start_batch(client, jobs=250)
    await start_batch(client, jobs=10)
    path = f"/2.0/docgen_batch_jobs/{batch['batch_id']}"
    assert await client.all_job_ids(path, limit=100) == batch["job_ids"][::-1]


async def test_an_unknown_batch_or_job_is_404_not_found(client: Client) -> None:
    for path in ["/2.0/docgen_batch_jobs/999", "/2.0/docgen_jobs/999", "/2.0/docgen_jobs/abc"]:
        status, body, _ = await client.box("GET", path)
        assert (status, body["code"], body["type"]) == (404, "not_found", "error"), path


async def test_an_unknown_box_url_gets_a_client_error(client: Client) -> None:
    status, body, _ = await client.box("GET", "/2.0/docgen_nothing")
    assert (status, body["code"]) == (404, "not_found")
    stats = await client.ctl("GET", "/stats")
    assert stats["requests"]["unmatched"] == {"404": 1}


# -- Box's apparent order, users and scoping --------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"box-version": "2025.0", "Authorization": f"Bearer {token}"}


async def test_listings_are_newest_first_by_created_at_then_id(client: Client) -> None:
    """Order is created_at descending, ties by id descending, whatever order jobs were stored in:
    a history seeded after live batches still lists after them."""
    first = await start_batch(client, jobs=3)
    await client.ctl("POST", "/clock/advance", {"seconds": 5})
    second = await start_batch(client, jobs=2)
    third = await start_batch(client, jobs=2)  # same created_at as `second`, higher ids
    await client.ctl("POST", "/seed", {"count": 40, "batch_size": 10})
    _, page, _ = await client.box("GET", "/2.0/docgen_jobs", params={"limit": "1000"})
    keys = [(_parse_rfc3339(e["created_at"]), int(e["id"])) for e in page["entries"]]
    assert keys == sorted(keys, reverse=True)
    assert len(keys) == 47
    head = [e["id"] for e in page["entries"][:7]]
    assert head == third["job_ids"][::-1] + second["job_ids"][::-1] + first["job_ids"][::-1]
    listed = await client.all_job_ids(limit=6)  # marker paging keeps exactly that order
    assert listed == [e["id"] for e in page["entries"]]
    ctl = await client.ctl("GET", "/jobs")
    assert [job["id"] for job in ctl["entries"]] == listed


async def test_users_me_describes_the_tokens_user(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """The Service Account for developer and enterprise tokens, the named user for a user
    grant; `enterprise` only when asked for with `fields`, as on Box."""
    client = Client(http, await make_sim(
        user_ids=["31415926"],
        users=[UserConfig(id="31415926", name="Ada Lovelace", login="ada@example.com")],
    ))
    status, me, _ = await client.box("GET", "/2.0/users/me")
    assert status == 200
    assert (me["type"], me["id"], me["status"]) == ("user", "20000001", "active")
    assert me["login"].startswith("AutomationUser_")
    assert "enterprise" not in me
    _, me, _ = await client.box("GET", "/2.0/users/me", params={"fields": "enterprise"})
    assert me == {
        "type": "user",
        "id": "20000001",
        "name": "sim-client-id Service Account",
        "login": "AutomationUser_20000001@boxdevedition.com",
        "enterprise": {"id": "sim-enterprise", "type": "enterprise",
                       "name": "Simulated Enterprise"},
    }
    _, token = await client.token(box_subject_type="user", box_subject_id="31415926")
    status, me, _ = await client.box(
        "GET", "/2.0/users/me", headers={"Authorization": f"Bearer {token['access_token']}"},
        params={"fields": "id,name,login,enterprise"},
    )
    assert status == 200  # no box-version needed: /users/me is in the unversioned API
    assert (me["id"], me["name"], me["login"]) == ("31415926", "Ada Lovelace", "ada@example.com")
    assert me["enterprise"]["id"] == "sim-enterprise"
    status, body, _ = await client.box("GET", "/2.0/users/me", headers={})
    assert (status, body["code"]) == (401, "unauthorized")


async def test_a_token_sees_only_its_users_jobs(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    """Listings show the caller's jobs; another user's job or batch is 404, as on Box."""
    other = UserConfig(id="777", developer_tokens=[SecretStr("other-token")])
    client = Client(http, await make_sim(users=[other]))
    mine = await start_batch(client, jobs=2)
    theirs = await start_batch(client, jobs=3, created_by_id="777")
    await client.ctl("POST", "/seed", {"count": 4, "created_by_id": "777"})
    assert await client.all_job_ids() == mine["job_ids"][::-1]
    other_headers = bearer("other-token")
    _, page, _ = await client.box("GET", "/2.0/docgen_jobs", headers=other_headers)
    assert len(page["entries"]) == 7
    assert {e["created_by"]["id"] for e in page["entries"]} == {"777"}
    assert page["entries"][0]["id"] == theirs["job_ids"][-1]
    for path in [f"/2.0/docgen_jobs/{theirs['job_ids'][0]}",
                 f"/2.0/docgen_batch_jobs/{theirs['batch_id']}"]:
        status, body, _ = await client.box("GET", path)
        assert (status, body["code"]) == (404, "not_found"), path
        assert (await client.box("GET", path, headers=other_headers))[0] == 200
    _, me, _ = await client.box("GET", "/2.0/users/me", headers=other_headers)
    assert me["id"] == "777"


async def test_an_enterprise_grant_of_another_app_acts_as_its_service_account(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    app = AppConfig(client_id="app-2", client_secret=SecretStr("secret-2"),
                    enterprise_id="ent-2", enterprise_name="Other Corp",
                    service_account_user_id="555")
    client = Client(http, await make_sim(apps=[app]))
    await start_batch(client, jobs=1)
    status, token = await client.token(client_id="app-2", client_secret="secret-2",
                                       box_subject_id="ent-2")
    assert status == 200
    headers = bearer(token["access_token"])
    _, page, _ = await client.box("GET", "/2.0/docgen_jobs", headers=headers)
    assert page["entries"] == []
    _, me, _ = await client.box("GET", "/2.0/users/me", headers=headers,
                                params={"fields": "enterprise"})
    assert (me["id"], me["enterprise"]["name"]) == ("555", "Other Corp")
    assert (await client.token(client_id="app-2", client_secret="secret-2"))[0] == 400


async def test_a_developer_token_can_be_added_for_a_user(client: Client) -> None:
    await start_batch(client, jobs=1, created_by_id="8080")
    await client.ctl("POST", "/tokens/developer", {"token": "t-8080", "user_id": "8080"})
    _, page, _ = await client.box("GET", "/2.0/docgen_jobs", headers=bearer("t-8080"))
    assert [e["created_by"]["id"] for e in page["entries"]] == ["8080"]


# -- listing distortions ----------------------------------------------------------------------


async def test_omitted_jobs_leave_the_listing_but_stay_readable(client: Client) -> None:
    batch = await start_batch(client, jobs=5)
    hidden = batch["job_ids"][1:3]
    state = await client.ctl("POST", "/listing/omit", {"job_ids": hidden})
    assert state["omitted"] == sorted(hidden)
    listed = await client.all_job_ids()
    assert listed == [i for i in batch["job_ids"][::-1] if i not in hidden]
    for job_id in hidden:
        assert (await client.box("GET", f"/2.0/docgen_jobs/{job_id}"))[0] == 200
    in_batch = await client.all_job_ids(f"/2.0/docgen_batch_jobs/{batch['batch_id']}")
    assert in_batch == batch["job_ids"][::-1]
    await client.ctl("DELETE", "/listing")
    assert await client.all_job_ids() == batch["job_ids"][::-1]


async def test_a_fraction_of_jobs_is_omitted_the_same_way_on_every_pass(client: Client) -> None:
    await client.ctl("POST", "/seed", {"count": 2000})
    everything = await client.all_job_ids()
    await client.ctl("POST", "/listing/omit", {"fraction": 0.3})
    first, second = await client.all_job_ids(), await client.all_job_ids(limit=333)
    assert first == second
    assert 540 <= len(everything) - len(first) <= 660
    assert set(first) < set(everything)
    missing = sorted(set(everything) - set(first))
    assert (await client.box("GET", f"/2.0/docgen_jobs/{missing[0]}"))[0] == 200


async def _one_pass(client: Client, limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    marker: str | None = None
    while True:
        params = {"limit": str(limit), **({"marker": marker} if marker else {})}
        status, body, _ = await client.box("GET", "/2.0/docgen_jobs", params=params)
        assert status == 200, body
        pages.append([entry["id"] for entry in body["entries"]])
        marker = body["next_marker"]
        if marker is None:
            return pages


async def test_a_shift_that_inserts_at_the_head_repeats_entries_across_a_page_boundary(
    client: Client,
) -> None:
    await client.ctl("POST", "/seed", {"count": 50})
    before = await client.all_job_ids()
    await client.ctl("POST", "/listing/shift", {"after_page": 1, "insert": 4})
    pages = await _one_pass(client, limit=20)
    assert pages[0] == before[:20]
    assert pages[1][:4] == before[16:20]  # the boundary moved back by the 4 new jobs
    flat = [i for page in pages for i in page]
    assert len(flat) == 54 and set(flat) == set(before)
    after = await client.all_job_ids(limit=20)  # the shift is spent: a clean pass
    assert len(after) == 54 and after[4:] == before
    assert (await client.ctl("GET", "/listing"))["shifts"] == []


async def test_a_shift_that_hides_the_head_skips_entries_that_stay_readable(
    client: Client,
) -> None:
    await client.ctl("POST", "/seed", {"count": 50})
    before = await client.all_job_ids()
    await client.ctl("POST", "/listing/shift", {"after_page": 1, "hide": 3})
    pages = await _one_pass(client, limit=20)
    flat = [i for page in pages for i in page]
    skipped = [i for i in before if i not in flat]
    assert skipped == before[20:23]
    for job_id in skipped:
        assert (await client.box("GET", f"/2.0/docgen_jobs/{job_id}"))[0] == 200
    assert await client.all_job_ids(limit=20) == before  # the next pass is whole again


async def test_a_duplicate_lists_one_job_twice_with_two_statuses(client: Client) -> None:
    batch = await start_batch(client, jobs=30, outcomes={"completed": 1, "failed": 0,
                                                         "completed_with_error": 0})
    await client.ctl("POST", "/clock/advance", {"seconds": 60})
    twice = batch["job_ids"][0]  # the oldest: on the last page
    await client.ctl("POST", "/listing/duplicate", {"job_id": twice})
    _, first, _ = await client.box("GET", "/2.0/docgen_jobs", params={"limit": "10"})
    assert (first["entries"][0]["id"], first["entries"][0]["status"]) == (twice, "submitted")
    assert len(first["entries"]) == 10
    pages = await _one_pass(client, limit=10)
    assert [i for page in pages for i in page].count(twice) == 2
    assert twice in pages[0] and twice in pages[-1]
    _, job, _ = await client.box("GET", f"/2.0/docgen_jobs/{twice}")
    assert job["status"] == "completed"


@pytest.mark.parametrize(
    ("kind", "broken"),
    [
        ("missing_status", lambda e: "status" not in e),
        ("null_batch", lambda e: e["batch"] is None),
        ("integer_id", lambda e: isinstance(e["id"], int)),
        ("lone_surrogate", lambda e: (e["failures"] or {}).get("errors") == ["\ud800"]),
    ],
)
async def test_a_malformed_entry_is_served_in_the_raw_listing(
    client: Client, kind: str, broken: Callable[[JSON], bool]
) -> None:
    batch = await start_batch(client, jobs=3)
    target = batch["job_ids"][1]
    await client.ctl("POST", "/listing/malformed", {"job_ids": [target], "kind": kind})
    status, raw = await client.raw("/2.0/docgen_jobs")
    assert status == 200
    entries = json.loads(raw)["entries"]  # Python's json accepts a lone surrogate escape
    assert [broken(e) for e in entries] == [False, True, False]
    assert str(entries[1]["id"]) == target
    if kind == "lone_surrogate":
        assert b'"\\ud800"' in raw
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
    status, job, _ = await client.box("GET", f"/2.0/docgen_jobs/{target}")
    assert (status, job["id"]) == (200, target)  # only the listing entry is broken


# -- batches and the timeline -----------------------------------------------------------------


async def test_a_posted_batch_makes_one_job_per_data_item(client: Client) -> None:
    status, batch, _ = await client.box("POST", "/2.0/docgen_batches", json=BATCH_BODY)
    assert status == 202
    assert batch["type"] == "docgen_batch"
    _, page, _ = await client.box("GET", f"/2.0/docgen_batch_jobs/{batch['id']}")
    assert len(page["entries"]) == 2
    for job in page["entries"]:
        assert job["batch"] == {"id": batch["id"], "type": "docgen_batch"}
        assert job["template_file"] == {"id": "1234567890", "type": "file"}
        assert job["output_type"] == "pdf"
        assert job["status"] == "pending"
        assert job["id"].isdecimal()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"input_source": "ui"}, "input_source"),
        ({"output_type": "xlsx"}, "output_type"),
        ({"document_generation_data": []}, "document_generation_data"),
        ({"file": {"type": "folder", "id": "1"}}, "file.type"),
        ({"destination_folder": None}, "destination_folder"),
    ],
)
async def test_an_invalid_batch_request_is_400_naming_the_field(
    client: Client, change: JSON, problem: str
) -> None:
    status, body, _ = await client.box("POST", "/2.0/docgen_batches", json={**BATCH_BODY, **change})
    assert (status, body["code"]) == (400, "bad_request")
    assert problem in [error["name"] for error in body["context_info"]["errors"]]


async def test_a_job_goes_pending_submitted_completed_and_gets_its_output_file(
    client: Client,
) -> None:
    batch = await start_batch(
        client,
        outcomes={"completed": 1, "failed": 0, "completed_with_error": 0},
        submitted_after_s=1,
        min_duration_s=10,
        max_duration_s=10,
    )
    path = f"/2.0/docgen_jobs/{batch['job_ids'][0]}"

    seen = []
    for step_s in [0, 1, 9.5, 0.5]:
        await client.ctl("POST", "/clock/advance", {"seconds": step_s})
        _, job, _ = await client.box("GET", path)
        seen.append((job["status"], job["output_file"] is not None, job["failures"]))
    assert seen == [
        ("pending", False, None),
        ("submitted", False, None),
        ("submitted", False, None),
        ("completed", True, None),
    ]
    assert job["output_file"]["type"] == "file"
    assert job["output_file_version"]["type"] == "file_version"
    log = await client.ctl("GET", f"/transitions?job_id={batch['job_ids'][0]}")
    assert [(t["from_status"], t["to_status"]) for t in log["entries"]] == [
        ("pending", "submitted"),
        ("submitted", "completed"),
    ]


async def test_a_failed_job_has_errors_and_no_output(client: Client) -> None:
    batch = await start_batch(
        client, outcomes={"completed": 0, "failed": 1, "completed_with_error": 0}
    )
    await client.ctl("POST", "/clock/advance", {"seconds": 60})
    _, job, _ = await client.box("GET", f"/2.0/docgen_jobs/{batch['job_ids'][0]}")
    assert job["status"] == "failed"
    assert job["output_file"] is None
    assert job["output_file_version"] is None
    assert len(job["failures"]["errors"]) == 1
    assert job["failures"]["warnings"] == []


async def test_a_job_completed_with_error_has_warnings_and_output(client: Client) -> None:
    batch = await start_batch(
        client, outcomes={"completed": 0, "failed": 0, "completed_with_error": 1}
    )
    await client.ctl("POST", "/clock/advance", {"seconds": 60})
    _, job, _ = await client.box("GET", f"/2.0/docgen_jobs/{batch['job_ids'][0]}")
    assert job["status"] == "completed_with_error"
    assert job["output_file"] is not None
    assert job["failures"]["errors"] == []
    assert len(job["failures"]["warnings"]) == 1


async def test_a_batch_may_carry_its_own_error_text(client: Client) -> None:
    evil = "<!channel> *bold* <script>alert(1)</script>"
    batch = await start_batch(
        client,
        jobs=3,
        outcomes={"completed": 0, "failed": 1, "completed_with_error": 0},
        errors=[evil],
    )
    await client.ctl("POST", "/clock/advance", {"seconds": 60})
    _, page, _ = await client.box("GET", f"/2.0/docgen_batch_jobs/{batch['batch_id']}")
    assert [job["failures"]["errors"] for job in page["entries"]] == [[evil]] * 3


async def test_the_same_seed_gives_the_same_world(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    worlds = []
    for _ in range(2):
        client = Client(http, await make_sim(seed=99))
        await client.ctl("POST", "/seed", {"count": 50})
        batch = await start_batch(client, jobs=20)
        jobs = await client.ctl("GET", "/jobs")
        worlds.append(
            (
                batch["job_ids"],
                [
                    (j["id"], j["outcome"], j["finished_at_s"] - j["created_at_s"])
                    for j in jobs["entries"]
                ],
            )
        )
    assert worlds[0] == worlds[1]


async def test_full_entries_carry_creator_enterprise_source_and_rfc3339_time(
    client: Client,
) -> None:
    await start_batch(client)
    _, page, _ = await client.box("GET", "/2.0/docgen_jobs")
    job = page["entries"][0]
    assert job["created_by"] == {"id": "20000001", "type": "user"}
    assert job["enterprise"] == {"id": "sim-enterprise", "type": "enterprise"}
    assert job["source"] == "api"
    # Box's example: 2022-05-11T10:56:11-07:00
    assert job["created_at"][19:] == "-07:00"
    assert abs(_parse_rfc3339(job["created_at"]) - time.time()) < 60


def _parse_rfc3339(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


# -- control API ------------------------------------------------------------------------------


async def test_seeded_history_is_terminal_and_counted(client: Client) -> None:
    result = await client.ctl("POST", "/seed", {"count": 250, "batch_size": 100})
    assert result == {"jobs": 250, "batches": 3}
    stats = await client.ctl("GET", "/stats")
    assert sum(stats["jobs"].values()) == 250
    assert set(stats["jobs"]) <= {"completed", "completed_with_error", "failed"}
    log = await client.ctl("GET", "/transitions")
    assert log["entries"] == []


async def test_a_pinned_status_is_served_as_set_and_stays(client: Client) -> None:
    batch = await start_batch(client)
    job_id = batch["job_ids"][0]
    injection = '"}]} <@U123> ${jndi:ldap://x} \n\u202e'
    pinned = await client.ctl(
        "PUT", f"/jobs/{job_id}", {"status": "failed", "errors": [injection], "warnings": []}
    )
    assert (pinned["status"], pinned["pinned"]) == ("failed", True)
    await client.ctl("POST", "/clock/advance", {"seconds": 3600})
    _, job, _ = await client.box("GET", f"/2.0/docgen_jobs/{job_id}")
    assert job["status"] == "failed"
    assert job["failures"] == {"errors": [injection], "warnings": []}
    log = await client.ctl("GET", f"/transitions?job_id={job_id}")
    assert [(t["from_status"], t["to_status"]) for t in log["entries"]] == [("pending", "failed")]


async def test_an_unknown_status_can_be_pinned(client: Client) -> None:
    batch = await start_batch(client)
    await client.ctl("PUT", f"/jobs/{batch['job_ids'][0]}", {"status": "archived"})
    _, job, _ = await client.box("GET", f"/2.0/docgen_jobs/{batch['job_ids'][0]}")
    assert (job["status"], job["failures"], job["output_file"]) == ("archived", None, None)


async def test_a_deleted_job_vanishes_from_every_listing(client: Client) -> None:
    batch = await start_batch(client, jobs=3)
    gone = batch["job_ids"][1]
    await client.ctl("DELETE", f"/jobs/{gone}")
    assert (await client.box("GET", f"/2.0/docgen_jobs/{gone}"))[0] == 404
    assert await client.all_job_ids() == [batch["job_ids"][2], batch["job_ids"][0]]
    in_batch = await client.all_job_ids(f"/2.0/docgen_batch_jobs/{batch['batch_id']}")
    assert gone not in in_batch
    async with client.http.delete(f"{client.url}/_sim/jobs/{gone}") as response:
        assert response.status == 404


async def test_control_bodies_are_validated(client: Client) -> None:
    async with client.http.post(f"{client.url}/_sim/seed", json={"cuont": 3}) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"] == "invalid_body"
    assert {tuple(d["loc"]) for d in body["details"]} == {("count",), ("cuont",)}
    async with client.http.post(
        f"{client.url}/_sim/batches", json={"jobs": 1, "min_duration_s": 9, "max_duration_s": 1}
    ) as response:
        assert response.status == 400


async def test_a_counted_429_fires_exactly_count_times_with_retry_after(client: Client) -> None:
    await client.ctl(
        "POST", "/faults", {"route": "list_jobs", "kind": "429", "count": 2, "retry_after_s": 3}
    )
    answers = []
    for _ in range(3):
        status, body, response = await client.box("GET", "/2.0/docgen_jobs")
        answers.append((status, response.headers.get("retry-after"), body.get("code")))
    assert answers == [
        (429, "3", "rate_limit_exceeded"),
        (429, "3", "rate_limit_exceeded"),
        (200, None, None),
    ]
    assert (await client.box("GET", "/2.0/docgen_jobs/1"))[0] == 404  # other routes untouched
    stats = await client.ctl("GET", "/stats")
    assert stats["requests"]["list_jobs"] == {"200": 1, "429": 2}
    assert (await client.ctl("GET", "/faults"))["entries"] == []


async def test_a_fault_rate_is_seeded(make_sim: SimFactory, http: aiohttp.ClientSession) -> None:
    """Half the requests fail, and the same seed fails the same requests."""
    patterns = []
    for _ in range(2):
        client = Client(http, await make_sim(seed=3))
        await client.ctl("POST", "/faults", {"route": "get_job", "kind": "500", "rate": 0.5})
        statuses = [(await client.box("GET", "/2.0/docgen_jobs/1"))[0] for _ in range(100)]
        patterns.append(statuses)
        assert set(statuses) == {404, 500}
        assert 25 <= statuses.count(500) <= 75
    assert patterns[0] == patterns[1]


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("500", 500, "internal_server_error"),
        ("502", 502, "bad_gateway"),
        ("503", 503, "unavailable"),
    ],
)
async def test_server_error_faults_answer_a_client_error(
    client: Client, kind: str, status: int, code: str
) -> None:
    await client.ctl("POST", "/faults", {"kind": kind, "count": 1})
    got, body, _ = await client.box("GET", "/2.0/docgen_jobs")
    assert (got, body["status"], body["code"], body["type"]) == (status, status, code, "error")


async def test_a_latency_fault_delays_the_answer(client: Client) -> None:
    await client.ctl("POST", "/faults", {"kind": "latency", "latency_s": 0.3, "count": 1})
    started = time.perf_counter()
    status, _, _ = await client.box("GET", "/2.0/docgen_jobs")
    assert status == 200
    assert time.perf_counter() - started >= 0.3


@pytest.mark.parametrize("path", ["/2.0/docgen_jobs", "/2.0/docgen_jobs/{job_id}"])
async def test_a_truncated_answer_is_a_cut_off_prefix_of_the_real_one(
    client: Client, path: str
) -> None:
    batch = await start_batch(client, jobs=3)
    url = path.format(job_id=batch["job_ids"][0])
    _, whole = await client.raw(url)
    await client.ctl("POST", "/faults", {"kind": "truncated", "count": 1})
    status, cut = await client.raw(url)
    assert status == 200
    assert 0 < len(cut) < len(whole)
    assert whole.startswith(cut)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)


async def test_a_malformed_answer_is_not_json(client: Client) -> None:
    await client.ctl("POST", "/faults", {"route": "list_jobs", "kind": "malformed", "count": 1})
    status, body = await client.raw("/2.0/docgen_jobs")
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


async def test_a_schema_fault_drops_status_from_entries(client: Client) -> None:
    await start_batch(client, jobs=2)
    await client.ctl("POST", "/faults", {"route": "list_jobs", "kind": "schema", "count": 1})
    status, body, _ = await client.box("GET", "/2.0/docgen_jobs")
    assert status == 200
    assert len(body["entries"]) == 2
    assert all("status" not in entry and "id" in entry for entry in body["entries"])


async def test_faults_hit_the_token_route_but_never_the_control_api(client: Client) -> None:
    await client.ctl("POST", "/faults", {"route": "*", "kind": "503"})
    status, _ = await client.token()
    assert status == 503
    stats = await client.ctl("GET", "/stats")  # asserts a 2xx answer itself
    assert stats["requests"]["token"] == {"503": 1}
    await client.ctl("DELETE", "/faults")
    assert (await client.token())[0] == 200


async def test_a_steady_stream_keeps_starting_batches(
    make_sim: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(stream=SteadyStreamConfig(every_s=0.02, jobs_per_batch=2))
    client = Client(http, sim)

    async def three_batches() -> bool:
        jobs = (await client.ctl("GET", "/jobs"))["entries"]
        return len({job["batch_id"] for job in jobs}) >= 3

    await eventually(three_batches)
    assert sim.state.jobs.live_count >= 6


async def test_100000_seeded_jobs_are_all_listed(client: Client) -> None:
    result = await client.ctl("POST", "/seed", {"count": 100_000})
    assert result["jobs"] == 100_000
    stats = await client.ctl("GET", "/stats")
    assert sum(stats["jobs"].values()) == 100_000
    _, page, _ = await client.box("GET", "/2.0/docgen_jobs", params={"limit": "1000"})
    assert len(page["entries"]) == 1000
    assert page["next_marker"] is not None


async def test_serve_forever_logs_its_url_and_stops_on_cancellation() -> None:
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(serve_forever(SimulatorConfig(frozen_clock=True)))

        async def listening() -> bool:
            return any(e["event"] == "simulator.listening" for e in logs)

        await eventually(listening)
        url = next(e["url"] for e in logs if e["event"] == "simulator.listening")
        async with aiohttp.ClientSession() as session, session.get(url + "/_sim/clock") as response:
            assert response.status == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert url.startswith("http://127.0.0.1:")
    assert logs[-1]["event"] == "simulator.stopping"


# -- every answer matches Box's OpenAPI schemas -----------------------------------------------


def _shared_box_api() -> Path:
    """Box's spec lives in the `shared` folder beside the repository, or where
    DOCGEN_SHARED_DIR says (the `shared` folder itself, or its `box-api` folder)."""
    configured = os.environ.get("DOCGEN_SHARED_DIR")
    shared = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared"
    return shared if (shared / "openapi-docgen.json").exists() else shared / "box-api"


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 to JSON Schema: `nullable: true` means "or null"."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _openapi_to_jsonschema(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        return {"anyOf": [{"type": "null"}, converted]}
    return converted


class BoxSchemas:
    def __init__(self, spec: JSON) -> None:
        self.spec = spec
        components = _openapi_to_jsonschema(copy.deepcopy(spec["components"]))
        # Box's guides document codes (rate_limit_exceeded, invalid_api_version, ...) that the
        # spec's enum lacks; FACTS.md §8 says not to validate `code` against it.
        del components["schemas"]["ClientError"]["properties"]["code"]["enum"]
        self.components = components

    def validator(self, path: str, method: str, status: int) -> Draft202012Validator:
        responses = self.spec["paths"][path][method]["responses"]
        response = responses.get(str(status), responses["default"])
        ref = response["content"]["application/json"]["schema"]["$ref"]
        return Draft202012Validator({"$ref": ref, "components": self.components})

    def declared(self, name: str) -> set[str]:
        """Every property a schema declares, through allOf and $ref."""
        found: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if "$ref" in node:
                    walk(self.components["schemas"][node["$ref"].rsplit("/", 1)[1]])
                found.update(node.get("properties", {}))
                for part in node.get("allOf", []):
                    walk(part)

        walk(self.components["schemas"][name])
        return found


@pytest.fixture(scope="module")
def box_schemas() -> BoxSchemas:
    spec_path = _shared_box_api() / "openapi-docgen.json"
    if not spec_path.exists():
        pytest.skip(f"Box's OpenAPI subset is not at {spec_path}")
    return BoxSchemas(json.loads(spec_path.read_text()))


async def test_every_kind_of_answer_matches_boxs_openapi_schemas(
    client: Client, box_schemas: BoxSchemas
) -> None:
    await client.ctl("POST", "/seed", {"count": 20})
    status, created, _ = await client.box("POST", "/2.0/docgen_batches", json=BATCH_BODY)
    assert status == 202
    mixed = await start_batch(
        client, jobs=30, outcomes={"completed": 1, "failed": 1, "completed_with_error": 1}
    )
    await client.ctl("POST", "/clock/advance", {"seconds": 3})  # some done, some running
    fresh = await start_batch(client, jobs=2)  # pending
    ctl_jobs = (await client.ctl("GET", "/jobs"))["entries"]
    assert {j["status"] for j in ctl_jobs} >= {
        "pending",
        "completed",
        "failed",
        "completed_with_error",
    }

    answers: list[tuple[str, str, int, Any]] = [("/docgen_batches", "post", 202, created)]
    for job_id in mixed["job_ids"] + fresh["job_ids"]:
        status, job, _ = await client.box("GET", f"/2.0/docgen_jobs/{job_id}")
        answers.append(("/docgen_jobs/{job_id}", "get", status, job))
    status, page, _ = await client.box("GET", "/2.0/docgen_jobs", params={"limit": "1000"})
    answers.append(("/docgen_jobs", "get", status, page))
    status, batch_page, _ = await client.box("GET", f"/2.0/docgen_batch_jobs/{created['id']}")
    answers.append(("/docgen_batch_jobs/{batch_id}", "get", status, batch_page))
    status, body, _ = await client.box("GET", "/2.0/docgen_jobs", params={"limit": "x"})
    answers.append(("/docgen_jobs", "get", status, body))
    status, body, _ = await client.box("GET", "/2.0/docgen_jobs", headers={"box-version": "2025.0"})
    answers.append(("/docgen_jobs", "get", status, body))
    status, body, _ = await client.box("GET", "/2.0/docgen_jobs/1")
    answers.append(("/docgen_jobs/{job_id}", "get", status, body))
    status, body, _ = await client.box("GET", "/2.0/docgen_batch_jobs/1")
    answers.append(("/docgen_batch_jobs/{batch_id}", "get", status, body))
    await client.ctl("POST", "/faults", {"kind": "429", "count": 1})
    status, body, _ = await client.box("GET", "/2.0/docgen_jobs")
    answers.append(("/docgen_jobs", "get", status, body))
    status, body = await client.token(client_secret="wrong")
    answers.append(("/oauth2/token", "post", status, body))
    status, body = await client.token()
    answers.append(("/oauth2/token", "post", status, body))

    assert sorted({status for *_, status, _ in answers}) == [200, 202, 400, 401, 404, 429]
    for path, method, status, body in answers:
        errors = list(box_schemas.validator(path, method, status).iter_errors(body))
        assert errors == [], f"{method.upper()} {path} {status}: {errors[0].message}"

    # Nothing beyond what Box declares: a misspelt field would pass the open schemas above.
    full_fields = box_schemas.declared("DocGenJob--Full")
    assert all(set(entry) <= full_fields for entry in page["entries"])
    standard_fields = box_schemas.declared("DocGenJob")
    assert all(set(entry) <= standard_fields for entry in batch_page["entries"])
    assert set(page["entries"][0]) == full_fields


async def test_the_schema_check_catches_a_schema_fault(
    client: Client, box_schemas: BoxSchemas
) -> None:
    """The validator used above is not vacuous: a body missing `status` fails it."""
    await start_batch(client)
    await client.ctl("POST", "/faults", {"route": "list_jobs", "kind": "schema", "count": 1})
    _, body, _ = await client.box("GET", "/2.0/docgen_jobs")
    errors = list(box_schemas.validator("/docgen_jobs", "get", 200).iter_errors(body))
    assert errors


# -- docgen-monitor simulate ------------------------------------------------------------------

CLI = [sys.executable, "-m", "monitor.cli", "simulate"]


@contextlib.asynccontextmanager
async def simulate_process(*args: str) -> AsyncIterator[str]:
    """`docgen-monitor simulate` as a subprocess on a free port; yields its URL; SIGTERM at
    the end, which must stop it cleanly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--port", str(port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.decode().strip() == f"http://127.0.0.1:{port}", line
        yield f"http://127.0.0.1:{port}"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_simulate(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def _rsa_pair() -> tuple[Any, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, public


async def _grant(http: aiohttp.ClientSession, url: str, form: dict[str, str]) -> tuple[int, JSON]:
    async with http.post(url + "/oauth2/token", data=form) as response:
        return response.status, await response.json()


async def _me(http: aiohttp.ClientSession, url: str, token: str) -> JSON:
    async with http.get(url + "/2.0/users/me", params={"fields": "enterprise"},
                        headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200, await response.text()
        body: JSON = await response.json()
        return body


async def test_simulate_from_a_config_file_serves_every_auth_method(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Developer tokens of two users, CCG enterprise and user grants, a JWT grant and a second
    app, all configured in sim.yaml (plus a flag), each acting as the user it should."""
    import jwt

    key, public = _rsa_pair()
    (tmp_path / "key-1.pem").write_text(public)
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump({
        "client_id": "cli-app", "client_secret": "cli-secret", "enterprise_id": "900",
        "enterprise_name": "CLI Corp", "service_account_user_id": "100",
        "user_ids": ["101"], "token_expires_in_s": 600,
        "jwt_public_keys": {"key-1": "key-1.pem"},
        "users": [{"id": "101", "name": "Grace Hopper", "developer_tokens": ["t101"]}],
        "apps": [{"client_id": "app-2", "client_secret": "secret-2", "enterprise_id": "901",
                  "service_account_user_id": "200"}],
    }))
    async with simulate_process("--config", str(tmp_path / "sim.yaml"),
                                "--user-token", "102=t102") as url:
        users = {token: (await _me(http, url, token))["id"]
                 for token in ("dev-token", "t101", "t102")}
        assert users == {"dev-token": "100", "t101": "101", "t102": "102"}
        ccg = {"grant_type": "client_credentials", "client_id": "cli-app",
               "client_secret": "cli-secret", "box_subject_type": "enterprise",
               "box_subject_id": "900"}
        status, token = await _grant(http, url, ccg)
        assert (status, token["expires_in"]) == (200, 600)
        me = await _me(http, url, token["access_token"])
        assert (me["id"], me["enterprise"]["name"]) == ("100", "CLI Corp")
        status, token = await _grant(http, url, {**ccg, "box_subject_type": "user",
                                                 "box_subject_id": "101"})
        assert (await _me(http, url, token["access_token"]))["name"] == "Grace Hopper"
        assertion = jwt.encode(
            {"iss": "cli-app", "sub": "900", "box_sub_type": "enterprise",
             "aud": "https://api.box.com/oauth2/token", "jti": secrets.token_hex(16),
             "exp": int(time.time()) + 30},
            key, algorithm="RS256", headers={"kid": "key-1"})
        status, token = await _grant(http, url, {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion,
            "client_id": "cli-app", "client_secret": "cli-secret"})
        assert status == 200, token
        assert (await _me(http, url, token["access_token"]))["id"] == "100"
        status, token = await _grant(http, url, {**ccg, "client_id": "app-2",
                                                 "client_secret": "secret-2",
                                                 "box_subject_id": "901"})
        assert (await _me(http, url, token["access_token"]))["id"] == "200"


async def test_simulate_flags_configure_a_ccg_client(http: aiohttp.ClientSession) -> None:
    async with simulate_process("--client-id", "flag-app", "--client-secret", "flag-secret",
                                "--enterprise-id", "77", "--user", "4242",
                                "--token-lifetime", "120", "--seed-jobs", "5") as url:
        status, token = await _grant(http, url, {
            "grant_type": "client_credentials", "client_id": "flag-app",
            "client_secret": "flag-secret", "box_subject_type": "user",
            "box_subject_id": "4242"})
        assert (status, token["expires_in"]) == (200, 120)
        async with http.get(url + "/2.0/docgen_jobs", headers=BOX_HEADERS) as response:
            assert len((await response.json())["entries"]) == 5  # the Service Account's
        async with http.get(url + "/2.0/docgen_jobs",
                            headers=bearer(token["access_token"])) as response:
            assert (await response.json())["entries"] == []  # the user has none


async def test_simulate_refuses_a_bad_config_listing_every_problem_by_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump({
        "client_secret": "hunter2-do-not-print", "token_expires_in_s": "soon",
        "apps": [{"client_id": "a", "client_secret": "s3cr3t-do-not-print"}],
        "colour": "blue",
    }))
    code, err = await run_simulate("--config", str(path), "--jwt-key", "nokey")
    assert code == 2
    assert "--jwt-key: expected KEY=VALUE" in err
    assert "Traceback" not in err and "do-not-print" not in err
    code, err = await run_simulate("--config", str(path))
    assert code == 2
    for problem in ["token_expires_in_s:", "apps[0].enterprise_id:",
                    "apps[0].service_account_user_id:", "colour:"]:
        assert problem in err, err
    assert "Traceback" not in err and "do-not-print" not in err
    path.write_text("client_secret: hunter2-do-not-print\nusers: [\n")
    code, err = await run_simulate("--config", str(path))
    assert code == 2
    assert f"{path}:3:1" in err
    assert "Traceback" not in err and "do-not-print" not in err
