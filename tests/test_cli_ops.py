"""The newcomer's and the operator's command line, run as a user runs it (subprocesses, real
sockets): `routes test`, `test-notify` ids, `--version`, shell completion, and the
configuration named by DOCGEN_MONITOR_CONFIG."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from monitor import __version__
from tests.harness import free_port, write_config
from tests.receiver import WebhookReceiver
from tests.test_cli import run_cli

ROUTES = [
    {"match": {"to_status": ["failed", "completed_with_error"]}, "notify": ["oncall"],
     "continue": True},
    {"match": {"template_id": "123", "output_type": "pdf"}, "notify": ["audit"]},
    {"match": {}, "notify": ["catch-all"]},
]


def config(tmp_path: Path, hook_url: str = "http://127.0.0.1:9/h") -> Path:
    notifiers = [{"name": n, "type": "webhook", "url": hook_url, "secret": "s3cret"}
                 for n in ("oncall", "audit", "catch-all")]
    return write_config(tmp_path / "c.yaml", box_url="http://127.0.0.1:9", hook_url=hook_url,
                        http_port=free_port(), notifiers=notifiers, routes=ROUTES)


async def test_routes_test_names_the_routes_taken_and_the_notifiers(tmp_path: Path) -> None:
    path = str(config(tmp_path))
    code, out, err = await run_cli("routes", "test", "--config", path, "--type",
                                   "job.status_changed", "--to-status", "failed",
                                   "--template", "123", "--output-type", "pdf")
    assert code == 0, err
    assert out.splitlines() == [
        "routes[0] match to_status=failed,completed_with_error -> oncall (continue)",
        "routes[1] match template_id=123 output_type=pdf -> audit",
        "oncall, audit",
    ]
    code, out, err = await run_cli("routes", "test", "--config", path, "--to-status",
                                   "completed", "--template", "9", "--output", "json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["notifiers"] == ["catch-all"]
    assert [r["index"] for r in answer["routes"]] == [2]
    code, out, err = await run_cli("routes", "test", "--config", path, "--to-status", "faild")
    assert code == 2 and out == ""
    assert "'faild' is not a Box job status" in err


async def test_routes_test_says_when_nothing_matches(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", box_url="http://127.0.0.1:9",
                        hook_url="http://127.0.0.1:9/h", http_port=free_port(),
                        routes=[{"match": {"to_status": "failed"}, "notify": ["sink"]}])
    code, out, _ = await run_cli("routes", "test", "--config", str(path), "--type",
                                 "batch.completed")
    assert (code, out) == (0, "no route matches: this event would reach no notifier\n")


async def test_test_notify_mints_new_event_ids_every_run_and_marks_them_a_test(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    path = str(config(tmp_path, receiver.url))
    for _ in range(2):
        code, out, err = await run_cli("test-notify", "--config", path, "audit")
        assert code == 0, err
        assert out.startswith("audit (webhook): delivered")
    assert len(receiver.deliveries) == 4 and len(receiver.ids()) == 4  # nothing to drop
    assert all(d.body["test"] is True for d in receiver.deliveries)
    assert receiver.bad_signatures == 0


async def test_version_and_bash_completion() -> None:
    code, out, _ = await run_cli("--version")
    assert (code, out) == (0, f"docgen-monitor {__version__}\n")
    code, script, err = await run_cli("completion", "bash")
    assert code == 0, err
    # Complete `docgen-monitor sil<TAB>` and `docgen-monitor silence <TAB>` in a real bash.
    probe = script + (
        '\nCOMP_WORDS=(docgen-monitor sil); COMP_CWORD=1; _shtab_docgen_monitor; '
        'echo "${COMPREPLY[@]}"'
        '\nCOMP_WORDS=(docgen-monitor silence ""); COMP_CWORD=2; _shtab_docgen_monitor; '
        'echo "${COMPREPLY[@]}"\n'
    )
    done = await asyncio.to_thread(subprocess.run, ["bash", "--norc", "-s"], input=probe,
                                   capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["silence", "add list expire"]


async def test_the_configuration_can_come_from_docgen_monitor_config(tmp_path: Path) -> None:
    path = str(config(tmp_path))
    env = {**os.environ, "DOCGEN_MONITOR_CONFIG": path}
    for argv in (["check-config"], ["silence", "list"], ["routes", "test"]):
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "monitor.cli",
                                                        *argv], env=env, capture_output=True,
                                       text=True, timeout=60, check=False)
        assert done.returncode == 0, (argv, done.stderr)
    code, _, err = await run_cli("silence", "list")  # neither the flag nor the variable
    assert code == 2 and "--config" in err
