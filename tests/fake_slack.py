"""A local fake of Slack's Web API (`chat.postMessage`, `chat.update`, `conversations.history`,
`conversations.replies`, `auth.test`) and incoming webhooks that enforces what Slack enforces
(shared/slack-api/FACTS.md, "Notes for a faithful fake"): bearer auth, scopes, content types,
channel ids, Block Kit and text limits, `chat.update` needing the channel id and ts of an
existing message by the same identity, `thread_ts` naming a parent as a string, per-channel
pacing, and 429 with an integer Retry-After. Every request is recorded.

Message metadata and history, as Slack's method reference describes them (slack-api-ref,
`docs.slack.dev/methods/chat.postMessage.json` and `conversations.history.json`):
- `metadata` is an object `{event_type, event_payload}`, or that object as a JSON string (the
  form encoding): unparseable or not an object is `invalid_metadata_format`; a missing or
  non-alphanumeric `event_type` or a non-object `event_payload` is `invalid_metadata_schema`;
  over `metadata_limit_bytes` (Slack's limit is undocumented) is `metadata_too_large`.
  `chat.update` keeps omitted metadata; an empty object clears it.
- `conversations.history` (GET or POST) needs `channels:history` (`groups:history` for a private
  channel), answering `missing_scope` with `needed` and `provided`; a channel id (a name is
  `channel_not_found`) the bot is a member of (`not_in_channel`). Top-level messages, newest
  first; `oldest` and `latest` are exclusive unless `inclusive`; `limit` defaults to 100, at most
  999, and a page may hold fewer (`history_page_cap`); paging by `cursor` =
  `response_metadata.next_cursor` while `has_more`. Metadata only with `include_all_metadata`.
  Tier 3: `history_per_minute` calls per token per minute, then 429 with Retry-After.
- `conversations.replies` (`docs.slack.dev/methods/conversations.replies.json`; GET or POST) has
  the same scopes, channel and membership answers, and needs `ts`: the thread's parent or any
  message in it (a ts that names no message in the channel, or none, is `thread_not_found`).
  The thread oldest first, its parent leading the first page (as in Slack's example answer;
  whether `oldest` can exclude the parent is not documented, so here it never does); `oldest`
  and `latest` as above; `limit` defaults to 1000, at most 1000 (`history_page_cap` applies);
  paging by cursor while `has_more`; metadata only with `include_all_metadata`. Tier 3 on its
  own: `replies_per_minute` calls per token per minute, then 429 with Retry-After.

Used by the notifier tests and the e2e test; lives in tests/ because the product never needs it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

TEXT_LIMIT = 4000
SECTION_LIMIT = 3000
HEADER_LIMIT = 150
BLOCK_LIMIT = 50
CONTROL_SEQUENCES = ("<!channel>", "<!here>", "<!everyone>", "<!subteam^", "<@", "<http")
BOT_SCOPES = frozenset({"chat:write", "channels:history", "groups:history"})
HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 999
REPLIES_DEFAULT_LIMIT = 1000
REPLIES_MAX_LIMIT = 1000
EVENT_TYPE = re.compile(r"[A-Za-z0-9_]+")


@dataclass
class Recorded:
    method: str  # "chat.postMessage", "chat.update", "auth.test", "webhook"
    headers: dict[str, str]
    body: bytes
    args: dict[str, Any]
    status: int
    answer: Any


@dataclass
class Message:
    channel: str
    ts: str
    author: str
    text: str
    blocks: list[dict[str, Any]] | None
    thread_ts: str | None
    metadata: dict[str, Any] | None = None
    edits: int = 0


@dataclass
class FakeSlack:
    tokens: dict[str, str] = field(default_factory=lambda: {"xoxb-test": "B001"})
    channels: dict[str, str] = field(default_factory=lambda: {"C0123456789": "alerts"})
    webhooks: set[str] = field(default_factory=lambda: {"T000/B000/XXXX"})
    # Scopes per token (a token not listed has BOT_SCOPES); private channels need groups:*;
    # channels the bot is not a member of.
    scopes: dict[str, frozenset[str]] = field(default_factory=dict)
    private: set[str] = field(default_factory=set)
    not_member: set[str] = field(default_factory=set)
    metadata_limit_bytes: int = 8000
    history_per_minute: int = 50
    replies_per_minute: int = 50
    history_page_cap: int = HISTORY_MAX_LIMIT
    # Pacing Slack applies: posts per channel per second (burst 1 more), edits per token/min.
    post_interval_s: float = 1.0
    post_burst: int = 2
    enforce_rate: bool = True
    requests: list[Recorded] = field(default_factory=list)
    messages: dict[tuple[str, str], Message] = field(default_factory=dict)
    # Injected faults: the next N calls answer 429 (Retry-After given) or 500.
    throttle_next: int = 0
    throttle_retry_after: int = 1
    fail_next: int = 0
    # The next call answers only after this many seconds (past a client's timeout).
    delay_next_s: float = 0.0
    # The next top-level post is stored at once but answered only after this many seconds: the
    # window between Slack accepting a parent and its poster saving the ts (a crash, a timeout).
    answer_next_post_late_s: float = 0.0
    # The same for the next thread reply: stored at once, answered only after this many seconds.
    answer_next_reply_late_s: float = 0.0
    # The next N chat.update calls answer HTTP 500 (a parent edit failing on its own).
    fail_updates: int = 0
    _ts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _post_times: dict[str, list[float]] = field(default_factory=dict)
    _read_times: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    url: str = ""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, port: int = 0) -> FakeSlack:
        app = web.Application()
        app.router.add_post("/api/{method}", self._web_api)
        app.router.add_get("/api/{method}", self._web_api)
        app.router.add_post("/services/{team}/{hook}/{secret}", self._webhook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{bound}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    def webhook_url(self, path: str = "T000/B000/XXXX") -> str:
        return f"{self.url}/services/{path}"

    # -- views for assertions ----------------------------------------------------------------

    def calls(self, method: str | None = None, ok: bool | None = None) -> list[Recorded]:
        out = [r for r in self.requests if method is None or r.method == method]
        if ok is not None:
            out = [r for r in out if (r.status == 200 and _ok(r.answer)) == ok]
        return out

    def parents(self) -> list[Message]:
        return [m for m in self.messages.values() if m.thread_ts is None]

    def replies(self, parent_ts: str) -> list[Message]:
        return [m for m in self.messages.values() if m.thread_ts == parent_ts]

    # -- Web API ----------------------------------------------------------------------------

    async def _delay(self) -> None:
        if self.delay_next_s > 0:
            delay_s, self.delay_next_s = self.delay_next_s, 0.0
            await asyncio.sleep(delay_s)

    async def _web_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        body = await request.read()
        await self._delay()
        args: dict[str, Any] = {}
        status, answer, headers = 200, None, {}
        try:
            args = dict(request.query) if request.method == "GET" else self._parse(request, body)
            if self.fail_next > 0 or (method == "chat.update" and self.fail_updates > 0):
                if self.fail_next > 0:
                    self.fail_next -= 1
                else:
                    self.fail_updates -= 1
                status, answer = 500, "<html>Server Error | Slack</html>"
            elif self.throttle_next > 0:
                self.throttle_next -= 1
                status, answer = 429, {"ok": False, "error": "ratelimited"}
                headers["Retry-After"] = str(self.throttle_retry_after)
            else:
                token, author = self._auth(request)
                if method == "auth.test":
                    answer = {"ok": True, "bot_id": author, "user_id": "U" + author}
                elif method == "chat.postMessage":
                    self._require(token, "chat:write")
                    answer = self._post_message(author, args)
                elif method == "chat.update":
                    self._require(token, "chat:write")
                    answer = self._update(author, args)
                elif method == "conversations.history":
                    answer = self._history(token, args)
                elif method == "conversations.replies":
                    answer = self._replies(token, args)
                else:
                    answer = {"ok": False, "error": "unknown_method"}
        except _Refused as refused:
            status, answer, headers = refused.status, refused.answer, refused.headers
        if method == "chat.postMessage" and status == 200 and _ok(answer):
            await self._answer_late("thread_ts" in answer["message"])
        self.requests.append(
            Recorded(method, dict(request.headers), body, args, status, answer)
        )
        if isinstance(answer, str):
            return web.Response(status=status, text=answer, content_type="text/html")
        return web.Response(
            status=status,
            body=json.dumps(answer).encode(),
            headers={"Content-Type": "application/json; charset=utf-8", **headers},
        )

    async def _answer_late(self, reply: bool) -> None:
        """Hold the answer of a stored post when its knob is set (once)."""
        if reply:
            late_s, self.answer_next_reply_late_s = self.answer_next_reply_late_s, 0.0
        else:
            late_s, self.answer_next_post_late_s = self.answer_next_post_late_s, 0.0
        if late_s > 0:
            await asyncio.sleep(late_s)

    @staticmethod
    def _parse(request: web.Request, body: bytes) -> dict[str, Any]:
        ctype = request.headers.get("Content-Type")
        if body and not ctype:
            raise _Refused({"ok": False, "error": "missing_post_type"})
        mime, _, params = (ctype or "").partition(";")
        mime = mime.strip().lower()
        if mime == "application/json":
            charset = params.strip().lower().removeprefix("charset=").strip()
            if charset and charset not in ("utf-8", "iso-8859-1"):
                raise _Refused({"ok": False, "error": "invalid_charset"})
            try:
                args = json.loads(body)
            except ValueError:
                raise _Refused({"ok": False, "error": "invalid_json"}) from None
            if not isinstance(args, dict):
                raise _Refused({"ok": False, "error": "invalid_json"})
            return args
        if mime == "application/x-www-form-urlencoded":
            args = dict(parse_qsl(body.decode()))
            for key in ("blocks", "attachments"):
                if key in args:
                    try:
                        args[key] = json.loads(args[key])
                    except ValueError:
                        raise _Refused({"ok": False, "error": "invalid_blocks_format"}) from None
            return args
        if not body:
            return {}
        raise _Refused({"ok": False, "error": "invalid_post_type"})

    def _auth(self, request: web.Request) -> tuple[str, str]:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise _Refused({"ok": False, "error": "not_authed"})  # a token in the body is not auth
        token = header.removeprefix("Bearer ")
        author = self.tokens.get(token)
        if author is None:
            raise _Refused({"ok": False, "error": "invalid_auth"})
        return token, author

    def _require(self, token: str, scope: str) -> None:
        provided = self.scopes.get(token, BOT_SCOPES)
        if scope not in provided:
            raise _Refused({"ok": False, "error": "missing_scope", "needed": scope,
                            "provided": ",".join(sorted(provided))})

    def _channel(self, value: Any) -> str:
        if value in self.channels:
            return str(value)
        for cid, name in self.channels.items():
            if value in (name, f"#{name}"):
                return cid
        raise _Refused({"ok": False, "error": "channel_not_found"})

    def _check_content(self, args: dict[str, Any]) -> None:
        text, blocks = args.get("text"), args.get("blocks")
        if not text and not blocks and not args.get("attachments"):
            raise _Refused({"ok": False, "error": "no_text"})
        if text is not None and (not isinstance(text, str) or len(text) > TEXT_LIMIT):
            raise _Refused({"ok": False, "error": "msg_too_long"})
        if blocks is None:
            return
        if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
            raise _Refused({"ok": False, "error": "invalid_blocks_format"})
        errors = []
        if len(blocks) > BLOCK_LIMIT:
            errors.append(f"must have at most {BLOCK_LIMIT} blocks")
        for i, block in enumerate(blocks):
            obj = block.get("text")
            if block.get("type") == "header":
                if not isinstance(obj, dict) or obj.get("type") != "plain_text":
                    errors.append(f"header text must be plain_text [/blocks/{i}/text]")
                elif not 1 <= len(obj.get("text", "")) <= HEADER_LIMIT:
                    errors.append(f"must be 1-{HEADER_LIMIT} characters [/blocks/{i}/text/text]")
            elif block.get("type") == "section":
                if not isinstance(obj, dict) or not 1 <= len(obj.get("text", "")) <= SECTION_LIMIT:
                    errors.append(
                        f"must be 1-{SECTION_LIMIT} characters [/blocks/{i}/text/text]"
                    )
            elif block.get("type") not in ("context", "divider"):
                errors.append(f"unsupported block type [/blocks/{i}]")
        if errors:
            raise _Refused({
                "ok": False,
                "error": "invalid_blocks",
                "errors": errors,
                "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]},
            })

    def _metadata(self, args: dict[str, Any]) -> dict[str, Any] | None:
        raw = args.get("metadata")
        if raw is None:
            return None
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise _Refused({"ok": False, "error": "invalid_metadata_format"}) from None
        if not isinstance(raw, dict):
            raise _Refused({"ok": False, "error": "invalid_metadata_format"})
        if not raw:
            return {}  # chat.update: an empty object clears the metadata
        event_type, payload = raw.get("event_type"), raw.get("event_payload")
        if (not isinstance(event_type, str) or not EVENT_TYPE.fullmatch(event_type)
                or not isinstance(payload, dict)):
            raise _Refused({"ok": False, "error": "invalid_metadata_schema"})
        if len(json.dumps(raw).encode()) > self.metadata_limit_bytes:
            raise _Refused({"ok": False, "error": "metadata_too_large"})
        return {"event_type": event_type, "event_payload": payload}

    def _rate(self, key: str) -> None:
        if not self.enforce_rate:
            return
        now = time.monotonic()
        window = [t for t in self._post_times.get(key, []) if now - t < self.post_interval_s]
        if len(window) >= self.post_burst:
            raise _Refused(
                {"ok": False, "error": "ratelimited"}, 429, {"Retry-After": "1"}
            )
        self._post_times[key] = [*window, now]

    def _new_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _post_message(self, author: str, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args.get("channel"))
        self._check_content(args)
        thread_ts = args.get("thread_ts")
        if thread_ts is not None:
            if not isinstance(thread_ts, str):
                raise _Refused({"ok": False, "error": "invalid_thread_ts"})
            parent = self.messages.get((channel, thread_ts))
            if parent is None or parent.thread_ts is not None:
                raise _Refused({"ok": False, "error": "thread_not_found"})
        metadata = self._metadata(args)
        if channel in self.not_member:
            raise _Refused({"ok": False, "error": "not_in_channel"})
        self._rate(channel)
        ts = self._new_ts()
        message = Message(channel, ts, author, args.get("text", ""), args.get("blocks"),
                          thread_ts, metadata or None)
        self.messages[(channel, ts)] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": _message_json(message)}

    def _update(self, author: str, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel"), args.get("ts")
        if not channel:
            raise _Refused({"ok": False, "error": "channel_not_found"})
        if not ts:
            raise _Refused({"ok": False, "error": "message_not_found"})
        if channel not in self.channels:  # chat.update takes the id the message lives in
            raise _Refused({"ok": False, "error": "channel_not_found"})
        message = self.messages.get((channel, str(ts)))
        if message is None:
            raise _Refused({"ok": False, "error": "message_not_found"})
        if message.author != author:
            raise _Refused({"ok": False, "error": "cant_update_message"})
        self._check_content(args)
        metadata = self._metadata(args)
        message.text = args.get("text", message.text)
        message.blocks = args.get("blocks", message.blocks)
        if metadata is not None:  # omitted: kept; {}: cleared
            message.metadata = metadata or None
        message.edits += 1
        return {"ok": True, "channel": channel, "ts": message.ts, "text": message.text,
                "message": _message_json(message)}

    def _history(self, token: str, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._readable(token, args, "conversations.history", self.history_per_minute)
        limit = self._limit(args, HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT)
        newest_first = sorted(
            (m for m in self.messages.values() if m.channel == channel and m.thread_ts is None),
            key=lambda m: float(m.ts), reverse=True,
        )
        window = _window(newest_first, args)
        cursor = args.get("cursor")
        if cursor:
            start_ts = _decode_cursor(str(cursor))
            window = [m for m in window if float(m.ts) <= start_ts]
        answer = _page(window, limit, args)
        answer |= {"pin_count": 0, "channel_actions_ts": None, "channel_actions_count": 0}
        return answer

    def _replies(self, token: str, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._readable(token, args, "conversations.replies", self.replies_per_minute)
        named = self.messages.get((channel, str(args.get("ts"))))
        if named is None:
            raise _Refused({"ok": False, "error": "thread_not_found"})
        parent = self.messages.get((channel, named.thread_ts)) if named.thread_ts else named
        assert parent is not None
        limit = self._limit(args, REPLIES_DEFAULT_LIMIT, REPLIES_MAX_LIMIT)
        oldest_first = sorted(
            (m for m in self.messages.values()
             if m.channel == channel and m.thread_ts == parent.ts),
            key=lambda m: float(m.ts),
        )
        window = _window(oldest_first, args)
        cursor = args.get("cursor")
        if cursor:
            start_ts = _decode_cursor(str(cursor))
            window = [m for m in window if float(m.ts) >= start_ts]
        else:
            window = [parent, *window]
        return _page(window, limit, args)

    def _readable(self, token: str, args: dict[str, Any], method: str, per_minute: int) -> str:
        """The conversation a read method names, once this token may read it (scopes,
        membership) and within its Tier 3 limit."""
        channel = args.get("channel")
        if channel not in self.channels:  # an id: a name is not a conversation id
            raise _Refused({"ok": False, "error": "channel_not_found"})
        self._require(token, "groups:history" if channel in self.private else "channels:history")
        if channel in self.not_member:
            raise _Refused({"ok": False, "error": "not_in_channel"})
        now = time.monotonic()
        key = (method, token)
        window = [t for t in self._read_times.get(key, []) if now - t < 60.0]
        if len(window) >= per_minute:
            retry_after = max(1, int(60.0 - (now - window[0])) + 1)
            raise _Refused({"ok": False, "error": "ratelimited"}, 429,
                           {"Retry-After": str(retry_after)})
        self._read_times[key] = [*window, now]
        return str(channel)

    def _limit(self, args: dict[str, Any], default: int, maximum: int) -> int:
        try:
            limit = int(args.get("limit", default))
        except (TypeError, ValueError):
            raise _Refused({"ok": False, "error": "invalid_arguments"}) from None
        return max(1, min(limit, maximum, self.history_page_cap))

    # -- incoming webhooks --------------------------------------------------------------------

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        path = "/".join(request.match_info[k] for k in ("team", "hook", "secret"))
        body = await request.read()
        await self._delay()
        status, text, headers = 200, "ok", {}
        args: dict[str, Any] = {}
        try:
            if path not in self.webhooks:
                raise _Refused("no_service", 404)
            if self.fail_next > 0:
                self.fail_next -= 1
                raise _Refused("rollup_error", 500)
            if self.throttle_next > 0:
                self.throttle_next -= 1
                raise _Refused("rate_limited", 429,
                               {"Retry-After": str(self.throttle_retry_after)})
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            try:
                if ctype == "application/x-www-form-urlencoded":
                    args = json.loads(dict(parse_qsl(body.decode())).get("payload", ""))
                else:
                    args = json.loads(body)
            except ValueError:
                raise _Refused("invalid_payload", 400) from None
            if not isinstance(args, dict):
                raise _Refused("invalid_payload", 400)
            if not args.get("text") and not args.get("blocks"):
                raise _Refused("no_text", 400)
            try:
                self._check_content(args)
            except _Refused:
                raise _Refused("invalid_payload", 400) from None
            self._rate("webhook:" + path)
        except _Refused as refused:
            status = refused.status if refused.status != 200 else 400
            text = refused.answer if isinstance(refused.answer, str) else "rate_limited"
            headers = refused.headers
        self.requests.append(Recorded("webhook", dict(request.headers), body, args, status, text))
        return web.Response(status=status, text=text, headers=headers)


class _Refused(Exception):
    def __init__(self, answer: Any, status: int = 200, headers: dict[str, str] | None = None):
        self.answer, self.status, self.headers = answer, status, headers or {}


def _ok(answer: Any) -> bool:
    return answer == "ok" or (isinstance(answer, dict) and answer.get("ok") is True)


def _message_json(m: Message, with_metadata: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "message", "subtype": "bot_message", "text": m.text,
                           "bot_id": m.author, "ts": m.ts}
    if m.blocks is not None:
        out["blocks"] = m.blocks
    if m.thread_ts is not None:
        out["thread_ts"] = m.thread_ts
    if m.metadata is not None and with_metadata:
        out["metadata"] = m.metadata
    return out


def _window(messages: list[Message], args: dict[str, Any]) -> list[Message]:
    """The messages between `oldest` and `latest` (exclusive unless `inclusive`)."""
    oldest = _ts_arg(args, "oldest", "0")
    latest = _ts_arg(args, "latest", str(time.time() + 1))
    inclusive = _truthy(args.get("inclusive"))
    return [m for m in messages if _within(float(m.ts), oldest, latest, inclusive)]


def _page(window: list[Message], limit: int, args: dict[str, Any]) -> dict[str, Any]:
    """One page of a read answer: metadata only when asked for, a cursor to the rest."""
    page, rest = window[:limit], window[limit:]
    with_metadata = _truthy(args.get("include_all_metadata"))
    answer: dict[str, Any] = {
        "ok": True,
        "messages": [_message_json(m, with_metadata) for m in page],
        "has_more": bool(rest),
    }
    if rest:
        next_cursor = base64.b64encode(f"next_ts:{rest[0].ts}".encode()).decode()
        answer["response_metadata"] = {"next_cursor": next_cursor}
    return answer


def _truthy(value: Any) -> bool:
    return value is True or value in (1, "1", "true", "True")


def _within(ts: float, oldest: float, latest: float, inclusive: bool) -> bool:
    if inclusive:
        return oldest <= ts <= latest
    return oldest < ts < latest


def _ts_arg(args: dict[str, Any], key: str, default: str) -> float:
    try:
        return float(args.get(key) or default)
    except (TypeError, ValueError):
        raise _Refused({"ok": False, "error": f"invalid_ts_{key}"}) from None


def _decode_cursor(cursor: str) -> float:
    try:
        text = base64.b64decode(cursor, validate=True).decode()
        if not text.startswith("next_ts:"):
            raise ValueError(text)
        return float(text.removeprefix("next_ts:"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _Refused({"ok": False, "error": "invalid_cursor"}) from None


def untrusted_leaks(text: str) -> list[str]:
    """Control sequences that reached Slack unescaped."""
    return [seq for seq in CONTROL_SEQUENCES if seq in text]
