"""Benchmark: what people get for big batches (run by hand, not in the test suite).

    python bench/notify_batch.py --batches 1 --jobs 500 --failures 20

Starts the simulator, the fake Slack Web API and an SMTP server (aiosmtpd) in this process and
`docgen-monitor run` as a subprocess with one Slack bot notifier and one email digest notifier
(default grouping: group_wait 2s, group_interval 5s, 10 failures per reply). Reports Slack API
calls by method, thread replies, mails, and seconds from the batches' start until the final
Slack edit and the last mail, and the longest event-loop stall the daemon's lag histogram saw."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.simulator import SimulatorConfig, TimelineConfig, start_simulator
from tests.fake_slack import FakeSlack
from tests.harness import TOKEN, DaemonProcess, SimControl, free_port, write_config
from tests.smtp_sink import SmtpSink

CHANNEL = "C0123456789"


async def run(batches: int, jobs: int, failures: int, max_duration_s: float) -> None:
    sim = await start_simulator(SimulatorConfig(
        seed=1, developer_tokens=[SecretStr(TOKEN)],
        timeline=TimelineConfig(submitted_after_s=0.5, min_duration_s=1.0,
                                max_duration_s=max_duration_s),
    ))
    slack = await FakeSlack().start()
    smtp = SmtpSink().start()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(
            Path(tmp) / "config.yaml", box_url=sim.url, hook_url="http://127.0.0.1:9/x",
            http_port=port,
            notifiers=[
                {"name": "team-slack", "type": "slack", "token": "xoxb-test",
                 "channel": CHANNEL, "api_url": slack.api_url},
                {"name": "oncall-mail", "type": "email", "from": "m@example.com",
                 "to": ["ops@example.com"], "group_wait": "2s", "group_interval": "5s",
                 "smtp": {"host": "127.0.0.1", "port": smtp.port, "starttls": False}},
            ],
            routes=[{"match": {"type": ["job.discovered", "job.status_changed",
                                        "batch.completed"]},
                     "notify": ["team-slack", "oncall-mail"]}],
            log={"level": "warning", "format": "json"},
        )
        daemon = DaemonProcess(config, port)
        daemon.start()
        async with aiohttp.ClientSession() as session:
            try:
                await daemon.wait_ready()
                control = SimControl(sim.url, session)
                started = time.monotonic()
                only_ok = {"completed": 1.0, "completed_with_error": 0.0, "failed": 0.0}
                for _ in range(batches):
                    body = await control.start_batch(jobs, outcomes=only_ok)
                    for job_id in body["job_ids"][:: max(jobs // failures, 1)][:failures]:
                        await control.call("PUT", f"/_sim/jobs/{job_id}",
                                           {"status": "failed", "errors": ["bench failure"]})
                final_edit_s = mail_s = None
                while time.monotonic() - started < 300:
                    parents = slack.parents()
                    if final_edit_s is None and len(parents) == batches and all(
                        f"{jobs}/{jobs} jobs done" in p.text for p in parents
                    ):
                        final_edit_s = time.monotonic() - started
                    if mail_s is None and len(smtp.received()) >= batches:
                        mail_s = time.monotonic() - started
                    if final_edit_s is not None and mail_s is not None:
                        break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(3)  # anything late still counts
                stall = await daemon.loop_stall_s()
            finally:
                await daemon.stop()
    methods: dict[str, int] = {}
    for request in slack.requests:
        methods[request.method] = methods.get(request.method, 0) + 1
    replies = sum(len(slack.replies(p.ts)) for p in slack.parents())
    print(f"{batches} batch(es) x {jobs} jobs, {failures} failures each, "
          f"job durations 1-{max_duration_s:g}s")
    print(f"  slack calls: {len(slack.requests)} {methods}; parents {len(slack.parents())}, "
          f"replies {replies}, 429s {sum(r.status == 429 for r in slack.requests)}")
    print(f"  mails: {len(smtp.received())}")
    print(f"  final Slack edit after {final_edit_s and round(final_edit_s, 1)}s, "
          f"last mail after {mail_s and round(mail_s, 1)}s")
    print(f"  longest event-loop stall: {stall[0]:g}-{stall[1]:g}s "
          f"(box_docgen_event_loop_lag_seconds, {stall[2]} samples)")
    smtp.stop()
    await slack.stop()
    await sim.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=1)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--failures", type=int, default=20)
    p.add_argument("--max-duration", type=float, default=30.0, help="longest job, seconds")
    args = p.parse_args()
    asyncio.run(run(args.batches, args.jobs, args.failures, args.max_duration))


if __name__ == "__main__":
    main()
