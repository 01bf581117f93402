"""Email notifier against a real SMTP server on loopback (aiosmtpd); mails parsed back with the
standard library."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from monitor.config import NotifierSpec
from monitor.model import SnapshotChanges
from monitor.notify.base import NotifierRegistry
from monitor.notify.email import EmailNotifier
from monitor.store import open_store
from monitor.store.base import Store
from tests.harness import free_port
from tests.smtp_sink import SmtpSink, make_cert, parts
from tests.test_slack import INJECTIONS, changed, completed, forty_two_failures, job


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'state.db'}") as s:
        yield s


def mailer(store: Store | None, port: int, **settings: Any) -> EmailNotifier:
    spec = NotifierSpec.model_validate({
        "name": "oncall-mail", "type": "email", "from": "docgen-monitor@example.com",
        "to": ["ops@example.com", "lead@example.com"],
        "smtp": {"host": "127.0.0.1", "port": port, "starttls": False, "tls": False},
        **settings,
    })
    notifier = NotifierRegistry.from_entry_points().create(spec, timeout_s=3.0)
    assert isinstance(notifier, EmailNotifier)
    if store is not None:
        notifier.attach(store)
    return notifier


async def test_a_batch_digest_waits_for_completion_then_is_one_threaded_multipart_mail(
    smtp: SmtpSink, store: Store
) -> None:
    jobs = [job(n) for n in range(4)]
    await store.commit(SnapshotChanges(upserts=tuple(jobs)), [])
    notifier = mailer(store, smtp.port)
    early = [changed(replace(jobs[0], status="completed"))]
    result = await notifier.send(early)
    assert result.ok and result.held == {early[0].id}
    assert smtp.received() == []

    final = [replace(j, status="completed") for j in jobs[:3]]
    bad = replace(jobs[3], status="failed", errors=INJECTIONS)
    await store.commit(SnapshotChanges(upserts=(*final, bad)), [])
    events = [*early, *(changed(j) for j in final[1:]), changed(bad),
              completed("b1", {"completed": 3, "failed": 1})]
    result = await notifier.send(events)
    assert result.ok and not result.held
    [mail] = smtp.received()
    assert smtp.recipients == [["ops@example.com", "lead@example.com"]]
    assert mail["Subject"] == "[docgen-monitor] Batch b1: 4/4 done, 1 failed (completed)"
    assert mail["In-Reply-To"] == mail["References"] == "<batch-b1@example.com>"
    assert mail["Message-ID"].startswith("<batch-b1.")
    text, html = parts(mail)
    assert "failed: 1" in text and "completed: 3" in text
    for injection in INJECTIONS:  # plain text stays as it is: it is not markup
        assert f"    {injection}\n" in text
    assert "<script>" not in html and "<!channel>" not in html
    assert ("<li><code>&lt;https://evil.example|click here&gt; "
            "&lt;script&gt;alert(1)&lt;/script&gt;</code></li>") in html
    assert "<li><code>&lt;!channel&gt; render failed</code></li>" in html


async def test_a_completed_batch_split_across_sends_gets_one_whole_digest(
    smtp: SmtpSink, store: Store
) -> None:
    bad = [replace(job(n), status="failed", errors=(f"error of j{n}",)) for n in range(3)]
    await store.commit(SnapshotChanges(upserts=tuple(bad)), [])
    notifier = mailer(store, smtp.port)
    first = await notifier.send([changed(bad[0])])  # a claim that saw one row of the batch
    later = await notifier.send([changed(bad[1]), changed(bad[2])])
    assert first.ok and later.ok and not first.held and not later.held
    [mail] = smtp.received()
    text, _ = parts(mail)
    # The whole batch, once: one line for the one signature of its three failures.
    assert "- 3 jobs (failed): error of j<n>\n    error of j0\n    jobs j0, j1, j2\n" in text


async def test_a_42_failure_digest_lists_failures_by_signature_with_escaped_examples(
    smtp: SmtpSink, store: Store
) -> None:
    bad = forty_two_failures()
    await store.commit(SnapshotChanges(upserts=tuple(bad)), [])
    notifier = mailer(store, smtp.port)
    result = await notifier.send([*(changed(j) for j in bad), completed("b1", {"failed": 42})])
    assert result.ok and not result.held
    [mail] = smtp.received()
    text, html = parts(mail)
    assert ("Failures by kind (42 jobs):\n"
            "- 30 jobs (failed): The tag '…' was not provided"
            " — e.g. customer_name, city, <!channel>\n"
            "    The tag 'customer_name' was not provided\n"
            "    jobs j0, j1, j10, j11, j12 and 25 more\n"  # the snapshot's rows, by id
            "- 12 jobs (failed): Image <file> could not be read (error <n>)"
            " — e.g. photo_30.png, photo_31.png, photo_32.png, photo_33.png, photo_34.png\n"
            ) in text
    assert text.count("\n- ") == 2  # one line per signature, not one per job
    assert ("<li><b>30 jobs</b> (failed): The tag &#39;…&#39; was not provided"
            " — e.g. customer_name, city, &lt;!channel&gt;") in html
    assert "<!channel>" not in html and html.count("<li><b>") == 2


async def test_window_digest_sends_what_the_group_holds(smtp: SmtpSink, store: Store) -> None:
    notifier = mailer(store, smtp.port, digest="window", group_by=[])
    done = replace(job(1), status="completed")
    await store.commit(SnapshotChanges(upserts=(done, job(2))), [])
    result = await notifier.send([changed(replace(job(1), status="completed"))])
    assert result.ok and not result.held
    [mail] = smtp.received()
    assert "Batch b1: 1/2 done, 0 failed" in mail["Subject"]


@pytest.mark.parametrize(
    ("smtp_settings", "detail"),
    [
        ({"port": "closed"}, "smtp: SMTPConnectError"),
        ({"starttls": True}, "smtp: SMTPException"),  # the server offers no STARTTLS
        ({"tls": True}, "smtp: SMTPConnect"),  # implicit TLS against a plain server
        ({"port": "silent"}, "smtp: SMTPConnectTimeoutError"),  # accepts, never greets
    ],
)
async def test_smtp_failures_are_results_never_exceptions(
    smtp: SmtpSink, smtp_settings: dict[str, Any], detail: str
) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_greet(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    silent = await asyncio.start_server(never_greet, "127.0.0.1", 0)
    ports = {"closed": free_port(), "silent": silent.sockets[0].getsockname()[1]}
    port = ports.get(str(smtp_settings.get("port")), smtp.port)
    settings = {"host": "127.0.0.1", "port": port, "starttls": False, "tls": False,
                **{k: v for k, v in smtp_settings.items() if k != "port"}}
    notifier = mailer(None, port, smtp=settings, digest="window", timeout="0.5s")
    try:
        result = await notifier.send([completed("b1", {"completed": 1})])
    finally:
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        silent.close()
        await silent.wait_closed()
    assert not result.ok
    assert result.detail.startswith(detail), result.detail
    assert smtp.received() == []


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_relays_with_auth_get_the_mail(tmp_path: Path, mode: str) -> None:
    cert = make_cert(tmp_path)
    sink = SmtpSink(tls=mode, cert=cert, credentials=("docgen", "s3cret")).start()
    try:
        settings = {"host": "127.0.0.1", "port": sink.port, "starttls": mode == "starttls",
                    "tls": mode == "implicit", "username": "docgen", "password": "s3cret",
                    "ca_file": str(cert[0])}
        notifier = mailer(None, sink.port, smtp=settings, digest="window")
        result = await notifier.send([completed("b1", {"completed": 1})])
        assert result.ok, result.detail
        wrong = mailer(None, sink.port, smtp={**settings, "password": "nope"}, digest="window")
        refused = await wrong.send([completed("b1", {"completed": 1})])
        assert not refused.ok and "nope" not in refused.detail
        untrusted = mailer(None, sink.port, smtp={**settings, "ca_file": None},
                           digest="window")
        tls_error = await untrusted.send([completed("b1", {"completed": 1})])
        assert not tls_error.ok  # a certificate nobody vouches for is refused
    finally:
        sink.stop()
    [mail] = sink.received()
    assert mail["Subject"].startswith("[docgen-monitor] Batch b1")


def test_check_templates_refuses_a_broken_template(tmp_path: Path) -> None:
    (tmp_path / "email_subject.j2").write_text("Batch {{ batch.id }} {{ no_such_variable }}")
    (tmp_path / "email_body.html.j2").write_text("{% for x in %}")
    notifier = mailer(None, 25, template_dir=str(tmp_path))
    problems = notifier.check_templates()
    assert len(problems) == 2
    assert problems[0].startswith("template email_subject.j2: UndefinedError")
    assert problems[1].startswith("template email_body.html.j2: TemplateSyntaxError")
    assert mailer(None, 25).check_templates() == []


def test_sandbox_refuses_a_template_that_reaches_for_python_internals(tmp_path: Path) -> None:
    (tmp_path / "email_subject.j2").write_text("{{ batch.__class__.__mro__ }}")
    [problem] = mailer(None, 25, template_dir=str(tmp_path)).check_templates()
    assert "SecurityError" in problem or "UndefinedError" in problem
