"""`type: slack`: batch-aware Slack messages.

Bot mode (`token` + `channel`, Web API): one parent message per batch, edited in place with
`chat.update` as the batch progresses (counts, progress bar, elapsed time, template and output
type), failed and completed-with-error jobs posted as thread replies, several jobs per reply.
The (batch -> channel, ts) mapping lives in the store, so after a restart the same thread goes
on. Edits are coalesced by grouping (`group_by: [batch]`, at most one flush per batch every
`group_interval`); posts to the channel are paced to Slack's one message per second.

A batch never gets a second parent, even when the process dies after Slack accepted the post
and before its ts was saved (Slack has no idempotency key): the post is recorded as started
first and carries message metadata (`event_type: docgen_batch`, the batch id and notifier
name); a later attempt that finds a start without a ts looks the message up in
`conversations.history` (`include_all_metadata`, from the first start on) before posting again.
Thread replies the same way: each reply carries metadata naming the events it announces (and a
key derived from them), is recorded as started before it is posted, and is forgotten in the
transaction that marks its events delivered. A send that finds a reply of the batch still in
doubt reads the thread (`conversations.replies`, from the earliest start on), adopts every
event a reply of ours already announced, and posts only the rest.

A failing parent edit never holds the thread back: the replies go on, the events the edit
shows are settled, and the edit waits in the store (its latest content) for its own retry, by
a timer of this notifier with its own backoff, or by the batch's next send, until the parent
shows the newest text. An edit Slack can never accept (the parent deleted, not ours) is
abandoned with an error log.

Webhook mode (`webhook_url`): one grouped summary per flush; webhooks cannot edit or thread.

Transport: plain aiohttp rather than `slack_sdk`'s async clients. The wire is two JSON POSTs;
the SDK's 429 handler sleeps inside the call (blocking this notifier's worker instead of letting
the dispatcher reschedule durably) and raises on a fractional Retry-After, and its proxy loader
reads HTTPS_PROXY but ignores NO_PROXY. The daemon already owns one aiohttp session per notifier.

Untrusted text is escaped for mrkdwn by the templates (see `render.py`); `link_names` and
`parse` are never sent, unfurling is off."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
import structlog
from pydantic import Field, SecretStr, field_validator, model_validator

from monitor.config import DurationS
from monitor.model import Event
from monitor.notify.base import DeliveryResult, GroupField, HttpNotifier, NotifierConfig
from monitor.notify.render import (
    RISE_TEMPLATE,
    BatchView,
    Templates,
    by_batch,
    cap,
    escape_mrkdwn,
    event_state,
    failure_lines,
    is_failure,
    rise_context,
    sample_context,
    sample_rise,
    template_events,
)
from monitor.notify.webhook import parse_retry_after_s
from monitor.store.base import ThreadRef

# Slack's documented limits (shared/slack-api/FACTS.md §6).
MAX_TEXT_CHARS = 4000  # top-level `text` (chat.update's documented msg_too_long threshold)
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150
MAX_BLOCKS = 50
UPDATE_INTERVAL_S = 1.2  # Tier 3 methods (below): 50 a minute
TIER3_METHODS = frozenset({"chat.update", "conversations.history", "conversations.replies"})

# The parent's and the replies' message metadata, and their lookup after an unfinished post:
# pages of 200 from the first start on (less a margin for the skew between our clock and
# Slack's ts), at most 10.
METADATA_EVENT_TYPE = "docgen_batch"
REPLY_EVENT_TYPE = "docgen_batch_reply"
LOOKUP_PAGE_LIMIT = 200
LOOKUP_MAX_PAGES = 10
LOOKUP_MARGIN_S = 60.0
# Answers that mean the lookup cannot work for this token or channel (no channels:history,
# a channel name instead of an id, the thread gone): posting again is the lesser harm than
# never posting.
LOOKUP_UNAVAILABLE = frozenset(
    {"missing_scope", "not_in_channel", "channel_not_found", "not_allowed_token_type",
     "thread_not_found"}
)
# Answers after which a post may still have been stored (besides no answer, a dropped
# connection or a 5xx, which carry no code): `fatal_error` may have done part of the work.
IN_DOUBT_ANSWERS = frozenset({None, "fatal_error", "not JSON", "None"})
# A failed parent edit: its own backoff, abandoned after a day or for an answer no retry
# changes (the parent was deleted, is not ours, or the workspace forbids edits).
EDIT_RETRY_INITIAL_S = 2.0
EDIT_RETRY_MAX_S = 300.0
EDIT_GIVE_UP_S = 86_400.0
EDIT_RECHECK_S = 30.0
EDIT_PERMANENT = frozenset(
    {"message_not_found", "cant_update_message", "edit_window_closed", "is_inactive"}
)

log = structlog.get_logger(__name__)


class SlackError(Exception):
    def __init__(
        self,
        detail: str,
        retry_after_s: float | None = None,
        *,
        limited: bool = False,
        code: str | None = None,
    ):
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.limited = limited
        self.code = code  # Slack's `error` of an ok:false answer


class SlackConfig(NotifierConfig):
    type: Literal["slack"] = "slack"
    token: SecretStr | None = None
    channel: str | None = Field(None, min_length=1)
    api_url: str = "https://slack.com/api/"
    webhook_url: SecretStr | None = None  # the URL is the credential
    template_dir: str | None = None
    # Failed jobs a thread reply announces, listed by error signature (one section block per
    # signature). At most 100: the reply's metadata names each job's event (~50 bytes a job).
    failures_per_reply: int = Field(50, ge=1, le=100)
    reply_wait: DurationS = 60.0  # how long a failure may wait for company in a reply
    post_interval: DurationS = 1.0  # between posts to the channel
    max_failures_in_summary: int = Field(10, ge=1, le=40)  # webhook mode
    group_by: list[GroupField] | None = ["batch"]  # noqa: RUF012 (pydantic copies it)
    group_wait: DurationS = 2.0
    group_interval: DurationS = 5.0  # at most one edit per batch this often

    @field_validator("api_url")
    @classmethod
    def _slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _one_mode(self) -> SlackConfig:
        bot = self.token is not None or self.channel is not None
        if bot and self.webhook_url is not None:
            raise ValueError("give either token + channel (bot) or webhook_url, not both")
        if bot and (self.token is None or self.channel is None):
            raise ValueError("bot mode needs both token and channel")
        if not bot and self.webhook_url is None:
            raise ValueError("give token + channel (bot mode) or webhook_url")
        return self


def reply_key(event_ids: Sequence[str]) -> str:
    """A stable name for the reply announcing these events (the same events, the same key)."""
    return hashlib.sha256("\n".join(event_ids).encode()).hexdigest()[:16]


def announced_ids(payload: dict[str, Any]) -> set[str]:
    """The event ids a reply's metadata payload names (a JSON list in a string); none when
    the payload is not one of ours as written."""
    try:
        ids = orjson.loads(payload.get("event_ids") or "[]")
    except (orjson.JSONDecodeError, TypeError):
        return set()
    return {i for i in ids if isinstance(i, str)} if isinstance(ids, list) else set()


def section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": cap(text, MAX_SECTION_CHARS)}}


class SlackNotifier(HttpNotifier):
    type_name: ClassVar[str] = "slack"
    config_model: ClassVar[type[NotifierConfig]] = SlackConfig
    config: SlackConfig

    def __init__(self, config: NotifierConfig, *, timeout_s: float) -> None:
        super().__init__(config, timeout_s=timeout_s)
        self.templates = Templates(self.config.template_dir)
        self._last_call_at: dict[str, float] = {}  # Web API method -> monotonic time
        self._last_parent: dict[str, str] = {}  # batch id -> text last written (skip no-ops)
        # Parent edits that failed: batch id -> (failures, monotonic time of the next retry).
        self._edits: dict[str, tuple[int, float]] = {}
        self._edits_loaded = False  # the store's pending edits read since start
        self._edit_lock = asyncio.Lock()  # one parent edit at a time: never an older text last
        self._edit_wake = asyncio.Event()
        self._edit_task: asyncio.Task[None] | None = None
        self.calls = 0

    @property
    def bot(self) -> bool:
        return self.config.token is not None

    def check_templates(self) -> list[str]:
        context = sample_context(max_failures=1)
        names = ["slack_title.j2", "slack_parent.j2", "slack_summary.j2"]
        problems = self.templates.check([("mrkdwn", n) for n in names], context)
        for group in context["failure_groups"]:
            problems += self.templates.check([("mrkdwn", "slack_failure.j2")], {"group": group})
        problems += self.templates.check([("mrkdwn", RISE_TEMPLATE)], rise_context(sample_rise()))
        return problems

    async def start(self) -> None:
        await super().start()
        if self.bot and self._edit_task is None:
            self._edit_task = asyncio.create_task(
                self._retry_edits_forever(), name=f"slack-edits:{self.name}"
            )

    async def close(self) -> None:
        task, self._edit_task = self._edit_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().close()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, events: Sequence[Event]) -> DeliveryResult:
        settled: set[str] = set()
        held: set[str] = set()
        details = []
        rises: list[str] = []
        for batch_id, batch_events in by_batch(events).items():
            try:
                if self.bot:
                    held |= await self._bot_batch(batch_id, batch_events, settled)
                else:
                    await self._summary(batch_id, batch_events)
                    settled |= {e.id for e in batch_events}
            except SlackError as exc:
                return DeliveryResult.failed(
                    exc.detail,
                    exc.retry_after_s,
                    rate_limited=exc.limited,
                    settled=settled,
                    held=held,
                )
            details.append(batch_id)
        for event in template_events(events):
            try:
                await self._rise(event)
            except SlackError as exc:
                return DeliveryResult.failed(exc.detail, exc.retry_after_s,
                                             rate_limited=exc.limited, settled=settled,
                                             held=held)
            settled.add(event.id)
            rises.append(event.template_file_id or "")
        detail = f"batch(es) {', '.join(details)}" if details else ""
        if rises:
            detail += f"{'; ' if detail else ''}template(s) {', '.join(rises)}"
        return DeliveryResult.delivered(detail, held=held)

    async def _rise(self, event: Event) -> None:
        """A `template.failure_rate_rose`: a message of its own in the channel (no batch,
        no thread). Slack offers no idempotency key: a post whose answer was lost is posted
        again on retry (at least once)."""
        assert event.template is not None
        text = self.templates.render("mrkdwn", RISE_TEMPLATE, rise_context(event.template))
        text = cap(f":chart_with_upwards_trend: {text}", MAX_TEXT_CHARS)
        if self.bot:
            await self._api("chat.postMessage", {"channel": self.config.channel, "text": text,
                                                 "blocks": [section(text)]})
        else:
            assert self.config.webhook_url is not None
            await self._pace()
            await self._post(self.config.webhook_url.get_secret_value(), {"text": text}, None)

    async def _bot_batch(self, batch_id: str, events: list[Event], settled: set[str]) -> set[str]:
        """Parent post or edit, then thread replies; returns the failures held for later."""
        view = await self.batch_view(batch_id, events)
        content = self._parent_content(view)
        thread = await self.store.get_thread(self.name, batch_id) if self.store else None
        if thread is None:
            thread = await self._post_parent(batch_id, content)
        elif self._last_parent.get(batch_id) != content["text"]:
            await self._edit_parent(batch_id, thread, content)
        failures = [e for e in events if is_failure(e)]
        shown = {e.id for e in events if not is_failure(e)}
        await self.settle(shown)
        settled |= shown
        if failures:
            adopted = await self._adopt_replies(batch_id, thread)
            settled |= {e.id for e in failures if e.id in adopted}
            failures = [e for e in failures if e.id not in adopted]
        # Replies carry `failures_per_reply` jobs; a short remainder waits for company unless
        # the batch is done or the oldest failure has waited `reply_wait`.
        per = self.config.failures_per_reply
        oldest = min((e.detected_at.timestamp() for e in failures), default=time.time())
        flush_all = view.complete or time.time() - oldest >= self.config.reply_wait
        cut = len(failures) if flush_all else len(failures) - len(failures) % per
        for start in range(0, cut, per):
            chunk = failures[start : start + per]
            await self._reply(batch_id, thread, view, chunk)
            settled |= {e.id for e in chunk}
        if view.complete:
            self._last_parent.pop(batch_id, None)  # bounded: only batches still running
        return {e.id for e in failures[cut:]}

    def _parent_content(self, view: BatchView) -> dict[str, Any]:
        context = view.context()
        title = cap(self.templates.render("mrkdwn", "slack_title.j2", context), MAX_HEADER_CHARS)
        body = self.templates.render("mrkdwn", "slack_parent.j2", context)
        return {
            "text": cap(f"{title}\n{body}", MAX_TEXT_CHARS),
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": title}},
                section(body),
            ],
        }

    # -- the parent: one post, ever ---------------------------------------------------------

    async def _post_parent(self, batch_id: str, content: dict[str, Any]) -> ThreadRef:
        """Post the parent, unless an earlier unfinished post reached Slack: then adopt it."""
        if self.store is not None:
            started_at = await self.store.start_thread_post(self.name, batch_id, time.time())
            if started_at is not None:
                found = await self._find_parent(batch_id, started_at)
                if found is not None:
                    thread, shown = found
                    log.info("slack_parent_recovered", notifier=self.name, batch_id=batch_id,
                             ts=thread.ts)
                    thread = await self.store.save_thread(self.name, batch_id, thread)
                    self._last_parent[batch_id] = shown
                    if shown != content["text"]:
                        await self._edit_parent(batch_id, thread, content)
                    return thread
        metadata = {
            "event_type": METADATA_EVENT_TYPE,
            "event_payload": {"batch_id": batch_id, "notifier": self.name},
        }
        answer = await self._api(
            "chat.postMessage", {"channel": self.config.channel, **content, "metadata": metadata}
        )
        thread = ThreadRef(str(answer["channel"]), str(answer["ts"]))
        if self.store is not None:
            thread = await self.store.save_thread(self.name, batch_id, thread)
        self._last_parent[batch_id] = content["text"]
        return thread

    async def _find_parent(
        self, batch_id: str, started_at: float
    ) -> tuple[ThreadRef, str] | None:
        """The parent an unfinished post left in the channel (by its metadata), and its text;
        None when there is none, or when this token or channel cannot read the history."""
        channel = str(self.config.channel)
        params = {"channel": channel, "oldest": f"{started_at - LOOKUP_MARGIN_S:.6f}"}
        found = await self._lookup(
            "conversations.history", params, batch_id,
            lambda m: self._ours(m, METADATA_EVENT_TYPE, batch_id) is not None,
            what="parent", first=True,
        )
        if not found:
            return None
        return ThreadRef(channel, str(found[0]["ts"])), str(found[0].get("text", ""))

    async def _lookup(
        self,
        method: str,
        params: dict[str, str],
        batch_id: str,
        keep: Callable[[dict[str, Any]], bool],
        *,
        what: Literal["parent", "reply"],
        first: bool = False,
    ) -> list[dict[str, Any]] | None:
        """The messages `keep` accepts on the pages of a read `method` (with metadata, at most
        `LOOKUP_MAX_PAGES`; with `first`, up to the first page holding one); None when this
        token or channel cannot read them. A transient failure raises: the send is retried,
        the lookup with it."""
        params = {**params, "include_all_metadata": "true", "limit": str(LOOKUP_PAGE_LIMIT)}
        found: list[dict[str, Any]] = []
        for _ in range(LOOKUP_MAX_PAGES):
            try:
                answer = await self._api(method, params, read=True)
            except SlackError as exc:
                if exc.code not in LOOKUP_UNAVAILABLE:
                    raise
                log.warning(f"slack_{what}_lookup_unavailable", notifier=self.name,
                            batch_id=batch_id, error=exc.detail,
                            hint="give the bot channels:history and `channel` as an id")
                return None
            found += [m for m in answer.get("messages") or [] if isinstance(m, dict) and keep(m)]
            cursor = (answer.get("response_metadata") or {}).get("next_cursor")
            if (first and found) or not answer.get("has_more") or not cursor:
                return found
            params = {**params, "cursor": str(cursor)}
        log.warning(f"slack_{what}_lookup_truncated", notifier=self.name,
                    batch_id=batch_id, pages=LOOKUP_MAX_PAGES)
        return found

    def _ours(
        self, message: dict[str, Any], event_type: str, batch_id: str
    ) -> dict[str, Any] | None:
        """The metadata payload of a message this notifier posted for `batch_id` as
        `event_type`, else None."""
        metadata = message.get("metadata")
        if not isinstance(metadata, dict) or metadata.get("event_type") != event_type:
            return None
        payload = metadata.get("event_payload")
        if (isinstance(payload, dict) and payload.get("batch_id") == batch_id
                and payload.get("notifier") == self.name):
            return payload
        return None

    # -- the parent's edits: retried on their own -------------------------------------------

    async def _edit_parent(
        self, batch_id: str, thread: ThreadRef, content: dict[str, Any], since: float | None = None
    ) -> bool:
        """Edit the parent; a failure is kept as a pending edit, never raised. Call it only
        without `_edit_lock` held (`_retry_due_edits` holds it and calls `_try_edit`)."""
        async with self._edit_lock:
            return await self._try_edit(batch_id, thread, content, since)

    async def _try_edit(
        self, batch_id: str, thread: ThreadRef, content: dict[str, Any], since: float | None
    ) -> bool:
        try:
            await self._api("chat.update", {"channel": thread.channel, "ts": thread.ts, **content})
        except SlackError as exc:
            await self._edit_failed(batch_id, content, exc, since)
            return False
        self._last_parent[batch_id] = content["text"]
        if self.store is not None and (batch_id in self._edits or not self._edits_loaded):
            await self.store.clear_pending_edit(self.name, batch_id)
        if self._edits.pop(batch_id, None) is not None:
            log.info("slack_parent_edit_recovered", notifier=self.name, batch_id=batch_id)
        return True

    async def _edit_failed(
        self, batch_id: str, content: dict[str, Any], exc: SlackError, since: float | None
    ) -> None:
        # A throttle is a wait, not a failure: it neither grows the backoff nor counts.
        failures = self._edits.get(batch_id, (0, 0.0))[0] + (0 if exc.limited else 1)
        self._last_parent.pop(batch_id, None)  # the parent shows something older
        too_long = since is not None and time.time() - since > EDIT_GIVE_UP_S
        if exc.code in EDIT_PERMANENT or too_long:
            log.error("slack_parent_edit_abandoned", notifier=self.name, batch_id=batch_id,
                      error=exc.detail, attempts=failures)
            self._edits.pop(batch_id, None)
            if self.store is not None:
                await self.store.clear_pending_edit(self.name, batch_id)
            return
        if exc.limited:
            delay_s = min(exc.retry_after_s or 1.0, EDIT_RETRY_MAX_S)
        else:
            delay_s = min(EDIT_RETRY_MAX_S, EDIT_RETRY_INITIAL_S * 2.0 ** max(failures - 1, 0))
            if exc.retry_after_s is not None:
                delay_s = max(delay_s, min(exc.retry_after_s, EDIT_RETRY_MAX_S))
        self._edits[batch_id] = (failures, time.monotonic() + delay_s)
        if self.store is not None:
            content_json = orjson.dumps(content).decode()
            await self.store.set_pending_edit(self.name, batch_id, content_json, time.time())
        self._edit_wake.set()
        log.warning("slack_parent_edit_failed", notifier=self.name, batch_id=batch_id,
                    error=exc.detail, attempts=failures, retry_in_s=round(delay_s, 3))

    async def _retry_edits_forever(self) -> None:
        while True:
            self._edit_wake.clear()
            try:
                wait_s = await self._retry_due_edits()
            except Exception:
                log.exception("slack_parent_edit_retry_failed", notifier=self.name)
                wait_s = EDIT_RECHECK_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._edit_wake.wait(), wait_s)

    async def _retry_due_edits(self) -> float:
        """Retry every parent edit that is due (after a restart: all of them, at once); the
        seconds until the next one is due."""
        if self.store is None:
            return EDIT_RECHECK_S
        async with self._edit_lock:
            pending = await self.store.pending_edits(self.name)
            self._edits_loaded = True
            for edit in pending:
                now = time.monotonic()
                _, due = self._edits.setdefault(edit.batch_id, (edit.attempts, now))
                if due <= now:
                    content = orjson.loads(edit.content)
                    await self._try_edit(edit.batch_id, edit.thread, content, edit.failing_since)
        next_due = min((due for _, due in self._edits.values()), default=None)
        if next_due is None:
            return EDIT_RECHECK_S
        return min(max(next_due - time.monotonic(), 0.0), EDIT_RECHECK_S)

    # -- thread replies ---------------------------------------------------------------------

    async def _reply(
        self, batch_id: str, thread: ThreadRef, view: BatchView, chunk: list[Event]
    ) -> None:
        """Post one reply; its events are delivered, and its start forgotten, in one store
        transaction once Slack accepted it. The metadata lets a later send find it when the
        process died (or the answer was lost) in between."""
        event_ids = [e.id for e in chunk]
        key = reply_key(event_ids)
        if self.store is not None:
            await self.store.start_reply_post(self.name, batch_id, key, time.time())
        # The ids travel as one JSON string: Slack's payload schema types a value as a string,
        # a number, a boolean or object(s), not a list of strings.
        metadata = {
            "event_type": REPLY_EVENT_TYPE,
            "event_payload": {"batch_id": batch_id, "notifier": self.name, "reply_key": key,
                              "event_ids": orjson.dumps(event_ids).decode()},
        }
        # The jobs these events announce, one line per error signature: each failure reaches
        # the thread exactly once.
        parts = [
            self.templates.render("mrkdwn", "slack_failure.j2", {"group": group})
            for group in failure_lines(event_state(e) for e in chunk)
        ]
        if len(parts) > MAX_BLOCKS:
            more = len(parts) - MAX_BLOCKS + 1
            parts[MAX_BLOCKS - 1 :] = [f"_… and {more} more kinds of failure_"]
        blocks = [section(p) for p in parts]
        text = cap(f"{len(chunk)} failed job(s) in batch {escape_mrkdwn(view.id)}:\n"
                   + "\n".join(parts), MAX_TEXT_CHARS)
        try:
            await self._api(
                "chat.postMessage",
                {"channel": thread.channel, "thread_ts": thread.ts, "text": text,
                 "blocks": blocks, "metadata": metadata},
            )
        except SlackError as exc:
            # A 429 or an ok:false answer says Slack stored nothing: no reply is in doubt. A
            # timeout, a dropped connection or a 5xx leaves it in doubt for the next send.
            if self.store is not None and (exc.limited or exc.code not in IN_DOUBT_ANSWERS):
                await self.store.finish_reply_posts(self.name, batch_id, [key], [])
            raise
        if self.store is not None:
            await self.store.finish_reply_posts(self.name, batch_id, [key], event_ids)

    async def _adopt_replies(self, batch_id: str, thread: ThreadRef) -> set[str]:
        """The events that replies still in doubt (started, never recorded) already announced
        in the thread: marked delivered, never posted again. Empty when none is in doubt; when
        the thread cannot be read, the replies are posted again (and said so)."""
        if self.store is None:
            return set()
        since = await self.store.reply_posts_in_doubt(self.name, batch_id)
        if since is None:
            return set()
        params = {"channel": thread.channel, "ts": thread.ts,
                  "oldest": f"{since - LOOKUP_MARGIN_S:.6f}"}
        found = await self._lookup(
            "conversations.replies", params, batch_id,
            lambda m: self._ours(m, REPLY_EVENT_TYPE, batch_id) is not None, what="reply",
        )
        announced: set[str] = set()
        for message in found or []:
            announced |= announced_ids(self._ours(message, REPLY_EVENT_TYPE, batch_id) or {})
        # Every reply in doubt is settled now: found (adopted), or never stored (posted again).
        await self.store.finish_reply_posts(self.name, batch_id, None, sorted(announced))
        if found is not None:
            log.info("slack_replies_recovered", notifier=self.name, batch_id=batch_id,
                     replies=len(found), events=len(announced))
        return announced

    async def _summary(self, batch_id: str, events: list[Event]) -> None:
        view = await self.batch_view(batch_id, events)
        context = view.context(max_failures=self.config.max_failures_in_summary)
        text = cap(self.templates.render("mrkdwn", "slack_summary.j2", context), MAX_TEXT_CHARS)
        assert self.config.webhook_url is not None
        await self._pace()
        await self._post(self.config.webhook_url.get_secret_value(), {"text": text}, None)

    # -- transport --------------------------------------------------------------------------

    async def _pace(self, method: str = "chat.postMessage") -> None:
        """Slack allows about one message per second per channel (and per webhook), and
        chat.update is Tier 3 (about 50 a minute per token), whatever the number of batches."""
        interval_s = UPDATE_INTERVAL_S if method in TIER3_METHODS else self.config.post_interval
        wait_s = self._last_call_at.get(method, 0.0) + interval_s - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        self._last_call_at[method] = time.monotonic()

    async def _api(self, method: str, payload: dict[str, Any], *, read: bool = False) -> Any:
        """One Web API call: a JSON POST, or for a `read` method a GET with query parameters
        (the documented way for conversations.history and conversations.replies)."""
        await self._pace(method)
        if method == "chat.postMessage":
            payload = {**payload, "unfurl_links": False, "unfurl_media": False}
        assert self.config.token is not None
        answer = await self._post(
            self.config.api_url + method, payload, self.config.token.get_secret_value(),
            read=read,
        )
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            error = answer.get("error") if isinstance(answer, dict) else "not JSON"
            raise SlackError(f"{method}: {error}", code=str(error))
        return answer

    async def _post(
        self, url: str, payload: dict[str, Any], token: str | None, *, read: bool = False
    ) -> Any:
        session = await self.session()
        self.calls += 1
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        if read:
            request = session.get(url, params=payload, headers=headers)
        else:
            headers["Content-Type"] = "application/json; charset=utf-8"
            request = session.post(url, data=orjson.dumps(payload), headers=headers)
        try:
            async with request as r:
                raw = await r.read()
                retry_after = parse_retry_after_s(r.headers.get("Retry-After"))
                if r.status == 429:
                    raise SlackError("rate limited (HTTP 429)", retry_after or 1.0, limited=True)
                text = raw.decode(errors="replace")
                if r.status != 200:
                    raise SlackError(f"HTTP {r.status}: {cap(text, 200)}", retry_after)
                if token is None:  # webhook: plain-text "ok"
                    if text.strip() != "ok":
                        raise SlackError(f"webhook answered {cap(text, 200)!r}")
                    return {"ok": True}
                return orjson.loads(raw)
        except TimeoutError:
            raise SlackError(f"no answer within {self.timeout_s:g}s") from None
        except orjson.JSONDecodeError:
            raise SlackError("answer is not JSON") from None
        except aiohttp.ClientError as exc:
            # aiohttp's message can hold the URL (a webhook URL is a secret): only the kind
            raise SlackError(f"connection failed: {type(exc).__name__}") from None

