"""The demo's steady stream: a new batch every few seconds, so a freshly started monitor has
something to watch without anyone driving the simulator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from monitor.simulator.config import SteadyStreamConfig
from monitor.simulator.state import STATE_KEY, SimulatorState

log = structlog.get_logger(__name__)


async def run_stream(state: SimulatorState, stream: SteadyStreamConfig) -> None:
    """Start a batch now and then every `stream.every_s` wall seconds, until cancelled."""
    while True:
        batch = state.start_batch(
            stream.jobs_per_batch, outcomes=stream.outcomes, output_type=stream.output_type
        )
        log.debug("simulator.stream.batch_started", batch_id=str(batch.id), jobs=batch.count)
        await asyncio.sleep(stream.every_s)


async def stream_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the stream runs exactly as long as the app."""
    state = app[STATE_KEY]
    stream = state.config.stream
    if stream is None:
        yield
        return
    task = asyncio.create_task(run_stream(state, stream), name="docgen-simulator-stream")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
