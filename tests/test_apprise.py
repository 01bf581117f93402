"""The optional apprise notifier, found through the entry point group like any plugin, sending
to a local HTTP endpoint through Apprise's `json://` service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from monitor.config import NotifierSpec
from monitor.notify.base import NotifierRegistry
from tests.harness import free_port
from tests.test_slack import INJECTIONS, changed, completed, job

apprise = pytest.importorskip("apprise")  # the [apprise] extra; .ci/run installs it


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield port, received
    await runner.cleanup()


def make(url: str) -> Any:
    spec = NotifierSpec.model_validate({"name": "chat", "type": "apprise", "urls": [url]})
    registry = NotifierRegistry.from_entry_points()
    assert "apprise" in registry.types
    return registry.create(spec, timeout_s=3.0)


async def test_a_batch_becomes_one_notification(
    endpoint: tuple[int, list[dict[str, Any]]],
) -> None:
    port, received = endpoint
    notifier = make(f"json://127.0.0.1:{port}/hook")
    assert notifier.check_templates() == []
    failed = job(1, status="failed", errors=(INJECTIONS[0],))
    result = await notifier.send([changed(failed), completed("b1", {"failed": 1})])
    assert result.ok, result.detail
    [body] = received
    assert body["title"] == "[docgen-monitor] Batch b1: 1/1 done, 1 failed (completed)"
    assert f"    {INJECTIONS[0]}" in body["message"]


async def test_a_refusing_service_is_a_failed_delivery_without_the_url() -> None:
    notifier = make(f"json://127.0.0.1:{free_port()}/secret-path")
    result = await notifier.send([completed("b1", {"completed": 1})])
    assert not result.ok
    assert "secret-path" not in result.detail
