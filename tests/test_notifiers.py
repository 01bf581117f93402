"""The notifier axis: routing, the registry fed by entry points (a third-party plugin included),
and what every registered notifier declares."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import orjson
import pytest
from pydantic import SecretStr

from monitor.config import NotifierSpec, Route
from monitor.errors import UnknownNotifierType
from monitor.model import Event, EventBatch, EventJob, EventType
from monitor.notify.base import Notifier, NotifierConfig, NotifierRegistry
from monitor.notify.console import ConsoleConfig, ConsoleNotifier
from monitor.notify.router import Router

WHEN = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)


def job_event(to_status: str = "failed", batch_id: str = "b1", template: str = "t1") -> Event:
    return Event(
        id=f"j1:2:submitted:{to_status}", type=EventType.JOB_STATUS_CHANGED, detected_at=WHEN,
        from_status="submitted", to_status=to_status,
        job=EventJob(id="j1", batch_id=batch_id, status=to_status, template_file_id=template,
                     output_file_id=None, output_type="pdf", created_by_id="u7"),
    )


BATCH_EVENT = Event(id="b1:completed:3", type=EventType.BATCH_COMPLETED, detected_at=WHEN,
                    batch=EventBatch(id="b1", counts={"completed": 2, "failed": 1},
                                     duration_s=12.5))


def routes(*specs: dict[str, object]) -> Router:
    return Router([Route.model_validate(s) for s in specs])


@pytest.mark.parametrize(("match", "expected"), [
    ({}, True),
    ({"type": "job.status_changed"}, True),
    ({"type": ["batch.completed"]}, False),
    ({"to_status": ["failed", "completed_with_error"]}, True),
    ({"to_status": "completed"}, False),
    ({"from_status": "submitted"}, True),
    ({"batch_id": "b2"}, False),
    ({"template_id": ["t1"], "to_status": "failed"}, True),
    ({"template_id": ["t1"], "to_status": "completed"}, False),
    ({"output_type": "pdf", "creator": ["u7", "u8"]}, True),
    ({"output_type": "docx"}, False),
    ({"creator": "u8"}, False),
])
def test_a_route_matches_when_every_given_key_matches(match: dict[str, object],
                                                      expected: bool) -> None:
    router = routes({"match": match, "notify": ["a"]})
    assert router.route(job_event()) == (("a",) if expected else ())


def test_a_route_can_match_the_account_an_event_happened_in() -> None:
    router = routes(
        {"match": {"account": "eu"}, "notify": ["eu-chat"]},
        {"match": {"account": ["us", "default"], "to_status": "failed"}, "notify": ["pager"]},
        {"match": {}, "notify": ["audit"]},
    )
    eu = job_event("failed").model_copy(update={"account": "eu"})
    us = job_event("failed").model_copy(update={"account": "us"})
    assert router.route(eu) == ("eu-chat",)
    assert router.route(us) == ("pager",)
    assert router.route(job_event("failed")) == ("pager",)  # `box:` is account `default`
    assert router.route(BATCH_EVENT.model_copy(update={"account": "eu"})) == ("eu-chat",)


def test_first_matching_route_wins_unless_it_says_continue() -> None:
    router = routes(
        {"match": {"to_status": "failed"}, "notify": ["oncall"], "continue": True},
        {"match": {"to_status": "failed"}, "notify": ["chat", "oncall"]},
        {"match": {}, "notify": ["audit"]},
    )
    assert router.route(job_event("failed")) == ("oncall", "chat")
    assert router.route(job_event("completed")) == ("audit",)
    assert router.route(BATCH_EVENT) == ("audit",)


def test_built_ins_are_registered_through_the_entry_point_group() -> None:
    registry = NotifierRegistry.from_entry_points()
    assert {"webhook", "console", "slack", "email"} <= set(registry.types)


# Base URLs of public APIs, not credentials (Slack's `api_url`; its webhook_url is a secret).
PUBLIC_URL_FIELDS = frozenset({"api_url"})


def test_every_registered_notifier_declares_its_type_and_a_strict_config_model() -> None:
    for name, notifier_type in NotifierRegistry.from_entry_points().types.items():
        assert issubclass(notifier_type, Notifier)
        assert notifier_type.type_name == name
        model = notifier_type.config_model
        assert issubclass(model, NotifierConfig)
        assert model.model_config.get("extra") == "forbid"
        for field_name, field in model.model_fields.items():
            if field_name in PUBLIC_URL_FIELDS:
                continue
            if any(w in field_name for w in ("secret", "token", "password", "url")):
                assert "SecretStr" in str(field.annotation), f"{name}.{field_name}"


def test_an_unknown_type_is_refused_by_name() -> None:
    registry = NotifierRegistry.from_entry_points()
    with pytest.raises(UnknownNotifierType, match="unknown notifier type 'pager'"):
        registry.create(NotifierSpec(name="x", type="pager"), timeout_s=1)


@pytest.fixture
def third_party_plugin(tmp_path: Path) -> Iterator[None]:
    """An installed distribution in miniature: a module and a dist-info whose entry_points.txt
    names it under `docgen_monitor.notifiers`, found by importlib.metadata on sys.path."""
    (tmp_path / "pager_plugin.py").write_text(textwrap.dedent('''
        from typing import ClassVar, Literal
        from pydantic import SecretStr
        from monitor.notify.base import DeliveryResult, Notifier, NotifierConfig

        class PagerConfig(NotifierConfig):
            type: Literal["pager"] = "pager"
            routing_key: SecretStr

        class PagerNotifier(Notifier):
            type_name: ClassVar[str] = "pager"
            config_model: ClassVar[type[NotifierConfig]] = PagerConfig
            sent: ClassVar[list[str]] = []

            async def send(self, events):
                self.sent.extend(e.id for e in events)
                return DeliveryResult.delivered("paged")
    '''))
    dist = tmp_path / "pager_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pager-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[docgen_monitor.notifiers]\npager = pager_plugin:PagerNotifier\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("pager_plugin", None)


@pytest.mark.usefixtures("third_party_plugin")
async def test_a_third_party_plugin_is_found_configured_and_sent_through() -> None:
    registry = NotifierRegistry.from_entry_points()
    assert "pager" in registry.types
    spec = NotifierSpec.model_validate({"name": "p", "type": "pager", "routing_key": "rk-1"})
    notifier = registry.create(spec, timeout_s=1)
    assert notifier.config.routing_key == SecretStr("rk-1")  # type: ignore[attr-defined]
    result = await notifier.send([job_event()])
    assert result.ok and result.detail == "paged"
    assert type(notifier).sent == [job_event().id]  # type: ignore[attr-defined]


@pytest.mark.usefixtures("third_party_plugin")
def test_a_notifier_module_is_imported_only_when_its_type_is_asked_for() -> None:
    """`once` names no notifier: it must not pay for importing every installed one."""
    registry = NotifierRegistry.from_entry_points()
    models = registry.config_models()
    assert "pager" in registry.types and "pager" in set(models)
    assert "pager_plugin" not in sys.modules
    assert models["pager"].model_fields["routing_key"].annotation is SecretStr
    assert "pager_plugin" in sys.modules


async def test_console_prints_one_readable_line_per_event() -> None:
    out = StringIO()
    notifier = ConsoleNotifier(ConsoleConfig(name="c"),
                               timeout_s=1, stream=out)
    await notifier.send([job_event(), BATCH_EVENT])
    assert out.getvalue().splitlines() == [
        "09:30:00 job j1 (batch b1, pdf) submitted -> failed",
        "09:30:00 batch b1 completed in 12.5s: 2 completed, 1 failed",
    ]


async def test_with_several_accounts_console_slack_and_email_name_the_account() -> None:
    """`show_account` (set by the daemon when several accounts are configured) puts the
    event's account in the console line and in every built-in Slack and email template."""
    from monitor.notify.render import Templates

    out = StringIO()
    notifier = ConsoleNotifier(ConsoleConfig(name="c"), timeout_s=1, stream=out)
    notifier.show_account = True
    eu = job_event().model_copy(update={"account": "eu"})
    await notifier.send([eu])
    assert out.getvalue() == "09:30:00 [eu] job j1 (batch b1, pdf) submitted -> failed\n"

    templates = Templates()
    shown = (await notifier.batch_view("b1", [eu])).context(max_failures=10)
    hidden = (await ConsoleNotifier(ConsoleConfig(name="d"), timeout_s=1).batch_view(
        "b1", [eu])).context(max_failures=10)
    for kind, name in [("mrkdwn", "slack_title.j2"), ("mrkdwn", "slack_parent.j2"),
                       ("mrkdwn", "slack_summary.j2"), ("text", "email_subject.j2"),
                       ("text", "email_body.txt.j2"), ("html", "email_body.html.j2")]:
        assert "eu" in templates.render(kind, name, shown), name
        assert "eu" not in templates.render(kind, name, hidden), name


async def test_console_json_format_prints_the_wire_body() -> None:
    out = StringIO()
    spec = NotifierSpec.model_validate({"name": "c", "type": "console", "format": "json"})
    notifier = NotifierRegistry.from_entry_points().create(spec, timeout_s=1)
    assert isinstance(notifier, ConsoleNotifier)
    notifier.stream = out
    await notifier.send([BATCH_EVENT])
    assert orjson.loads(out.getvalue()) == {
        "id": "b1:completed:3", "type": "batch.completed", "detected_at": "2026-11-28T09:30:00Z",
        "from_status": None, "to_status": None, "account": "default",
        "batch": {"id": "b1", "counts": {"completed": 2, "failed": 1}, "duration_s": 12.5},
    }


def test_the_console_line_of_a_reappeared_job_says_so() -> None:
    from monitor.notify.console import describe

    back = job_event("completed").model_copy(update={
        "id": "j1:4:reappeared", "type": EventType.JOB_REAPPEARED, "from_status": None})
    assert describe(back) == "09:30:00 job j1 (batch b1, pdf) reappeared: completed"
    routed = routes({"match": {"type": "job.reappeared"}, "notify": ["a"]})
    assert routed.route(back) == ("a",)
