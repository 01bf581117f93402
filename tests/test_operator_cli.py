"""`test-notify`, `dead-letters` and the template check of `check-config` and `run`, as an
operator runs them:
subprocesses against the real peers (fake Slack, aiosmtpd, the real store)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.model import SnapshotChanges
from monitor.store import open_store
from monitor.store.base import OutboxState
from tests.fake_slack import FakeSlack, untrusted_leaks
from tests.harness import free_port, write_config
from tests.smtp_sink import SmtpSink, parts
from tests.test_cli import run_cli
from tests.test_slack import CHANNEL
from tests.test_store_contract import routed


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack().start()
    yield fake
    await fake.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


def config(tmp_path: Path, notifiers: list[dict[str, Any]]) -> Path:
    return write_config(
        tmp_path / "c.yaml", box_url="http://127.0.0.1:9", hook_url="http://127.0.0.1:9/h",
        http_port=free_port(),
        notifiers=notifiers,
        routes=[{"match": {}, "notify": [n["name"] for n in notifiers]}],
    )


async def test_test_notify_posts_a_sample_to_slack_and_prints_the_answer(
    slack: FakeSlack, tmp_path: Path
) -> None:
    path = config(tmp_path, [{"name": "team-slack", "type": "slack", "token": "xoxb-test",
                              "channel": CHANNEL, "api_url": slack.api_url}])
    code, out, err = await run_cli("test-notify", "--config", str(path), "team-slack")
    assert code == 0, err
    assert out.startswith("team-slack (slack): delivered: batch(es) sample-batch")
    [parent] = slack.parents()
    [reply] = slack.replies(parent.ts)
    assert untrusted_leaks(json.dumps([parent.blocks, reply.blocks, reply.text])) == []
    assert "&lt;!channel&gt;" in reply.text
    assert not (tmp_path / "state.db").exists()  # the sample never touches the real state


async def test_test_notify_reports_the_receivers_refusal_and_exits_1(
    slack: FakeSlack, tmp_path: Path
) -> None:
    path = config(tmp_path, [{"name": "team-slack", "type": "slack", "token": "xoxb-revoked",
                              "channel": CHANNEL, "api_url": slack.api_url}])
    code, out, _ = await run_cli("test-notify", "--config", str(path), "team-slack")
    assert code == 1
    assert out.splitlines()[0] == "team-slack (slack): FAILED: chat.postMessage: invalid_auth"
    assert "xoxb-revoked" not in out


async def test_test_notify_mails_a_sample_digest(smtp: SmtpSink, tmp_path: Path) -> None:
    path = config(tmp_path, [{"name": "oncall-mail", "type": "email", "from": "m@example.com",
                              "to": ["ops@example.com"],
                              "smtp": {"host": "127.0.0.1", "port": smtp.port,
                                       "starttls": False}}])
    code, out, err = await run_cli("test-notify", "--config", str(path), "oncall-mail")
    assert code == 0, err
    assert out.splitlines()[0] == "oncall-mail (email): delivered: 1 mail(s)"
    [mail] = smtp.received()
    _, html = parts(mail)
    assert "&lt;!channel&gt;" in html and "<script>" not in html


async def test_test_notify_names_an_unknown_notifier(tmp_path: Path) -> None:
    path = config(tmp_path, [{"name": "sink", "type": "console"}])
    code, _, err = await run_cli("test-notify", "--config", str(path), "nope")
    assert code == 2
    assert "no notifier named 'nope' (configured: sink)" in err


async def test_dead_letters_list_retry_and_drop(tmp_path: Path) -> None:
    path = config(tmp_path, [{"name": "a", "type": "console"}, {"name": "b", "type": "console"}])
    async with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        await store.commit(SnapshotChanges(), [routed("j1:2:x:y", "a", "b"),
                                               routed("j2:2:x:y", "a")], now=1.0)
        await store.claim_due("a", 1.0, 10, 30)
        await store.claim_due("b", 1.0, 10, 30)
        for event_id, notifier in (("j1:2:x:y", "a"), ("j2:2:x:y", "a"), ("j1:2:x:y", "b")):
            await store.mark_failed(event_id, notifier, "HTTP 500 <boom>", None)

    code, out, err = await run_cli("dead-letters", "list", "--config", str(path),
                                   "--output", "json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["event_id"], r["notifier"], r["attempts"], r["last_error"]) for r in rows] == [
        ("j1:2:x:y", "a", 1, "HTTP 500 <boom>"),
        ("j1:2:x:y", "b", 1, "HTTP 500 <boom>"),
        ("j2:2:x:y", "a", 1, "HTTP 500 <boom>"),
    ]
    assert rows[0]["detected_at"] == "2027-01-15T12:00:00Z"
    assert rows[0]["failing_since"].endswith("Z")
    code, out, err = await run_cli("dead-letters", "list", "--config", str(path))
    assert code == 0, err
    header, *lines = out.splitlines()
    assert header.split()[:6] == ["EVENT", "NOTIFIER", "TYPE", "BATCH", "DETECTED", "FAILING"]
    assert len(lines) == 3 and "2027-01-15T12:00:00Z" in lines[0] and "HTTP 500 <boom>" in lines[0]
    # Without a filter, drop asks; with no terminal to ask on it refuses and drops nothing.
    code, out, err = await run_cli("dead-letters", "drop", "--config", str(path))
    assert code == 2 and "--all" in err and out == ""
    code, out, _ = await run_cli("dead-letters", "retry", "--config", str(path),
                                 "--notifier", "a", "--event", "j1:2:x:y")
    assert (code, out) == (0, "1 dead letter(s) queued again\n")
    code, out, _ = await run_cli("dead-letters", "drop", "--config", str(path), "--notifier", "b")
    assert (code, out) == (0, "1 dead letter(s) dropped\n")
    async with open_store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        assert [r.event.id for r in await store.list_outbox(OutboxState.DEAD)] == ["j2:2:x:y"]
        [pending] = await store.list_outbox(OutboxState.PENDING)
        assert (pending.event.id, pending.notifier, pending.attempts) == ("j1:2:x:y", "a", 0)
    code, out, _ = await run_cli("dead-letters", "drop", "--config", str(path), "--all")
    assert (code, out) == (0, "1 dead letter(s) dropped\n")
    code, out, _ = await run_cli("dead-letters", "list", "--config", str(path))
    assert (code, out) == (0, "no dead letters\n")


async def test_check_config_refuses_a_broken_template(tmp_path: Path) -> None:
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "slack_parent.j2").write_text("{{ batch.id }} {{ batch.nope.deeper }}")
    path = config(tmp_path, [{"name": "team-slack", "type": "slack", "token": "xoxb-secret",
                              "channel": CHANNEL, "template_dir": str(templates)}])
    code, _, err = await run_cli("check-config", str(path))
    assert code == 2
    assert "notifiers[0] (team-slack): template slack_parent.j2: UndefinedError" in err
    assert "xoxb-secret" not in err
    (templates / "slack_parent.j2").write_text("{{ batch.id }}: {{ batch.done }}")
    code, out, err = await run_cli("check-config", str(path))
    assert (code, out) == (0, f"{path}: OK (1 notifier(s), 1 route(s))\n"), err


async def test_run_refuses_a_broken_template_at_start_with_exit_2(tmp_path: Path) -> None:
    """`run` renders every template before it starts, as `check-config` does: a template that
    fails is a configuration error (exit 2, by key path), not a failure at the first send."""
    templates = tmp_path / "tpl"
    templates.mkdir()
    (templates / "slack_failure.j2").write_text("{{ job.id }} {{ job.nope.deeper }}")
    path = config(tmp_path, [{"name": "team-slack", "type": "slack", "token": "xoxb-secret",
                              "channel": CHANNEL, "template_dir": str(templates)}])
    code, out, err = await run_cli("run", "--config", str(path), timeout_s=30)
    assert (code, out) == (2, "")
    assert "notifiers[0] (team-slack): template slack_failure.j2: UndefinedError" in err
    assert "Traceback" not in err and "xoxb-secret" not in err
    assert not (tmp_path / "state.db").exists()  # refused before anything started
