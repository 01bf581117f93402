"""Text Box controls never reaches a terminal or a log as it is: the console notifier and both
log renderers strip control and bidirectional-formatting characters (a right-to-left override
makes `fdp.exe` read as `exe.pdf`; an escape sequence rewrites the screen; a newline forges a
log line)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from pydantic import SecretStr

from monitor.logging import configure_logging
from monitor.safe_text import clean
from monitor.simulator import RunningSimulator, SimulatorConfig, start_simulator
from tests.harness import TOKEN, DaemonProcess, SimControl, free_port, wait_until, write_config

#: What must never come out: C0 (but newline) and C1 controls, DEL, bidi marks and overrides.
FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
SGR = re.compile(r"\x1b\[[0-9;]*m")
HOSTILE = "\u202efdp.exe\u202c \x1b[2J\x1b]0;owned\x07 \u2066rtl\u2069\u200f\r\nforged: line\x85"


@pytest.mark.parametrize(("text", "one_line"), [
    (HOSTILE, "fdp.exe [2J]0;owned rtl forged: line"),
    ("tab\there", "tab here"),
    ("plain ASCII and ünïcode, 日本語", "plain ASCII and ünïcode, 日本語"),
])
def test_clean_takes_out_controls_and_bidi_characters(text: str, one_line: str) -> None:
    assert clean(text) == one_line
    assert clean("a\nb\u202e", multiline=True) == "a\nb"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_log_renderer_strips_controls_and_bidi_from_values(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging("info", fmt, stream=stream)
    try:
        log = structlog.get_logger("t")
        log.warning("unknown_job_status", status=HOSTILE, texts=[HOSTILE], extra={"k": HOSTILE})
        logging.getLogger("aiohttp.test").warning("from a library: %s", HOSTILE)
        try:
            raise ValueError(HOSTILE.replace("\n", ""))  # a traceback keeps its own newlines
        except ValueError:
            log.exception("poll_failed")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    out = stream.getvalue()
    if fmt == "console":
        out = SGR.sub("", out)  # the renderer's own colours
    assert FORBIDDEN.search(out.replace("\n", "")) is None, repr(out)
    assert "\\u202e" not in out.lower() and "\\u001b" not in out.lower()  # not even escaped
    lines = out.splitlines()
    assert sum("forged: line" in ln for ln in lines) == 3  # never a line of its own
    assert not any(ln.startswith("forged") for ln in lines)
    if fmt == "json":
        first = json.loads(lines[0])
        assert first["status"] == clean(HOSTILE) and first["extra"] == {"k": clean(HOSTILE)}
        assert "Traceback" in json.loads(lines[-1])["exception"]  # a traceback keeps its lines
    else:
        assert any(ln.startswith("Traceback") for ln in lines)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    config = SimulatorConfig(seed=5, developer_tokens=[SecretStr(TOKEN)], frozen_clock=True)
    async with await start_simulator(config) as running:
        yield running


async def test_right_to_left_overrides_from_box_never_reach_the_console_notifiers_stdout(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    """A status and a failure text set at Box with overrides, escapes and a newline: the daemon's
    console notifiers (text and JSON) print them clean, and so does its log."""
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml", box_url=sim.url, hook_url="http://127.0.0.1:9/h", http_port=port,
        notifiers=[{"name": "text", "type": "console"},
                   {"name": "json", "type": "console", "format": "json"}],
        routes=[{"match": {}, "notify": ["text", "json"]}])
    daemon = DaemonProcess(config, port)
    import aiohttp

    try:
        daemon.start()
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as session:
            control = SimControl(sim.url, session)
            batch = await control.start_batch(1)
            job_id = batch["job_ids"][0]

            async def printed(text: str) -> bool:
                return text in daemon.logs()

            await wait_until(lambda: printed(f"job {job_id} "), 20, "the job's discovery")
            await control.call("PUT", f"/_sim/jobs/{job_id}",
                               {"status": f"\u202eliated{HOSTILE}", "errors": [HOSTILE]})
            await wait_until(lambda: printed("forged: line"), 20, "the hostile change")
            await wait_until(lambda: printed('"to_status":"liated'), 20, "the JSON line")
            await asyncio.sleep(0)
        assert await daemon.stop() == 0
    finally:
        daemon.ensure_stopped()
    out = daemon.logs()
    assert FORBIDDEN.search(out.replace("\n", "")) is None
    assert "\\u202e" not in out.lower() and "\\u001b" not in out.lower()
    assert f"-> liated{clean(HOSTILE)}" in out  # the text line, readable, on one line
    assert not any(ln.startswith("forged") for ln in out.splitlines())
