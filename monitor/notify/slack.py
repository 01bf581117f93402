"""`type: slack`: batch-aware Slack messages.

Bot mode (`token` + `channel`, Web API): one parent message per batch, edited in place with
`chat.update` as the batch progresses (counts, progress bar, elapsed time, template and output
type), failed and completed-with-error jobs posted as thread replies, several jobs per reply.
The (batch -> channel, ts) mapping lives in the store, so after a restart the same thread goes
on and a batch never gets a second parent. Edits are coalesced by grouping (`group_by: [batch]`,
at most one flush per batch every `group_interval`); posts to the channel are paced to Slack's
one message per second.

Webhook mode (`webhook_url`): one grouped summary per flush; webhooks cannot edit or thread.

Transport: plain aiohttp rather than `slack_sdk`'s async clients. The wire is two JSON POSTs;
the SDK's 429 handler sleeps inside the call (blocking this notifier's worker instead of letting
the dispatcher reschedule durably) and raises on a fractional Retry-After, and its proxy loader
reads HTTPS_PROXY but ignores NO_PROXY. The daemon already owns one aiohttp session per notifier.

Untrusted text is escaped for mrkdwn by the templates (see `render.py`); `link_names` and
`parse` are never sent, unfurling is off."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from monitor.config import DurationS
from monitor.model import Event
from monitor.notify.base import DeliveryResult, GroupField, HttpNotifier, NotifierConfig
from monitor.notify.render import (
    BatchView,
    Templates,
    by_batch,
    cap,
    escape_mrkdwn,
    failed_job,
    is_failure,
    load_batch_view,
    sample_context,
)
from monitor.notify.webhook import parse_retry_after_s
from monitor.store.base import ThreadRef

# Slack's documented limits (shared/slack-api/FACTS.md §6).
MAX_TEXT_CHARS = 4000  # top-level `text` (chat.update's documented msg_too_long threshold)
MAX_SECTION_CHARS = 3000
MAX_HEADER_CHARS = 150
MAX_BLOCKS = 50
UPDATE_INTERVAL_S = 1.2  # chat.update: Tier 3, 50 a minute


class SlackError(Exception):
    def __init__(self, detail: str, retry_after_s: float | None = None, *, limited: bool = False):
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.limited = limited


class SlackConfig(NotifierConfig):
    type: Literal["slack"] = "slack"
    token: SecretStr | None = None
    channel: str | None = Field(None, min_length=1)
    api_url: str = "https://slack.com/api/"
    webhook_url: SecretStr | None = None  # the URL is the credential
    template_dir: str | None = None
    failures_per_reply: int = Field(10, ge=1, le=40)  # one section block per job, < 50 blocks
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
        self.calls = 0

    @property
    def bot(self) -> bool:
        return self.config.token is not None

    def check_templates(self) -> list[str]:
        context = sample_context(max_failures=1)
        names = ["slack_title.j2", "slack_parent.j2", "slack_summary.j2"]
        problems = self.templates.check([("mrkdwn", n) for n in names], context)
        for job in context["failures"]:
            problems += self.templates.check([("mrkdwn", "slack_failure.j2")], {"job": job})
        return problems

    # -- sending ----------------------------------------------------------------------------

    async def send(self, events: Sequence[Event]) -> DeliveryResult:
        settled: set[str] = set()
        held: set[str] = set()
        details = []
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
        return DeliveryResult.delivered(f"batch(es) {', '.join(details)}", held=held)

    async def _bot_batch(self, batch_id: str, events: list[Event], settled: set[str]) -> set[str]:
        """Parent post or edit, then thread replies; returns the failures held for later."""
        view = await load_batch_view(self.store, batch_id, events)
        context = view.context()
        title = cap(self.templates.render("mrkdwn", "slack_title.j2", context), MAX_HEADER_CHARS)
        body = self.templates.render("mrkdwn", "slack_parent.j2", context)
        blocks = [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            section(body),
        ]
        text = cap(f"{title}\n{body}", MAX_TEXT_CHARS)
        thread = await self.store.get_thread(self.name, batch_id) if self.store else None
        if thread is None:
            answer = await self._api(
                "chat.postMessage",
                {"channel": self.config.channel, "text": text, "blocks": blocks},
            )
            thread = ThreadRef(str(answer["channel"]), str(answer["ts"]))
            if self.store is not None:
                thread = await self.store.save_thread(self.name, batch_id, thread)
            self._last_parent[batch_id] = text
        elif self._last_parent.get(batch_id) != text:
            await self._api(
                "chat.update",
                {"channel": thread.channel, "ts": thread.ts, "text": text, "blocks": blocks},
            )
            self._last_parent[batch_id] = text
        failures = [e for e in events if is_failure(e)]
        shown = {e.id for e in events if not is_failure(e)}
        await self.settle(shown)
        settled |= shown
        # Replies carry `failures_per_reply` jobs; a short remainder waits for company unless
        # the batch is done or the oldest failure has waited `reply_wait`.
        per = self.config.failures_per_reply
        oldest = min((e.detected_at.timestamp() for e in failures), default=time.time())
        flush_all = view.complete or time.time() - oldest >= self.config.reply_wait
        cut = len(failures) if flush_all else len(failures) - len(failures) % per
        for start in range(0, cut, per):
            chunk = failures[start : start + per]
            await self._reply(thread, view, chunk)
            await self.settle(e.id for e in chunk)
            settled |= {e.id for e in chunk}
        if view.complete:
            self._last_parent.pop(batch_id, None)  # bounded: only batches still running
        return {e.id for e in failures[cut:]}

    async def _reply(self, thread: ThreadRef, view: BatchView, chunk: list[Event]) -> None:
        # The jobs these events announce: each failure reaches the thread exactly once.
        parts = [
            self.templates.render("mrkdwn", "slack_failure.j2", {"job": failed_job(e)})
            for e in chunk
        ]
        blocks = [section(p) for p in parts[:MAX_BLOCKS]]
        text = cap(f"{len(parts)} failed job(s) in batch {escape_mrkdwn(view.id)}:\n"
                   + "\n".join(parts), MAX_TEXT_CHARS)
        await self._api(
            "chat.postMessage",
            {"channel": thread.channel, "thread_ts": thread.ts, "text": text, "blocks": blocks},
        )

    async def _summary(self, batch_id: str, events: list[Event]) -> None:
        view = await load_batch_view(self.store, batch_id, events)
        context = view.context(max_failures=self.config.max_failures_in_summary)
        text = cap(self.templates.render("mrkdwn", "slack_summary.j2", context), MAX_TEXT_CHARS)
        assert self.config.webhook_url is not None
        await self._pace()
        await self._post(self.config.webhook_url.get_secret_value(), {"text": text}, None)

    # -- transport --------------------------------------------------------------------------

    async def _pace(self, method: str = "chat.postMessage") -> None:
        """Slack allows about one message per second per channel (and per webhook), and
        chat.update is Tier 3 (about 50 a minute per token), whatever the number of batches."""
        interval_s = self.config.post_interval if method != "chat.update" else UPDATE_INTERVAL_S
        wait_s = self._last_call_at.get(method, 0.0) + interval_s - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        self._last_call_at[method] = time.monotonic()

    async def _api(self, method: str, payload: dict[str, Any]) -> Any:
        await self._pace(method)
        payload = {**payload, "unfurl_links": False, "unfurl_media": False}
        if method == "chat.update":
            del payload["unfurl_links"], payload["unfurl_media"]
        assert self.config.token is not None
        answer = await self._post(
            self.config.api_url + method, payload, self.config.token.get_secret_value()
        )
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            error = answer.get("error") if isinstance(answer, dict) else "not JSON"
            raise SlackError(f"{method}: {error}")
        return answer

    async def _post(self, url: str, payload: dict[str, Any], token: str | None) -> Any:
        session = await self.session()
        self.calls += 1
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with session.post(url, data=orjson.dumps(payload), headers=headers) as r:
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

