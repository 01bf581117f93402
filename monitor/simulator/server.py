"""Assembling and running the simulator: the aiohttp app, a running instance for tests (an
async context manager on a free port), and the long-running `docgen-monitor simulate` entry."""

from __future__ import annotations

import asyncio
from types import TracebackType

import structlog
from aiohttp import web

from monitor.simulator import control, routes
from monitor.simulator.config import SimulatorConfig
from monitor.simulator.state import STATE_KEY, SimulatorState
from monitor.simulator.stream import stream_context
from monitor.simulator.webhooks import sender_context

log = structlog.get_logger(__name__)

# In-flight requests (a latency fault, say) get this long to finish when the server stops.
SHUTDOWN_TIMEOUT_S = 2.0


def build_app(config: SimulatorConfig | None = None) -> web.Application:
    """A fresh simulator: its own state, so two apps never share a job or a token."""
    app = web.Application(middlewares=[routes.box_middleware, control.control_errors])
    app[STATE_KEY] = SimulatorState(config or SimulatorConfig())
    routes.add_routes(app)
    control.add_routes(app)
    app.cleanup_ctx.append(stream_context)
    app.cleanup_ctx.append(sender_context)
    return app


class RunningSimulator:
    """A simulator listening on a real socket. `url` is its base URL (use it as Box's base URL);
    `state` is its world, for inspection in-process."""

    def __init__(self, runner: web.AppRunner, url: str, state: SimulatorState) -> None:
        self._runner = runner
        self._closed = False
        self.url = url
        self.state = state

    async def close(self) -> None:
        """Stop listening and run the app's cleanup; a second call does nothing."""
        if not self._closed:
            self._closed = True
            await self._runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_simulator(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Start listening; port 0 picks a free port, which `url` then reports."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
    except BaseException:
        await runner.cleanup()
        raise
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningSimulator(runner, f"http://{shown_host}:{bound_port}", app[STATE_KEY])


async def serve_forever(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> None:
    """Serve until cancelled, then stop cleanly (in-flight requests get a short grace)."""
    config = config or SimulatorConfig()
    async with await start_simulator(config, host, port) as simulator:
        log.info("simulator.listening", url=simulator.url, seed=config.seed)
        try:
            await asyncio.Event().wait()
        finally:
            log.info("simulator.stopping", url=simulator.url)
