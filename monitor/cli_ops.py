"""The operator's commands: `silence add|list|expire`, `events list` and `routes test`. The
first two work on the state store directly (like `dead-letters`), so they need no running
daemon, and one replica's silence is every replica's; `routes test` reads only the
configuration."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from monitor.config import Config, parse_duration_s
from monitor.errors import InvalidInput
from monitor.model import Event, EventBatch, EventJob, EventTemplate, EventType
from monitor.notify.router import Router
from monitor.notify.silences import match_data, new_silence, parse_matchers
from monitor.store import open_store
from monitor.store.base import EventQuery
from monitor.store.registry import account_url
from monitor.views import event_json, iso, match_text, parse_since, silence_json

EXIT_OK, EXIT_FAILURE = 0, 1
#: `events list` shows at most this many events (the newest) unless `--limit` says otherwise.
DEFAULT_EVENTS = 100


def add_parsers(
    sub: Any, with_config: Callable[[argparse.ArgumentParser], None]
) -> None:
    """The `silence` and `events` subcommands; `with_config` adds the `--config` option."""
    silence = sub.add_parser("silence", help="mute matching events for a while: add, list, expire")
    actions = silence.add_subparsers(dest="action", required=True)
    add = actions.add_parser(
        "add",
        help="record and count matching events but send none of them; prints the new id "
        "alone on the last line",
    )
    with_config(add)
    add.add_argument(
        "--match", action="append", required=True, metavar="KEY=VALUE[,VALUE]",
        help="like a route's match (type, from_status, to_status, batch_id, template_id, "
        "output_type, creator); repeat for more keys",
    )
    add.add_argument("--for", dest="duration", required=True, type=_duration,
                     help="how long, e.g. 2h, 1h30m, 45m")
    add.add_argument("--comment", required=True, help="why (what the next person reads)")
    add.add_argument("--created-by", default=None, help="who (default: your user name)")
    add.add_argument("--output", choices=("text", "json"), default="text")
    listing = actions.add_parser("list", help="active and pending silences")
    with_config(listing)
    listing.add_argument("--all", action="store_true", help="expired ones too")
    listing.add_argument("--output", choices=("table", "json"), default="table")
    expire = actions.add_parser("expire", help="end a silence now")
    expire.add_argument("id")
    with_config(expire)

    events = sub.add_parser("events", help="the event history: what was detected and sent")
    events_actions = events.add_subparsers(dest="action", required=True)
    ev = events_actions.add_parser(
        "list", help="recorded events, newest first, with each notifier's outcome"
    )
    with_config(ev)
    ev.add_argument("--since", default=None, help="e.g. 1h, 1h30m or 2026-12-07T03:00:00Z")
    ev.add_argument("--batch", default=None, help="only this batch id")
    ev.add_argument("--job", default=None, help="only this job id")
    ev.add_argument("--type", default=None, help="only this event type, e.g. job.status_changed")
    ev.add_argument("--status", default=None, help="only events to this job status")
    ev.add_argument("--account", default=None,
                    help="the Box account whose history (default: the first configured)")
    ev.add_argument("--limit", type=int, default=DEFAULT_EVENTS)
    ev.add_argument("--output", choices=("table", "json"), default="table")

    routes = sub.add_parser("routes", help="which notifiers an event would reach, and why")
    routes_actions = routes.add_subparsers(dest="action", required=True)
    test = routes_actions.add_parser(
        "test", help="route a made-up event (like `amtool config routes test`); nothing is sent"
    )
    with_config(test)
    test.add_argument("--type", default=EventType.JOB_STATUS_CHANGED.value,
                      choices=[t.value for t in EventType])
    test.add_argument("--from-status", default=None)
    test.add_argument("--to-status", default=None)
    test.add_argument("--template", default="1", help="the template file id")
    test.add_argument("--batch", default="1", help="the batch id")
    test.add_argument("--output-type", default="pdf")
    test.add_argument("--creator", default=None, help="the job's created_by user id")
    test.add_argument("--output", choices=("text", "json"), default="text")


def _duration(text: str) -> float:
    try:
        return parse_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart (the last column is not padded)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=False)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _print_json(value: object) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


async def silence_command(config: Config, args: argparse.Namespace) -> int:
    now = time.time()
    async with open_store(config.state.url) as store:
        if args.action == "add":
            created = new_silence(
                parse_matchers(args.match),
                duration_s=args.duration,
                comment=args.comment,
                created_by=args.created_by or _user(),
                now=now,
            )
            await store.add_silence(created)
            if args.output == "json":
                _print_json(silence_json(created, now))
            else:
                print(f"silenced until {iso(created.ends_at)}: {match_text(created.match)}")
                print(created.id)
            return EXIT_OK
        if args.action == "expire":
            expired = await store.expire_silence(args.id, now)
            if expired is None:
                raise InvalidInput([f"silence expire: no silence with id {args.id!r}"])
            print(f"silence {expired.id} ended at {iso(expired.ends_at)}")
            return EXIT_OK
        silences = await store.list_silences(ended_after=None if args.all else now)
    if args.output == "json":
        _print_json([silence_json(s, now) for s in silences])
    elif not silences:
        print("no silences" if args.all else "no active or pending silences (--all: expired too)")
    else:
        views = [silence_json(s, now) for s in silences]
        print(table(
            ("ID", "STATE", "STARTS", "ENDS", "MATCH", "CREATED BY", "COMMENT"),
            [(v["id"], v["state"], v["starts_at"], v["ends_at"], match_text(v["match"]),
              v["created_by"], v["comment"]) for v in views],
        ))
    return EXIT_OK


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's anonymous uid)
        return "unknown"


async def events_command(config: Config, args: argparse.Namespace) -> int:
    try:
        since = None if args.since is None else parse_since(args.since, time.time())
    except ValueError as exc:
        raise InvalidInput([f"events list: {exc}"]) from None
    if args.limit < 1:
        raise InvalidInput(["events list: --limit must be at least 1"])
    query = EventQuery(since=since, batch_id=args.batch, job_id=args.job, type=args.type,
                       status=args.status, limit=args.limit)
    accounts = [a.name for a in config.account_configs]
    account = args.account or accounts[0]
    if account not in accounts:
        raise InvalidInput([f"events list: no account named {account!r} (configured: "
                            f"{', '.join(accounts)})"])
    async with open_store(account_url(config.state.url, account)) as store:
        records = await store.list_events(query)
    views = [event_json(r) for r in records]
    if args.output == "json":
        _print_json(views)
        return EXIT_OK
    if not views:
        print("no events match" if _filtered(args) else "no events recorded yet")
        return EXIT_OK
    rows = []
    for v in views:
        change = v["to_status"] if v["from_status"] is None else \
            f"{v['from_status']} -> {v['to_status']}"
        outcomes = ", ".join(
            f"{d['notifier']}: {d['outcome']} {d['at']}" for d in v["deliveries"]
        ) or "(no route)"
        rows.append((v["recorded_at"], v["type"], v["batch_id"] or "", v["job_id"] or "",
                     change or "", outcomes))
    print(table(("RECORDED", "TYPE", "BATCH", "JOB", "CHANGE", "NOTIFIERS"), rows))
    if len(views) == args.limit:
        print(f"(the newest {args.limit}; --limit for more)", file=sys.stderr)
    return EXIT_OK


def _filtered(args: argparse.Namespace) -> bool:
    return any(v is not None for v in (args.since, args.batch, args.job, args.type, args.status))


def sample_event(args: argparse.Namespace) -> Event:
    """The event `routes test` routes: what the flags say, the rest neutral."""
    kind = EventType(args.type)
    if kind is EventType.BATCH_COMPLETED:
        return Event(id="routes-test", type=kind, detected_at=datetime.now(UTC),
                     batch=EventBatch(id=args.batch, counts={}))
    if kind is EventType.TEMPLATE_FAILURE_RATE_ROSE:  # about a template: no batch, no job
        return Event(id="routes-test", type=kind, detected_at=datetime.now(UTC),
                     template=EventTemplate(
                         id=args.template or "routes-test", version_id="2", failure_ratio=0.5,
                         jobs=20, failed_jobs=10, previous_version_id="1",
                         previous_failure_ratio=0.0, previous_jobs=20, previous_failed_jobs=0,
                         window_s=86400.0))
    return Event(
        id="routes-test", type=kind, detected_at=datetime.now(UTC),
        from_status=args.from_status, to_status=args.to_status,
        job=EventJob(id="routes-test", batch_id=args.batch, status=args.to_status,
                     template_file_id=args.template, output_file_id=None,
                     output_type=args.output_type, created_by_id=args.creator),
    )


def routes_test(config: Config, args: argparse.Namespace) -> int:
    # The same checks as a route's match: a status or output type Box never reports.
    match_data({key: value for key, value in (
        ("from_status", args.from_status), ("to_status", args.to_status),
        ("output_type", args.output_type)) if value is not None})
    event = sample_event(args)
    router = Router(config.routes)
    taken = router.matching(event)
    notifiers = router.route(event)
    if args.output == "json":
        _print_json({
            "notifiers": list(notifiers),
            "routes": [{"index": i, "match": route.match.model_dump(mode="json",
                                                                    exclude_none=True),
                        "notify": route.notify, "continue": route.continue_}
                       for i, route in taken],
        })
        return EXIT_OK
    for i, route in taken:
        match = match_text(route.match.model_dump(mode="json", exclude_none=True)) or "{}"
        more = " (continue)" if route.continue_ else ""
        print(f"routes[{i}] match {match} -> {', '.join(route.notify)}{more}")
    if notifiers:
        print(", ".join(notifiers))
    else:
        print("no route matches: this event would reach no notifier")
    return EXIT_OK
