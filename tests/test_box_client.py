"""The Box client against the simulator, over real sockets: paging, headers, developer token and
CCG auth, token caching and renewal, retries as Box advises, the errors it raises, its logs and
its metrics."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from structlog.testing import capture_logs

from monitor.box import (
    AuthStatus,
    BoxAuthBackoff,
    BoxAuthError,
    BoxBadResponse,
    BoxClient,
    BoxConnectionError,
    BoxNotFound,
    BoxRateLimited,
    BoxRequestError,
    BoxServerError,
    BoxTimeout,
    BoxTokenUnavailable,
    BoxUnauthorized,
    CCGAuth,
    DeveloperTokenAuth,
    DocGenJob,
    DocGenJobFull,
    token_url,
)
from monitor.box._http import parse_retry_after
from monitor.box.auth import REFUSED_BACKOFF_INITIAL_S, Auth
from monitor.box.budget import RequestBudget
from monitor.metrics import Metrics
from monitor.simulator import SimulatorConfig, start_simulator

CLIENT_ID = "sim-client-id"
CLIENT_SECRET = "sim-client-secret"
ENTERPRISE = "sim-enterprise"

TEMPLATES = {
    "/2.0/docgen_jobs",
    "/2.0/docgen_jobs/{job_id}",
    "/2.0/docgen_batch_jobs/{batch_id}",
    "/2.0/docgen_batches",
    "/oauth2/token",
}


class Sleeps:
    """Stands in for `asyncio.sleep` between attempts: records each delay, waits not at all."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


class Control:
    """The simulator's `/_sim` control API."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url

    async def _json(self, method: str, path: str, body: Any = None) -> Any:
        async with self._session.request(method, self._url + path, json=body) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json() if resp.status != 204 else None

    async def seed(self, count: int, **options: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("POST", "/_sim/seed", {"count": count, **options})
        return result

    async def batch(self, jobs: int, **options: Any) -> dict[str, Any]:
        body = {"jobs": jobs, **options}
        result: dict[str, Any] = await self._json("POST", "/_sim/batches", body)
        return result

    async def fault(self, route: str, kind: str, **options: Any) -> None:
        await self._json("POST", "/_sim/faults", {"route": route, "kind": kind, **options})

    async def clear_faults(self) -> None:
        await self._json("DELETE", "/_sim/faults")

    async def rotate_secret(self, client_id: str, secret: str) -> None:
        await self._json("POST", f"/_sim/clients/{client_id}/secret", {"client_secret": secret})

    async def revoke_tokens(self) -> None:
        await self._json("POST", "/_sim/tokens/revoke")

    async def jobs(self) -> list[dict[str, Any]]:
        result: dict[str, Any] = await self._json("GET", "/_sim/jobs")
        return list(result["entries"])

    async def requests(self, route: str) -> dict[str, int]:
        """How many requests `route` answered, by status code."""
        stats: dict[str, Any] = await self._json("GET", "/_sim/stats")
        return dict(stats["requests"].get(route, {}))

    async def count(self, route: str) -> int:
        return sum((await self.requests(route)).values())


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    async with await start_simulator(SimulatorConfig(seed=1), port=0) as simulator:
        yield simulator


@pytest.fixture
async def control(sim: Any) -> AsyncIterator[Control]:
    async with aiohttp.ClientSession() as session:
        yield Control(session, sim.url)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


MakeClient = Callable[..., BoxClient]


@pytest.fixture
async def make_client(
    sim: Any, metrics: Metrics, sleeps: Sleeps
) -> AsyncIterator[MakeClient]:
    """Builds clients (developer token unless `auth` is given) and closes all of them."""
    built: list[BoxClient] = []

    def make(auth: Auth | None = None, **options: Any) -> BoxClient:
        options.setdefault("metrics", metrics)
        options.setdefault("sleep", sleeps)
        options.setdefault("rng", random.Random(7))
        client = BoxClient(
            options.pop("base_url", sim.url),
            auth or DeveloperTokenAuth(SecretStr("dev-token")),
            **options,
        )
        built.append(client)
        return client

    yield make
    for client in built:
        await client.aclose()


@pytest.fixture
async def make_ccg(sim: Any, metrics: Metrics) -> AsyncIterator[Callable[..., CCGAuth]]:
    """Builds CCG auths on the simulator, each with its own session, and closes them."""
    built: list[CCGAuth] = []

    def make(**options: Any) -> CCGAuth:
        auth = CCGAuth(
            token_url(sim.url),
            options.pop("client_id", CLIENT_ID),
            SecretStr(options.pop("client_secret", CLIENT_SECRET)),
            options.pop("subject_type", "enterprise"),
            options.pop("subject_id", ENTERPRISE),
            metrics=options.pop("metrics", metrics),
            **options,
        )
        built.append(auth)
        return auth

    yield make
    for auth in built:
        await auth.aclose()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample of the client's account (`default`: the one a `Metrics()` serves)."""
    value = metrics.registry.get_sample_value(name, {"account": "default", **labels})
    return 0.0 if value is None else value


async def sweep(client: BoxClient, page_size: int | None = None) -> list[DocGenJobFull]:
    jobs: list[DocGenJobFull] = []
    async for page in client.iter_job_pages(page_size):
        jobs.extend(page.entries)
    return jobs


# -- paging and headers ---------------------------------------------------------------------


async def test_sweep_pages_through_every_job_exactly_once(
    control: Control, make_client: MakeClient
) -> None:
    await control.seed(2500)
    expected = {job["id"] for job in await control.jobs()}
    assert len(expected) == 2500

    pages = [page async for page in make_client().iter_job_pages(1000)]

    assert [len(p.entries) for p in pages] == [1000, 1000, 500]
    ids = [job.id for p in pages for job in p.entries]
    assert len(ids) == len(set(ids)) == 2500
    assert set(ids) == expected
    assert not pages[-1].next_marker
    assert await control.requests("list_jobs") == {"200": 3}


async def test_page_size_is_clamped_to_box_maximum(
    control: Control, make_client: MakeClient
) -> None:
    await control.seed(1500)

    client = make_client(page_size=5000)
    pages = [page async for page in client.iter_job_pages()]
    assert [len(p.entries) for p in pages] == [1000, 500]
    assert pages[0].limit == 1000

    pages = [page async for page in client.iter_job_pages(page_size=2000)]
    assert [len(p.entries) for p in pages] == [1000, 500]


async def test_every_request_carries_box_version_and_bearer_token(
    sim: Any, control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    async def on_request_start(
        session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any
    ) -> None:
        seen.append((params.url.path, dict(params.headers)))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    created = await control.batch(3)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = make_client(make_ccg(session=session), session=session)
        await sweep(client)
        await client.list_batch_jobs(created["batch_id"])
        await client.get_job(created["job_ids"][0])
        await client.create_batch("1", "2", "pdf", [{"generated_file_name": "a", "user_input": {}}])

    api = [(path, h) for path, h in seen if path.startswith("/2.0/")]
    assert len(api) == 4
    assert all(h.get("box-version") == "2025.0" for _, h in api)
    assert all(h.get("Authorization", "").startswith("Bearer ") for _, h in api)
    token_calls = [h for path, h in seen if path == "/oauth2/token"]
    assert len(token_calls) == 1
    assert "Authorization" not in token_calls[0]


async def test_get_job_returns_the_standard_job(
    control: Control, make_client: MakeClient
) -> None:
    created = await control.batch(1)
    job_id = created["job_ids"][0]

    job = await make_client().get_job(job_id)

    assert isinstance(job, DocGenJob)
    assert job.id == job_id
    assert job.batch.id == created["batch_id"]
    assert job.status in {"pending", "submitted", "completed", "completed_with_error", "failed"}


# -- the operations ------------------------------------------------------------------------


async def test_create_batch_then_list_its_jobs(control: Control, make_client: MakeClient) -> None:
    client = make_client()
    documents = [{"generated_file_name": f"doc-{i}", "user_input": {"n": i}} for i in range(3)]

    batch = await client.create_batch("12345", "67890", "pdf", documents)
    jobs = await client.list_batch_jobs(batch.id)

    assert batch.type == "docgen_batch"
    assert len(jobs) == 3
    assert {job.batch.id for job in jobs} == {batch.id}
    assert {job.output_type for job in jobs} == {"pdf"}


async def test_stopping_a_sweep_early_makes_no_further_request(
    control: Control, make_client: MakeClient
) -> None:
    await control.seed(30)

    pages = make_client(page_size=10).iter_job_pages()
    async for _ in pages:
        break
    await pages.aclose()

    assert await control.requests("list_jobs") == {"200": 1}


async def test_batch_listing_follows_every_page(control: Control, make_client: MakeClient) -> None:
    created = await control.batch(25)

    jobs = await make_client(page_size=10).list_batch_jobs(created["batch_id"])

    assert sorted(job.id for job in jobs) == sorted(created["job_ids"])
    assert await control.requests("batch_jobs") == {"200": 3}


async def test_unknown_job_is_not_found_and_not_retried(
    control: Control, make_client: MakeClient, sleeps: Sleeps
) -> None:
    with pytest.raises(BoxNotFound) as caught:
        await make_client().get_job("999999999")

    assert caught.value.status == 404
    assert caught.value.code == "not_found"
    assert "HTTP 404" in str(caught.value)
    assert await control.requests("get_job") == {"404": 1}
    assert sleeps.delays == []


async def test_unknown_batch_is_not_found(control: Control, make_client: MakeClient) -> None:
    with pytest.raises(BoxNotFound):
        await make_client().list_batch_jobs("999999999")


async def test_bad_request_is_not_retried_and_carries_box_error(
    control: Control, make_client: MakeClient, sleeps: Sleeps
) -> None:
    with pytest.raises(BoxRequestError) as caught:
        await make_client().create_batch("1", "2", "pdf", [{"no_name": True}])

    error = caught.value
    assert error.status == 400
    assert error.code
    assert error.request_id and error.request_id in str(error)
    assert await control.count("create_batch") == 1
    assert sleeps.delays == []


async def test_ids_cannot_escape_their_path_segment() -> None:
    async with BoxClient("http://127.0.0.1:1", DeveloperTokenAuth(SecretStr("x"))) as client:
        with pytest.raises(ValueError, match="not a valid Box id"):
            await client.get_job("..")


# -- authentication ------------------------------------------------------------------------


async def test_developer_token_is_accepted(control: Control, make_client: MakeClient) -> None:
    await control.seed(5)

    assert len(await sweep(make_client())) == 5
    assert await control.count("token") == 0


async def test_refused_developer_token_fails_at_once(
    control: Control, make_client: MakeClient, sleeps: Sleeps
) -> None:
    """A developer token cannot be renewed, so one 401 is final."""
    client = make_client(DeveloperTokenAuth(SecretStr("expired-token")))

    with pytest.raises(BoxUnauthorized) as caught:
        await sweep(client)

    assert caught.value.status == 401
    assert "expired-token" not in str(caught.value)
    assert await control.requests("list_jobs") == {"401": 1}
    assert sleeps.delays == []


async def test_ccg_token_is_fetched_once_for_many_calls(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    created = await control.batch(2)
    client = make_client(make_ccg())

    for _ in range(3):
        await sweep(client)
        await client.get_job(created["job_ids"][0])
    await asyncio.gather(*(client.get_job(created["job_ids"][1]) for _ in range(5)))

    assert await control.requests("token") == {"200": 1}


async def test_ccg_renews_the_token_before_it_expires(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    """The simulator's tokens last 3600 s; the client renews 60 s early."""
    now = [1000.0]
    client = make_client(make_ccg(clock=lambda: now[0]))
    await sweep(client)

    now[0] += 3539
    await sweep(client)
    assert await control.count("token") == 1

    now[0] += 2
    await sweep(client)
    assert await control.count("token") == 2


async def test_ccg_renews_once_after_a_revoked_token(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth], metrics: Metrics
) -> None:
    client = make_client(make_ccg())
    await sweep(client)
    await control.revoke_tokens()

    with capture_logs() as logs:
        await sweep(client)

    assert await control.requests("token") == {"200": 2}
    assert await control.requests("list_jobs") == {"200": 2, "401": 1}
    retries = [e for e in logs if e["event"] == "box_request_retry"]
    assert [e["reason"] for e in retries] == ["unauthorized"]
    assert sample(metrics, "box_docgen_api_retries_total", reason="unauthorized") == 1


async def test_concurrent_callers_share_one_renewal(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    created = await control.batch(1)
    job_id = created["job_ids"][0]
    client = make_client(make_ccg())
    await asyncio.gather(*(client.get_job(job_id) for _ in range(10)))
    assert await control.count("token") == 1

    await control.revoke_tokens()
    jobs = await asyncio.gather(*(client.get_job(job_id) for _ in range(10)))

    assert {job.id for job in jobs} == {job_id}
    assert await control.requests("token") == {"200": 2}


async def test_late_401_for_an_already_replaced_token_does_not_renew_again(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    """A slow call refused with the old token after another caller renewed it must use the
    new token, not fetch a third one."""
    created = await control.batch(1)
    client = make_client(make_ccg())
    await client.get_job(created["job_ids"][0])
    await control.revoke_tokens()
    await control.fault("list_jobs", "latency", count=1, latency_s=0.6)

    slow = asyncio.create_task(sweep(client))  # sent with the old token, refused late
    await asyncio.sleep(0.05)
    await client.get_job(created["job_ids"][0])  # refused at once, renews the token
    assert await control.requests("token") == {"200": 2}
    await slow

    assert await control.requests("list_jobs") == {"401": 1, "200": 1}
    assert await control.requests("token") == {"200": 2}


async def test_renewed_token_refused_again_raises_unauthorized(
    sim: Any, control: Control, make_client: MakeClient, metrics: Metrics
) -> None:
    """A 401 that a renewal does not cure is final."""

    class StaleAuth(Auth):
        def __init__(self) -> None:
            self.invalidated: list[str] = []

        async def token(self) -> str:
            return "stale"

        async def invalidate(self, token: str) -> None:
            self.invalidated.append(token)

    auth = StaleAuth()
    with pytest.raises(BoxUnauthorized) as caught:
        await make_client(auth).get_job("1")

    assert auth.invalidated == ["stale"]
    assert caught.value.attempts == 2
    assert "renewed token was refused" in str(caught.value)
    assert await control.requests("get_job") == {"401": 2}


async def test_bad_client_secret_raises_auth_error_without_the_secret(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth], sleeps: Sleeps
) -> None:
    secret = "wrong-secret-do-not-log-7f3a"
    auth = make_ccg(client_secret=secret)
    client = make_client(auth)

    with capture_logs() as logs, pytest.raises(BoxAuthError) as caught:
        await sweep(client)

    error = caught.value
    assert error.status == 400
    assert error.error == "invalid_grant"
    assert "invalid_grant" in str(error)
    assert secret not in str(error)
    assert secret not in repr(error)
    assert secret not in repr(auth)
    assert all(secret not in repr(entry) for entry in logs)
    assert any(entry["event"] == "box_token_refused" for entry in logs)
    assert await control.requests("token") == {"400": 1}
    assert await control.count("list_jobs") == 0
    assert sleeps.delays == []


async def test_unknown_client_id_names_the_oauth_error(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    with pytest.raises(BoxAuthError) as caught:
        await sweep(make_client(make_ccg(client_id="nobody")))

    assert caught.value.error == "invalid_client"
    assert CLIENT_SECRET not in str(caught.value)


async def test_token_endpoint_failure_is_retried(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth], sleeps: Sleeps
) -> None:
    await control.fault("token", "503", count=1, retry_after_s=1)

    await sweep(make_client(make_ccg()))

    assert await control.requests("token") == {"503": 1, "200": 1}
    assert sleeps.delays == [1.0]


# -- retries -------------------------------------------------------------------------------


async def test_rate_limit_waits_retry_after_then_succeeds(
    control: Control, make_client: MakeClient, sleeps: Sleeps, metrics: Metrics
) -> None:
    await control.seed(3)
    await control.fault("list_jobs", "429", count=2, retry_after_s=1)

    with capture_logs() as logs:
        jobs = await sweep(make_client())

    assert len(jobs) == 3
    assert sleeps.delays == [1.0, 1.0]
    assert await control.requests("list_jobs") == {"429": 2, "200": 1}
    retries = [e for e in logs if e["event"] == "box_request_retry"]
    assert [(e["endpoint"], e["attempt"], e["reason"], e["delay_s"]) for e in retries] == [
        ("/2.0/docgen_jobs", 1, "rate_limited", 1.0),
        ("/2.0/docgen_jobs", 2, "rate_limited", 1.0),
    ]
    assert all(e["log_level"] == "warning" for e in retries)
    assert sample(metrics, "box_docgen_api_retries_total", reason="rate_limited") == 2


async def test_retry_after_is_capped(
    control: Control, make_client: MakeClient, sleeps: Sleeps
) -> None:
    await control.fault("list_jobs", "429", count=1, retry_after_s=100)

    await sweep(make_client(max_retry_after_s=2.0))

    assert sleeps.delays == [2.0]


async def test_real_sleep_honours_retry_after(control: Control, sim: Any) -> None:
    """Without an injected sleep the client really waits `retry-after` seconds."""
    await control.fault("list_jobs", "429", count=1, retry_after_s=1)
    loop = asyncio.get_running_loop()

    async with BoxClient(sim.url, DeveloperTokenAuth(SecretStr("dev-token"))) as client:
        started = loop.time()
        await sweep(client)
        elapsed = loop.time() - started

    assert 1.0 <= elapsed < 5.0


@pytest.mark.parametrize("kind", ["500", "502", "503"])
async def test_server_error_then_success(
    control: Control, make_client: MakeClient, sleeps: Sleeps, metrics: Metrics, kind: str
) -> None:
    await control.fault("list_jobs", kind, count=1, retry_after_s=0)

    await sweep(make_client())

    assert await control.requests("list_jobs") == {kind: 1, "200": 1}
    assert len(sleeps.delays) == 1
    assert 0.25 <= sleeps.delays[0] <= 0.75  # base 0.5 s times a jitter in [0.5, 1.5]
    assert sample(metrics, "box_docgen_api_retries_total", reason="server_error") == 1


async def test_backoff_grows_exponentially_with_jitter_and_a_cap(
    control: Control, make_client: MakeClient, sleeps: Sleeps
) -> None:
    await control.fault("list_jobs", "500", count=5)

    await sweep(make_client(max_attempts=6, backoff_base_s=1.0, backoff_max_s=6.0))

    assert len(sleeps.delays) == 5
    for attempt, delay in enumerate(sleeps.delays[:3], start=1):
        base = 2.0 ** (attempt - 1)
        assert 0.5 * base <= delay <= 1.5 * base
    assert all(d <= 6.0 for d in sleeps.delays)
    assert sleeps.delays[4] >= 6.0 - 1e-9  # 16 s times >= 0.5 is capped at 6 s


@pytest.mark.parametrize("kind", ["malformed", "truncated", "schema"])
async def test_broken_body_is_retried_then_succeeds(
    control: Control, make_client: MakeClient, sleeps: Sleeps, metrics: Metrics, kind: str
) -> None:
    await control.seed(5)
    await control.fault("list_jobs", kind, count=1)

    with capture_logs() as logs:
        jobs = await sweep(make_client())

    assert len(jobs) == 5
    assert await control.requests("list_jobs") == {"200": 2}
    assert len(sleeps.delays) == 1
    assert [e["reason"] for e in logs if e["event"] == "box_request_retry"] == ["bad_response"]
    assert sample(metrics, "box_docgen_api_retries_total", reason="bad_response") == 1


async def test_broken_single_job_is_a_bad_response(
    control: Control, make_client: MakeClient
) -> None:
    created = await control.batch(1)
    await control.fault("get_job", "schema")

    with pytest.raises(BoxBadResponse) as caught:
        await make_client(max_attempts=2).get_job(created["job_ids"][0])

    assert caught.value.attempts == 2
    assert "status" in str(caught.value)


async def test_server_errors_exhaust_exactly_max_attempts(
    control: Control, make_client: MakeClient, sleeps: Sleeps, metrics: Metrics
) -> None:
    await control.fault("list_jobs", "500")

    with pytest.raises(BoxServerError) as caught:
        await sweep(make_client(max_attempts=3))

    error = caught.value
    assert error.status == 500
    assert error.code == "internal_server_error"
    assert error.attempts == 3
    assert "after 3 attempts" in str(error)
    assert error.request_id and error.request_id in str(error)
    assert await control.requests("list_jobs") == {"500": 3}
    assert len(sleeps.delays) == 2
    assert sample(metrics, "box_docgen_api_requests_total",
                  endpoint="/2.0/docgen_jobs", code="500") == 3


async def test_default_is_five_attempts(
    control: Control, make_client: MakeClient
) -> None:
    await control.fault("get_job", "502")

    with capture_logs() as logs, pytest.raises(BoxServerError):
        await make_client().get_job("1")

    assert await control.requests("get_job") == {"502": 5}
    retries = [e for e in logs if e["event"] == "box_request_retry"]
    assert [e["attempt"] for e in retries] == [1, 2, 3, 4]
    assert all(e["job_id"] == "1" for e in retries)
    assert all(e["endpoint"] == "/2.0/docgen_jobs/{job_id}" for e in retries)


async def test_rate_limit_exhausted_carries_retry_after(
    control: Control, make_client: MakeClient, sleeps: Sleeps
) -> None:
    await control.fault("list_jobs", "429", retry_after_s=1)

    with pytest.raises(BoxRateLimited) as caught:
        await sweep(make_client(max_attempts=2))

    assert caught.value.retry_after_s == 1.0
    assert caught.value.code == "rate_limit_exceeded"
    assert await control.requests("list_jobs") == {"429": 2}
    assert sleeps.delays == [1.0]


async def test_slow_answer_times_out_then_succeeds(
    control: Control, make_client: MakeClient, metrics: Metrics
) -> None:
    await control.fault("list_jobs", "latency", count=1, latency_s=1.0)

    with capture_logs() as logs:
        await sweep(make_client(timeout_s=0.2))

    assert [e["reason"] for e in logs if e["event"] == "box_request_retry"] == ["timeout"]
    assert sample(metrics, "box_docgen_api_requests_total",
                  endpoint="/2.0/docgen_jobs", code="error") == 1
    assert sample(metrics, "box_docgen_api_requests_total",
                  endpoint="/2.0/docgen_jobs", code="200") == 1


async def test_timeouts_exhaust_attempts(control: Control, make_client: MakeClient) -> None:
    await control.fault("get_job", "latency", latency_s=1.0)

    with pytest.raises(BoxTimeout) as caught:
        await make_client(timeout_s=0.1, max_attempts=2).get_job("1")

    assert caught.value.attempts == 2
    assert "timed out after 0.1 s" in str(caught.value)


async def test_no_server_is_a_connection_error(
    make_client: MakeClient, metrics: Metrics, sleeps: Sleeps
) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()

    with pytest.raises(BoxConnectionError) as caught:
        await make_client(base_url=f"http://127.0.0.1:{port}", max_attempts=3).get_job("1")

    assert caught.value.attempts == 3
    assert len(sleeps.delays) == 2
    assert sample(metrics, "box_docgen_api_requests_total",
                  endpoint="/2.0/docgen_jobs/{job_id}", code="error") == 3


async def test_create_batch_is_not_repeated_after_a_server_error(
    control: Control, make_client: MakeClient, sleeps: Sleeps
) -> None:
    """Box may have started the batch before failing: repeating it could double the work."""
    await control.fault("create_batch", "500", count=1)

    with pytest.raises(BoxServerError):
        await make_client().create_batch("1", "2", "pdf", [
            {"generated_file_name": "a", "user_input": {}}
        ])

    assert await control.requests("create_batch") == {"500": 1}
    assert sleeps.delays == []


async def test_create_batch_is_repeated_after_a_rate_limit(
    control: Control, make_client: MakeClient, sleeps: Sleeps
) -> None:
    """A 429 means Box did not act on the request, so repeating it is safe."""
    await control.fault("create_batch", "429", count=1, retry_after_s=1)

    batch = await make_client().create_batch("1", "2", "pdf", [
        {"generated_file_name": "a", "user_input": {}}
    ])

    assert batch.id
    assert await control.requests("create_batch") == {"429": 1, "202": 1}
    assert sleeps.delays == [1.0]


# -- a refused grant: one request at a time, backing off, shared by every caller -----------


class Clock:
    """An injected monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_refused_grant_costs_one_token_request_for_twenty_concurrent_callers(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth], metrics: Metrics
) -> None:
    """Twenty polls that need a token while the secret is wrong make one token request; the
    nineteen that waited for it share its refusal without asking again."""
    auth = make_ccg(client_secret="wrong-secret", clock=Clock())
    client = make_client(auth)

    with capture_logs() as logs:
        results = await asyncio.gather(
            *(client.get_job(str(n)) for n in range(20)), return_exceptions=True
        )

    assert all(isinstance(r, BoxAuthError) for r in results), results
    assert sum(isinstance(r, BoxAuthBackoff) for r in results) == 19
    assert await control.requests("token") == {"400": 1}
    assert await control.count("get_job") == 0
    refused = [e for e in logs if e["event"] == "box_token_refused"]
    assert [(e["reason"], e["refusals"], e["next_try_in_s"]) for e in refused] == [
        ("invalid_grant", 1, 5.0)
    ]
    assert not [e for e in logs if e["event"] == "box_request_retry"]
    assert sample(metrics, "box_docgen_auth_failures_total", reason="invalid_grant") == 1
    assert auth.status() == AuthStatus(False, "refused: invalid_grant, next try in 5s")


async def test_a_refused_grant_is_tried_again_after_5_s_doubling_to_5_min(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    """While the backoff runs every call fails at once with `BoxAuthBackoff` and no request;
    once it is over, one call asks Box again."""
    clock = Clock()
    client = make_client(make_ccg(client_id="nobody", clock=clock))

    for tries, backoff_s in enumerate([5, 10, 20, 40, 80, 160, 300, 300], start=1):
        with pytest.raises(BoxAuthError) as refused:
            await client.get_job("1")
        assert not isinstance(refused.value, BoxAuthBackoff)
        assert await control.count("token") == tries
        clock.now += backoff_s - 0.5
        with pytest.raises(BoxAuthBackoff) as waiting:
            await sweep(client)
        assert waiting.value.retry_in_s == pytest.approx(0.5)
        assert waiting.value.error == "invalid_client"
        assert "invalid_client" in str(waiting.value) and "next try in" in str(waiting.value)
        assert await control.count("token") == tries
        clock.now += 0.5
    assert await control.count("list_jobs") == 0


async def test_a_wrong_secret_never_reaches_the_backoff_error_or_status(
    make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    secret = "wrong-secret-never-shown-91c2"
    auth = make_ccg(client_secret=secret, clock=Clock())
    client = make_client(auth)
    for _ in range(2):
        with pytest.raises(BoxAuthError) as caught:
            await client.get_job("1")
        assert secret not in str(caught.value) and secret not in repr(caught.value)
    assert secret not in auth.status().detail


async def test_calls_succeed_again_once_box_accepts_the_secret_after_one_backoff_step(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    """The secret is fixed at Box (rotated to the one the monitor has): nothing is asked until
    the backoff step is over, then the next call gets a token, without a new auth."""
    created = await control.batch(1)
    clock = Clock()
    auth = make_ccg(client_secret="next-secret", clock=clock)
    client = make_client(auth)
    with pytest.raises(BoxAuthError):
        await client.get_job(created["job_ids"][0])

    await control.rotate_secret(CLIENT_ID, "next-secret")
    with pytest.raises(BoxAuthBackoff):
        await client.get_job(created["job_ids"][0])
    assert await control.requests("token") == {"400": 1}
    clock.now += REFUSED_BACKOFF_INITIAL_S
    with capture_logs() as logs:
        job = await client.get_job(created["job_ids"][0])

    assert job.id == created["job_ids"][0]
    assert await control.requests("token") == {"400": 1, "200": 1}
    assert auth.status() == AuthStatus(True, "ok")
    (accepted,) = [e for e in logs if e["event"] == "box_token_accepted_again"]
    assert accepted["after_refusals"] == 1


async def test_token_requests_draw_from_the_request_budget(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    await control.seed(3)
    budget = RequestBudget(6000)
    await sweep(make_client(make_ccg(), budget=budget))

    assert await control.requests("token") == {"200": 1}
    assert budget.used == 2  # the token request and the one listing page


async def test_a_failing_token_endpoint_is_asked_once_per_wave_not_once_per_caller(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth], sleeps: Sleeps
) -> None:
    """Ten callers waiting on a token request that gets a 503 share it and retry together:
    each round of retries makes one token request, not ten."""
    await control.fault("token", "503")
    client = make_client(make_ccg(), max_attempts=2)

    results = await asyncio.gather(
        *(client.get_job(str(n)) for n in range(10)), return_exceptions=True
    )

    assert all(isinstance(r, BoxServerError | BoxTokenUnavailable) for r in results), results
    assert await control.requests("token") == {"503": 2}


async def test_replace_auth_uses_the_new_credentials_from_the_next_call(
    control: Control, make_client: MakeClient, make_ccg: Callable[..., CCGAuth]
) -> None:
    created = await control.batch(1)
    refused = make_ccg(client_secret="wrong-secret", clock=Clock())
    client = make_client(refused)
    with pytest.raises(BoxAuthError):
        await client.get_job(created["job_ids"][0])

    fixed = make_ccg()
    await client.replace_auth(fixed)

    assert client.auth is fixed
    job = await client.get_job(created["job_ids"][0])
    assert job.id == created["job_ids"][0]
    assert await control.requests("token") == {"400": 1, "200": 1}
    assert fixed.status() == AuthStatus(True, "ok")


async def test_a_retry_after_beyond_the_maximum_is_cut_logged_and_counted(
    control: Control, make_client: MakeClient, sleeps: Sleeps, metrics: Metrics
) -> None:
    """`retry-after: 3600` makes the client wait `max_retry_after_s` (default 120 s)."""
    await control.fault("list_jobs", "429", count=1, retry_after_s=3600)

    with capture_logs() as logs:
        await sweep(make_client())

    assert sleeps.delays == [120.0]
    clamped = [e for e in logs if e["event"] == "box_retry_after_clamped"]
    assert [(e["endpoint"], e["retry_after_s"], e["max_retry_after_s"]) for e in clamped] == [
        ("/2.0/docgen_jobs", 3600.0, 120.0)
    ]
    assert sample(metrics, "box_docgen_retry_after_clamped_total") == 1


async def test_the_shared_budget_pauses_for_the_cut_retry_after_and_counts_it_once(
    control: Control, make_client: MakeClient, metrics: Metrics
) -> None:
    """The client and the budget both bound Box's `retry-after`; one answer is one count."""
    clock = Clock()

    async def sleep(delay_s: float) -> None:
        clock.now += delay_s

    budget = RequestBudget(6000, max_retry_after_s=120, metrics=metrics, clock=clock)
    await control.fault("list_jobs", "429", count=1, retry_after_s=10**9)

    await sweep(make_client(budget=budget, sleep=sleep))

    assert budget.blocked_until <= clock.now
    assert clock.now == 1120.0
    assert sample(metrics, "box_docgen_retry_after_clamped_total") == 1
    assert await control.requests("list_jobs") == {"429": 1, "200": 1}


# -- metrics and sessions ------------------------------------------------------------------


async def test_metrics_count_every_attempt_by_route_template(
    control: Control,
    make_client: MakeClient,
    make_ccg: Callable[..., CCGAuth],
    metrics: Metrics,
) -> None:
    created = await control.batch(2)
    await control.seed(3)
    client = make_client(make_ccg())
    await control.fault("get_job", "500", count=1)

    await sweep(client)
    await client.list_batch_jobs(created["batch_id"])
    await client.get_job(created["job_ids"][0])
    with pytest.raises(BoxNotFound):
        await client.get_job("424242")
    await client.create_batch("1", "2", "docx", [{"generated_file_name": "a", "user_input": {}}])

    requests = {
        (s.labels["endpoint"], s.labels["code"]): s.value
        for m in metrics.registry.collect()
        if m.name == "box_docgen_api_requests"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert requests == {
        ("/oauth2/token", "200"): 1,
        ("/2.0/docgen_jobs", "200"): 1,
        ("/2.0/docgen_batch_jobs/{batch_id}", "200"): 1,
        ("/2.0/docgen_jobs/{job_id}", "500"): 1,
        ("/2.0/docgen_jobs/{job_id}", "200"): 1,
        ("/2.0/docgen_jobs/{job_id}", "404"): 1,
        ("/2.0/docgen_batches", "202"): 1,
    }
    ids = {created["batch_id"], *created["job_ids"], "424242"}
    for family in metrics.registry.collect():
        for s in family.samples:
            assert not ids & set(s.labels.values()), s
            if "endpoint" in s.labels:
                assert s.labels["endpoint"] in TEMPLATES
    assert sample(metrics, "box_docgen_api_request_duration_seconds_count",
                  endpoint="/2.0/docgen_jobs/{job_id}") == 3


async def test_client_without_metrics_works(control: Control, make_client: MakeClient) -> None:
    await control.seed(2)

    assert len(await sweep(make_client(metrics=None))) == 2


async def test_given_session_is_left_open(sim: Any) -> None:
    async with aiohttp.ClientSession() as session:
        async with BoxClient(
            sim.url, DeveloperTokenAuth(SecretStr("dev-token")), session=session
        ) as client:
            await sweep(client)
        assert not session.closed


async def test_own_session_is_closed_on_exit(sim: Any) -> None:
    client = BoxClient(sim.url, DeveloperTokenAuth(SecretStr("dev-token")))
    async with client:
        await sweep(client)
        session = client._session
        assert session is not None
    assert session.closed


# -- pure helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [("1", 1.0), (" 2.5 ", 2.5), ("-3", 0.0), ("soon", None), ("nan", None), (None, None)],
)
def test_retry_after_header_is_read_as_seconds(header: str | None, expected: float | None) -> None:
    headers = {} if header is None else {"retry-after": header}

    assert parse_retry_after(headers) == expected


def test_retry_after_may_be_an_http_date() -> None:
    value = parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})

    assert value == 0.0  # in the past: retry at once


def test_constructor_rejects_nonsense() -> None:
    auth = DeveloperTokenAuth(SecretStr("x"))
    with pytest.raises(ValueError, match="max_attempts"):
        BoxClient("http://x", auth, max_attempts=0)
    with pytest.raises(ValueError, match="page_size"):
        BoxClient("http://x", auth, page_size=0)
    with pytest.raises(ValueError, match="timeout_s"):
        BoxClient("http://x", auth, timeout_s=0)
    with pytest.raises(ValueError, match="subject_type"):
        CCGAuth("http://x/oauth2/token", "id", SecretStr("s"), "group", "1")


async def test_a_dropped_connection_is_retried_until_box_answers(
    control: Control, make_client: MakeClient, sleeps: Sleeps, metrics: Metrics
) -> None:
    """The simulator closes the connection without an answer (aiohttp itself retries an
    idempotent request once on a fresh connection, so three drops reach the client twice)."""
    batch = await control.batch(1)
    await control.fault("get_job", "disconnect", count=3)
    job = await make_client().get_job(batch["job_ids"][0])
    assert job.id == batch["job_ids"][0]
    assert len(sleeps.delays) >= 1
    retried = metrics.registry.get_sample_value(
        "box_docgen_api_retries_total", {"account": "default", "reason": "connection_error"}
    )
    assert retried is not None and retried >= 1


async def test_a_listing_with_a_schema_broken_entry_keeps_the_rest_of_the_page(
    control: Control, make_client: MakeClient, sleeps: Sleeps
) -> None:
    """The `schema` fault strips `status` from every entry: each is set aside, the page is not
    a failed request (and is not retried)."""
    await control.seed(3)
    await control.fault("list_jobs", "schema", count=1)
    pages = [p async for p in make_client().iter_job_listing()]
    assert sum(len(p.invalid) for p in pages) == 3 and all(not p.entries for p in pages)
    assert sleeps.delays == []
