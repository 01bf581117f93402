"""The fake Slack enforces what Slack enforces (shared/slack-api/FACTS.md), so that a notifier
test passing against it means something. Plain aiohttp requests, no notifier involved."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fake_slack import FakeSlack

CHANNEL = "C0123456789"
AUTH = {"Authorization": "Bearer xoxb-test"}


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(enforce_rate=False).start()
    yield fake
    await fake.stop()


async def call(slack: FakeSlack, method: str, body: Any, headers: dict[str, str] | None = None,
               form: bool = False) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as session:
        kwargs: dict[str, Any] = {"data": body} if form else {"json": body}
        async with session.post(f"{slack.api_url}{method}", headers=headers or AUTH,
                                **kwargs) as r:
            return r.status, await r.json(), dict(r.headers)


async def post(slack: FakeSlack, **args: Any) -> Any:
    return (await call(slack, "chat.postMessage", {"channel": CHANNEL, **args}))[1]


@pytest.mark.parametrize(("headers", "error"), [
    ({}, "not_authed"),
    ({"Authorization": "Bearer xoxb-unknown"}, "invalid_auth"),
])
async def test_auth_is_a_bearer_header_with_a_known_token(
    slack: FakeSlack, headers: dict[str, str], error: str
) -> None:
    status, answer, response_headers = await call(
        slack, "chat.postMessage", {"channel": CHANNEL, "text": "x", "token": "xoxb-test"},
        headers=headers or {"X-None": "1"})
    assert (status, answer) == (200, {"ok": False, "error": error})
    assert response_headers["Content-Type"] == "application/json; charset=utf-8"


@pytest.mark.parametrize(("args", "error"), [
    ({"channel": "C-nope", "text": "x"}, "channel_not_found"),
    ({"channel": CHANNEL}, "no_text"),
    ({"channel": CHANNEL, "text": "x" * 4001}, "msg_too_long"),
    ({"channel": CHANNEL, "blocks": "not a list"}, "invalid_blocks_format"),
    ({"channel": CHANNEL, "blocks": [{"type": "section", "text": {"type": "mrkdwn",
                                                                  "text": "x" * 3001}}]},
     "invalid_blocks"),
    ({"channel": CHANNEL, "blocks": [{"type": "header", "text": {"type": "mrkdwn",
                                                                 "text": "x"}}]},
     "invalid_blocks"),
    ({"channel": CHANNEL, "blocks": [{"type": "divider"}] * 51}, "invalid_blocks"),
    ({"channel": CHANNEL, "text": "x", "thread_ts": 1.5}, "invalid_thread_ts"),
    ({"channel": CHANNEL, "text": "x", "thread_ts": "1.000099"}, "thread_not_found"),
])
async def test_post_message_refuses_what_slack_refuses(
    slack: FakeSlack, args: dict[str, Any], error: str
) -> None:
    answer = (await call(slack, "chat.postMessage", args))[1]
    assert (answer["ok"], answer["error"]) == (False, error)


async def test_a_post_answers_the_channel_id_and_a_ts_even_for_a_channel_name(
    slack: FakeSlack,
) -> None:
    answer = (await call(slack, "chat.postMessage", {"channel": "#alerts", "text": "hi"}))[1]
    assert answer["ok"] and answer["channel"] == CHANNEL
    assert answer["ts"].split(".")[1].isdigit() and len(answer["ts"].split(".")[1]) == 6
    form = await call(slack, "chat.postMessage",
                      {"channel": CHANNEL, "text": "form", "blocks": json.dumps([])}, form=True)
    assert form[1]["ok"]


async def test_update_needs_the_channel_id_and_ts_of_a_message_by_the_same_identity(
    slack: FakeSlack,
) -> None:
    slack.tokens["xoxb-other"] = "B002"
    ts = (await post(slack, text="parent"))["ts"]
    cases = [
        ({"ts": ts, "text": "x"}, AUTH, "channel_not_found"),
        ({"channel": "#alerts", "ts": ts, "text": "x"}, AUTH, "channel_not_found"),
        ({"channel": CHANNEL, "text": "x"}, AUTH, "message_not_found"),
        ({"channel": CHANNEL, "ts": "1.000042", "text": "x"}, AUTH, "message_not_found"),
        ({"channel": CHANNEL, "ts": ts, "text": "x"},
         {"Authorization": "Bearer xoxb-other"}, "cant_update_message"),
        ({"channel": CHANNEL, "ts": ts, "text": "x" * 4001}, AUTH, "msg_too_long"),
    ]
    for args, headers, error in cases:
        answer = (await call(slack, "chat.update", args, headers=headers))[1]
        assert answer.get("error") == error, args
    answer = (await call(slack, "chat.update", {"channel": CHANNEL, "ts": ts, "text": "v2"}))[1]
    assert answer["ok"] and slack.parents()[0].text == "v2"


async def test_throttling_is_429_with_an_integer_retry_after_and_pacing_is_enforced(
    slack: FakeSlack,
) -> None:
    slack.throttle_next, slack.throttle_retry_after = 1, 3
    status, answer, headers = await call(slack, "chat.postMessage",
                                         {"channel": CHANNEL, "text": "x"})
    assert (status, answer, headers["Retry-After"]) == (429, {"ok": False,
                                                             "error": "ratelimited"}, "3")
    slack.enforce_rate = True
    answers = [await post(slack, text=f"m{i}") for i in range(3)]
    assert [a["ok"] for a in answers] == [True, True, False]  # burst of 2 per second


async def test_webhooks_answer_plain_text(slack: FakeSlack) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(slack.webhook_url(), json={"text": "hi"}) as r:
            assert (r.status, await r.text()) == (200, "ok")
        async with session.post(slack.webhook_url(), json={}) as r:
            assert (r.status, await r.text()) == (400, "no_text")
        async with session.post(slack.webhook_url("T0/B0/gone"), json={"text": "x"}) as r:
            assert (r.status, await r.text()) == (404, "no_service")


# -- message metadata and conversations.history ------------------------------------------------

METADATA = {"event_type": "docgen_batch", "event_payload": {"batch_id": "77"}}


@pytest.mark.parametrize(("metadata", "error"), [
    ("{not json", "invalid_metadata_format"),
    (["docgen_batch"], "invalid_metadata_format"),
    ({"event_payload": {"batch_id": "77"}}, "invalid_metadata_schema"),
    ({"event_type": "docgen batch!", "event_payload": {}}, "invalid_metadata_schema"),
    ({"event_type": "docgen_batch", "event_payload": "77"}, "invalid_metadata_schema"),
    ({"event_type": "docgen_batch", "event_payload": {"x": "y" * 9000}}, "metadata_too_large"),
])
async def test_post_message_refuses_metadata_slack_refuses(
    slack: FakeSlack, metadata: Any, error: str
) -> None:
    answer = await post(slack, text="x", metadata=metadata)
    assert (answer["ok"], answer["error"]) == (False, error)
    assert slack.messages == {}


async def test_metadata_is_kept_by_an_update_that_omits_it_and_read_back_only_on_request(
    slack: FakeSlack,
) -> None:
    ts = (await post(slack, text="parent", metadata=METADATA))["ts"]
    form = await call(slack, "chat.postMessage", {"channel": CHANNEL, "text": "form",
                                                  "metadata": json.dumps(METADATA)}, form=True)
    assert form[1]["ok"]
    await call(slack, "chat.update", {"channel": CHANNEL, "ts": ts, "text": "v2"})
    plain = await history(slack)
    assert [m.get("metadata") for m in plain["messages"]] == [None, None]
    full = await history(slack, include_all_metadata="true")
    assert [m["metadata"] for m in full["messages"]] == [METADATA, METADATA]
    assert [m["text"] for m in full["messages"]] == ["form", "v2"]  # newest first
    await call(slack, "chat.update", {"channel": CHANNEL, "ts": ts, "text": "v3",
                                      "metadata": {}})
    assert "metadata" not in (await history(slack, include_all_metadata="1"))["messages"][1]


async def history(slack: FakeSlack, headers: dict[str, str] | None = None,
                  method: str = "conversations.history", **params: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(
        f"{slack.api_url}{method}", params={"channel": CHANNEL, **params},
        headers=headers or AUTH,
    ) as r:
        assert r.status == 200 or r.status == 429
        return {**await r.json(), "_status": r.status, "_retry_after": r.headers.get("Retry-After")}


async def test_history_pages_newest_first_by_cursor_within_exclusive_bounds(
    slack: FakeSlack,
) -> None:
    posted = [(await post(slack, text=f"m{i}"))["ts"] for i in range(7)]
    parent = posted[0]
    await post(slack, text="a reply", thread_ts=parent)  # replies are not in the history
    slack.history_page_cap = 3  # Slack may answer fewer than `limit`
    seen, cursor, pages = [], None, 0
    while True:
        page = await history(slack, oldest=posted[1], limit="5",
                             **({"cursor": cursor} if cursor else {}))
        pages += 1
        seen += [m["text"] for m in page["messages"]]
        if not page["has_more"]:
            assert "response_metadata" not in page
            break
        cursor = page["response_metadata"]["next_cursor"]
    assert seen == ["m6", "m5", "m4", "m3", "m2"] and pages == 2  # m1 is `oldest`: excluded
    inclusive = await history(slack, oldest=posted[1], latest=posted[3], inclusive="true")
    assert [m["text"] for m in inclusive["messages"]] == ["m3", "m2", "m1"]
    for params, error in [({"cursor": "bm9wZQ=="}, "invalid_cursor"),
                          ({"oldest": "yesterday"}, "invalid_ts_oldest"),
                          ({"channel": "#alerts"}, "channel_not_found")]:
        answer = await history(slack, **params)
        assert (answer["ok"], answer["error"]) == (False, error)


async def test_history_needs_its_scope_membership_and_keeps_to_tier_3(slack: FakeSlack) -> None:
    slack.tokens["xoxb-poster"] = "B003"
    slack.scopes["xoxb-poster"] = frozenset({"chat:write"})
    answer = await history(slack, headers={"Authorization": "Bearer xoxb-poster"})
    assert (answer["ok"], answer["error"], answer["needed"], answer["provided"]) == (
        False, "missing_scope", "channels:history", "chat:write")
    slack.not_member.add(CHANNEL)
    assert (await history(slack))["error"] == "not_in_channel"
    slack.not_member.clear()
    slack.history_per_minute = 2
    answers = [await history(slack) for _ in range(3)]
    assert [a["_status"] for a in answers] == [200, 200, 429]
    assert answers[2]["error"] == "ratelimited" and answers[2]["_retry_after"].isdigit()


async def replies(slack: FakeSlack, headers: dict[str, str] | None = None, **params: str) -> Any:
    return await history(slack, headers, "conversations.replies", **params)


async def test_replies_page_a_thread_oldest_first_parent_leading_metadata_on_request(
    slack: FakeSlack,
) -> None:
    parent = (await post(slack, text="parent"))["ts"]
    posted = [(await post(slack, text=f"r{i}", thread_ts=parent, metadata=METADATA))["ts"]
              for i in range(6)]
    await post(slack, text="elsewhere")  # not in the thread
    slack.history_page_cap = 3
    seen, cursor, pages = [], None, 0
    while True:  # a reply's ts names its thread; `oldest` excludes r0
        page = await replies(slack, ts=posted[2], oldest=posted[0], include_all_metadata="true",
                             **({"cursor": cursor} if cursor else {}))
        pages += 1
        seen += [(m["text"], "metadata" in m) for m in page["messages"]]
        if not page["has_more"]:
            break
        cursor = page["response_metadata"]["next_cursor"]
    assert seen == [("parent", False), *((f"r{i}", True) for i in range(1, 6))] and pages == 2
    slack.history_page_cap = 1000
    plain = await replies(slack, ts=parent)
    assert [m.get("metadata") for m in plain["messages"]] == [None] * 7
    assert all(m["thread_ts"] == parent for m in plain["messages"][1:])
    for params, error in [({"ts": "1.000001"}, "thread_not_found"), ({}, "thread_not_found"),
                          ({"ts": parent, "cursor": "bm9wZQ=="}, "invalid_cursor"),
                          ({"ts": parent, "channel": "#alerts"}, "channel_not_found")]:
        answer = await replies(slack, **params)
        assert (answer["ok"], answer["error"]) == (False, error)


async def test_replies_need_the_history_scope_and_keep_to_their_own_tier_3(
    slack: FakeSlack,
) -> None:
    parent = (await post(slack, text="parent"))["ts"]
    slack.tokens["xoxb-poster"] = "B003"
    slack.scopes["xoxb-poster"] = frozenset({"chat:write"})
    answer = await replies(slack, {"Authorization": "Bearer xoxb-poster"}, ts=parent)
    assert (answer["error"], answer["needed"]) == ("missing_scope", "channels:history")
    slack.not_member.add(CHANNEL)
    assert (await replies(slack, ts=parent))["error"] == "not_in_channel"
    slack.not_member.clear()
    slack.replies_per_minute = 2
    answers = [await replies(slack, ts=parent) for _ in range(3)]
    assert [a["_status"] for a in answers] == [200, 200, 429]
    assert answers[2]["error"] == "ratelimited" and answers[2]["_retry_after"].isdigit()
    assert (await history(slack))["_status"] == 200  # conversations.history counts apart
