"""`docgen-monitor`: run, demo, simulate, once, watch, check-config, test-notify, dead-letters,
state, silence, events, routes, box-webhooks.

Exit codes: 0 clean stop, 2 configuration error (every problem listed with its path), 1 any
other failure."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit

import orjson
import structlog

from monitor import __version__, cli_ops
from monitor.config import ACCOUNT_NAME_PATTERN, CONFIG_PATH_ENV, Config, load_config
from monitor.errors import (
    ConfigError,
    IdentityMismatch,
    MonitorError,
    StoreLocked,
    StoreNotEmpty,
)
from monitor.logging import configure_logging
from monitor.model import DEFAULT_ACCOUNT
from monitor.notify.base import NotifierRegistry
from monitor.simulator.options import add_arguments as add_simulate_arguments
from monitor.store.base import OutboxEntry
from monitor.views import iso

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
#: Where `--config` comes from when it is not given.
CONFIG_ENV = CONFIG_PATH_ENV

log = structlog.get_logger("monitor.cli")
ACCOUNT_HELP = "the Box account (its name under accounts:); needed when several are configured"


def _with_config(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(CONFIG_ENV) or None
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(default) if default else None,
        required=default is None,
        help=f"the configuration file (default: ${CONFIG_ENV})",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="docgen-monitor", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"docgen-monitor {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run the daemon until SIGTERM or SIGINT; SIGHUP re-reads the config"
    )
    _with_config(run)
    run.add_argument(
        "--adopt-identity",
        action="store_true",
        help="take over a state store recorded for another Box user or enterprise (its next "
        "sweep records a new silent baseline)",
    )
    run.add_argument(
        "--accept-mass-vanish",
        action="store_true",
        help="confirm (by id) even when a listing misses more than 20%% of the jobs: they "
        "really were deleted",
    )

    once = sub.add_parser("once", help="one sweep; print its events as JSON lines; exit")
    _with_config(once)
    once.add_argument("--account", default=None, help=ACCOUNT_HELP)

    watch = sub.add_parser("watch", help="put a batch into the running daemon's active set")
    watch.add_argument("batch_id")
    _with_config(watch)
    watch.add_argument("--account", default=None, help=ACCOUNT_HELP)

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    default = os.environ.get(CONFIG_ENV) or None
    check.add_argument(
        "file",
        type=Path,
        nargs="?" if default else None,
        default=Path(default) if default else None,
        help=f"the configuration file (default: ${CONFIG_ENV})",
    )

    test = sub.add_parser(
        "test-notify", help="send a sample event through one notifier; print its answer"
    )
    _with_config(test)
    test.add_argument("name", help="the notifier's name in the configuration")

    dead = sub.add_parser("dead-letters", help="list, retry or drop events out of attempts")
    dead.add_argument("action", choices=("list", "retry", "drop"))
    _with_config(dead)
    dead.add_argument("--notifier", default=None, help="only this notifier's rows")
    dead.add_argument("--event", default=None, help="only this event id")
    dead.add_argument("--all", action="store_true",
                      help="drop: every dead letter (without a filter, drop asks first)")
    dead.add_argument("--output", choices=("table", "json"), default="table",
                      help="list: a table, or one JSON object a line")
    dead.add_argument("--account", default=None, help=ACCOUNT_HELP)

    state = sub.add_parser("state", help="work on a state store as a whole")
    state_sub = state.add_subparsers(dest="state_command", required=True)
    migrate = state_sub.add_parser(
        "migrate",
        help="copy every table of one state store into another (stop the daemon first)",
        description="Copy the snapshot, outbox, threads, groups, marks and identity of one "
        "state store into another, in one transaction. URLs as state.url takes them; "
        "${VAR} is read from the environment, so a password need not be on the command line.",
    )
    migrate.add_argument("--from", dest="from_url", required=True, metavar="URL")
    migrate.add_argument("--to", dest="to_url", required=True, metavar="URL")
    migrate.add_argument(
        "--account",
        dest="accounts",
        action="append",
        metavar="NAME",
        help="move this Box account's state (repeat for each; default: `default`, the only "
        "one of a configuration without `accounts:`)",
    )
    migrate.add_argument(
        "--replace",
        action="store_true",
        help="the target already holds state: delete it first (by default it is refused)",
    )

    hooks = sub.add_parser(
        "box-webhooks", help="install, list or remove Box webhooks on Doc Gen templates"
    )
    hooks.add_argument("action", choices=("install", "list", "remove"))
    hooks.add_argument("--config", required=True, type=Path)
    hooks.add_argument("--template", help="install: the template's Box file id")
    hooks.add_argument("--address", help="install: the daemon's public HTTPS URL of "
                       "/api/v1/box/webhook")
    hooks.add_argument("--id", dest="webhook_id", help="remove: the webhook's id")
    hooks.add_argument("--account", default=None, help=ACCOUNT_HELP)

    demo = sub.add_parser("demo", help="run against a built-in simulator; no setup needed")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )
    demo.add_argument("--port", type=int, default=0, help="metrics port (default: a free one)")
    demo.add_argument(
        "--state",
        default=None,
        metavar="URL",
        help="high availability: a postgresql:// URL (${VAR} read from the environment) the "
        "replicas share (default: a temporary SQLite file, one in-process daemon)",
    )
    demo.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="with --state: how many `run` processes to start (default 2)",
    )

    cli_ops.add_parsers(sub, _with_config)

    completion = sub.add_parser(
        "completion",
        help="print a shell completion script (bash: "
        "`eval \"$(docgen-monitor completion bash)\"` in ~/.bashrc)",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "tcsh"))

    sim = sub.add_parser("simulate", help="serve the Box Doc Gen simulator")
    add_simulate_arguments(sim)
    return p


def _complete_paths(parser: argparse.ArgumentParser, files: object) -> None:
    """Every argument that takes a path (`--config`, check-config's file) completes file names
    (shtab reads an action's `complete`), in every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _complete_paths(sub, files)
        elif action.type is Path:
            action.complete = files  # type: ignore[attr-defined]


def load(path: Path, registry: NotifierRegistry) -> Config:
    """The configuration at `path`, validated and with every notifier's templates rendered
    against sample events: what `check-config` accepts, `run` starts with and a SIGHUP reload
    swaps in (Jinja loads templates lazily, so a broken one would otherwise surface at the
    first send)."""
    config = load_config(path, notifier_models=registry.config_models())
    template_problems(config, registry)
    return config


#: Allocations between two young-generation collections (Python's default: 700). A sweep
#: allocates a few containers per listing entry that live one page: collected every 700
#: allocations, most are still alive and get walked, then promoted and walked again.
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Take what the imports built so far (modules, classes, schemas: objects that live as
    long as the process) out of the collector's sight: a full collection then walks what the
    work allocated, not the whole heap (a sweep of 100,000 jobs: ~50 ms less); and collect
    the young generation less often (`GC_YOUNG_THRESHOLD`: ~25 ms less)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settle_heap()
    if args.command == "completion":
        import shtab  # here only: importing it costs every other command ~50 ms

        _complete_paths(parser, shtab.FILE)
        print(shtab.complete(parser, shell=args.shell))
        return EXIT_OK
    registry = NotifierRegistry.from_entry_points()
    try:
        if args.command == "check-config":
            config = load(args.file, registry)
            print(
                f"{args.file}: OK ({len(config.notifiers)} notifier(s), "
                f"{len(config.routes)} route(s))"
            )
            return EXIT_OK
        if args.command == "simulate":
            configure_logging()
            return _simulate(args)
        if args.command == "state":
            configure_logging(level="warning")
            return _state_migrate(
                args.from_url, args.to_url, args.accounts or [DEFAULT_ACCOUNT], args.replace
            )
        if args.command == "demo":
            configure_logging(level="warning")
            if args.state is not None:
                return _ha_demo(args.state, args.replicas, args.duration)
            from monitor.demo import run_demo

            return asyncio.run(run_demo(args.duration, args.port, registry))
        config = load(args.config, registry)
        configure_logging(config.log.level, config.log.format)
        if args.command == "watch":
            return asyncio.run(_watch(config, args.batch_id, args.account))
        if args.command == "once":
            return asyncio.run(_once(config, registry, args.account))
        if args.command == "test-notify":
            return asyncio.run(_test_notify(config, registry, args.name))
        if args.command == "silence":
            return asyncio.run(cli_ops.silence_command(config, args))
        if args.command == "events":
            return asyncio.run(cli_ops.events_command(config, args))
        if args.command == "routes":
            return cli_ops.routes_test(config, args)
        if args.command == "box-webhooks":
            return asyncio.run(_box_webhooks(config, args))
        if args.command == "dead-letters":
            return asyncio.run(_dead_letters(config, args))
        return asyncio.run(
            _run(config, registry, args.config, args.adopt_identity, args.accept_mass_vanish)
        )
    except (ConfigError, IdentityMismatch, StoreLocked) as exc:
        print(f"docgen-monitor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MonitorError as exc:
        log.error("fatal", error=str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def template_problems(config: Config, registry: NotifierRegistry) -> None:
    """Render every notifier's templates against sample events; raise listing each failure."""
    problems = []
    for i, spec in enumerate(config.notifiers):
        notifier = registry.create(spec, timeout_s=config.delivery.timeout)
        problems += [f"notifiers[{i}] ({spec.name}): {p}" for p in notifier.check_templates()]
    if problems:
        raise ConfigError(problems)


async def _test_notify(config: Config, registry: NotifierRegistry, name: str) -> int:
    """A sample batch (one failure whose texts try every injection) through one notifier, with
    a throw-away in-memory store so nothing of the sample reaches the real state."""
    import time
    import uuid

    from monitor.notify.render import sample_events
    from monitor.store.sqlite import SQLiteStore

    spec = next((n for n in config.notifiers if n.name == name), None)
    if spec is None:
        known = ", ".join(n.name for n in config.notifiers) or "none"
        raise ConfigError([f"test-notify: no notifier named {name!r} (configured: {known})"])
    notifier = registry.create(spec, timeout_s=config.delivery.timeout)
    async with SQLiteStore(":memory:") as scratch:
        notifier.attach(scratch)
        try:
            await notifier.start()
            # New ids every run: a receiver that drops repeats by id would drop a second test.
            events = sample_events(time.time(), test_run=uuid.uuid4().hex[:12])
            result = await notifier.send(events)
        finally:
            await notifier.close()
    status = "delivered" if result.ok else "FAILED"
    print(f"{name} ({spec.type}): {status}: {result.detail}")
    print(f"event ids: {', '.join(e.id for e in events)}")
    return EXIT_OK if result.ok else EXIT_FAILURE


async def _dead_letters(config: Config, args: argparse.Namespace) -> int:
    import time

    from monitor.store import OutboxState, open_store
    from monitor.store.registry import account_url

    notifier, event_id = args.notifier, args.event
    unfiltered = notifier is None and event_id is None and not args.all
    if args.action == "drop" and unfiltered and not _confirmed("drop every dead letter"):
        print("docgen-monitor: dead-letters drop: name --event and/or --notifier, or give "
              "--all to drop every one", file=sys.stderr)
        return EXIT_CONFIG
    url = account_url(config.state.url, config.account(args.account).name)
    async with open_store(url) as store:
        if args.action == "retry":
            n = await store.requeue_dead(time.time(), event_id=event_id, notifier=notifier)
            print(f"{n} dead letter(s) queued again")
            return EXIT_OK
        if args.action == "drop":
            n = await store.drop_dead(event_id=event_id, notifier=notifier)
            print(f"{n} dead letter(s) dropped")
            return EXIT_OK
        rows = [r for r in await store.list_outbox(OutboxState.DEAD, notifier=notifier,
                                                   limit=100_000)
                if event_id is None or r.event.id == event_id]
    if args.output == "json":
        for row in rows:
            sys.stdout.write(orjson.dumps(_dead_letter_json(row)).decode() + "\n")
    elif not rows:
        print("no dead letters" + (" match" if notifier or event_id else ""))
    else:
        print(cli_ops.table(
            ("EVENT", "NOTIFIER", "TYPE", "BATCH", "DETECTED", "FAILING SINCE", "ATTEMPTS",
             "LAST ERROR"),
            [(r.event.id, r.notifier, r.event.type.value, r.event.batch_id or "",
              iso(r.event.detected_at.timestamp()),
              "" if r.first_failed_at is None else iso(r.first_failed_at),
              str(r.attempts), r.last_error or "") for r in rows],
        ))
    return EXIT_OK


def _dead_letter_json(row: OutboxEntry) -> dict[str, object]:
    return {
        "event_id": row.event.id,
        "notifier": row.notifier,
        "type": row.event.type.value,
        "batch_id": row.event.batch_id,
        "attempts": row.attempts,
        "detected_at": iso(row.event.detected_at.timestamp()),
        "failing_since": None if row.first_failed_at is None else iso(row.first_failed_at),
        "last_error": row.last_error,
    }


def _confirmed(what: str) -> bool:
    """Ask on the terminal; never when stdin is not one (a script must say --all)."""
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"{what}? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _ha_demo(state_arg: str, replicas: int, duration_s: float | None) -> int:
    """`demo --state URL`: exit 2 for a URL that is not PostgreSQL's or a count below 1."""
    import os

    from monitor.config import expand_vars
    from monitor.demo_ha import run_ha_demo
    from monitor.store.registry import check_url, scheme_of

    url, problems = expand_vars(state_arg, os.environ, "--state")
    if not problems:
        try:
            check_url(url)
            if scheme_of(url) not in ("postgresql", "postgres"):
                problems.append("--state: replicas share a postgresql:// store (SQLite serves "
                                "one process; leave --state out for that demo)")
        except ValueError as exc:
            problems.append(f"--state: {exc}")
    if replicas < 1:
        problems.append(f"--replicas: at least 1, not {replicas}")
    if problems:
        print("docgen-monitor demo: " + "; ".join(problems), file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(run_ha_demo(url, replicas, duration_s))


def _state_migrate(from_arg: str, to_arg: str, accounts: list[str], replace: bool) -> int:
    """`state migrate`: exit 2 for a URL that cannot be used or a refused copy (every problem
    listed by flag), 1 when a store fails. No output carries a password: every message goes
    through `redact`."""
    import os

    from monitor.config import expand_vars, url_without_password
    from monitor.errors import StoreLocked
    from monitor.store.migrate import NothingToMigrate, StoreInUse, migrate_accounts
    from monitor.store.registry import check_url

    urls: dict[str, str] = {}
    problems: list[str] = []
    for flag, raw in (("--from", from_arg), ("--to", to_arg)):
        url, unset = expand_vars(raw, os.environ, flag)
        problems += unset
        try:
            check_url(url)
        except ValueError as exc:
            problems.append(f"{flag}: {exc}")
        urls[flag] = url
    problems += [
        f"--account: {name!r} is not an account name ({ACCOUNT_NAME_PATTERN})"
        for name in accounts
        if not re.fullmatch(ACCOUNT_NAME_PATTERN, name)
    ]
    secrets = [p for p in (urlsplit(u).password for u in urls.values()) if p]

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "**********")
        return text

    def fail(code: int, message: str) -> int:
        print(f"docgen-monitor state migrate: {redact(message)}", file=sys.stderr)
        return code

    if problems:
        return fail(EXIT_CONFIG, "\n  ".join(["invalid arguments:", *problems]))
    try:
        copied = asyncio.run(
            migrate_accounts(urls["--from"], urls["--to"], accounts, replace=replace)
        )
    except (StoreNotEmpty, NothingToMigrate, StoreLocked, StoreInUse) as exc:
        return fail(EXIT_CONFIG, str(exc))
    except MonitorError as exc:
        return fail(EXIT_FAILURE, str(exc))
    for account, tables in copied.items():
        for table, rows in tables.items():
            print(f"{account}\t{table}\t{rows}")
    total = sum(sum(tables.values()) for tables in copied.values())
    print(
        redact(
            f"copied {total} row(s) of {len(copied)} account(s) from "
            f"{url_without_password(urls['--from'])} to {url_without_password(urls['--to'])}"
        ),
        file=sys.stderr,
    )
    return EXIT_OK


async def _box_webhooks(config: Config, args: argparse.Namespace) -> int:
    """`POST`, `GET` or `DELETE /2.0/webhooks` with the daemon's own Box credentials; one
    JSON line per webhook on stdout."""
    from monitor.box.connect import make_box_client
    from monitor.box.errors import BoxError

    if args.action == "install" and not (args.template and args.address):
        raise ConfigError(["box-webhooks install: --template FILE_ID and --address URL"])
    if args.action == "remove" and not args.webhook_id:
        raise ConfigError(["box-webhooks remove: --id WEBHOOK_ID"])
    account = config.account(args.account)
    auth, box = make_box_client(account.box, None)
    async with box:
        try:
            if args.action == "install":
                hooks = [await box.create_webhook(args.template, args.address)]
            elif args.action == "list":
                hooks = await box.list_webhooks()
            else:
                await box.delete_webhook(args.webhook_id)
                print(f"webhook {args.webhook_id} removed", file=sys.stderr)
                hooks = []
        except BoxError as exc:
            print(f"docgen-monitor: Box refused: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            await auth.aclose()
    for hook in hooks:
        sys.stdout.write(hook.model_dump_json(exclude_none=True) + "\n")
    if args.action == "install" and not account.box.webhook.enabled:
        print("note: set box.webhook.primary_key (and secondary_key) in the configuration, "
              "or the daemon will not take the notifications", file=sys.stderr)
    return EXIT_OK


async def _run(
    config: Config,
    registry: NotifierRegistry,
    path: Path,
    adopt_identity: bool = False,
    accept_mass_vanish: bool = False,
) -> int:
    from monitor.daemon import Daemon

    daemon = Daemon(
        config,
        registry=registry,
        adopt_identity=adopt_identity,
        accept_mass_vanish=accept_mass_vanish,
    )
    async with daemon:
        daemon.install_signal_handlers(reload=lambda: load(path, registry))
        log.info("daemon_running", metrics_url=f"{daemon.web.url}/metrics")
        await daemon.wait_stopped()
    return EXIT_OK


async def _once(config: Config, registry: NotifierRegistry, name: str | None = None) -> int:
    from monitor.box.connect import make_box_client
    from monitor.identity import IdentityGuard
    from monitor.metrics import Metrics
    from monitor.notify.router import Router
    from monitor.poller import Poller
    from monitor.recorder import Recorder
    from monitor.store import open_store
    from monitor.store.registry import account_url
    from monitor.template_rates import policy_of

    settle_heap()  # and what the imports above added
    account = config.account(name)
    assert account.poll is not None and account.routes is not None  # settled by the config
    metrics = Metrics(account=account.name)
    auth, box = make_box_client(account.box, metrics)
    async with open_store(account_url(config.state.url, account.name)) as store, box:
        try:
            recorder = Recorder(
                store,
                Router(account.routes),
                metrics,
                baseline=config.baseline,
                rates=policy_of(config.template_failures),
                account=account.name,
            )
            poller = Poller(
                box,
                store,
                recorder,
                metrics,
                page_size=account.box.page_size,
                vanish_confirm_max=account.poll.vanish_confirm_max,
                identity=IdentityGuard(box, store, metrics),
            )
            result = await poller.sweep()
        finally:
            await auth.aclose()
    for event in result.events:
        sys.stdout.write(orjson.dumps(event.wire()).decode() + "\n")
    if result.baseline:
        print(
            f"baseline recorded: {result.jobs_seen} job(s); later changes become events",
            file=sys.stderr,
        )
    return EXIT_OK


async def _watch(config: Config, batch_id: str, account: str | None = None) -> int:
    """Ask the daemon configured in `config` (its `http.listen`) to watch a batch now."""
    import aiohttp
    from yarl import URL

    from monitor.web import WATCH_ROUTE

    if config.http.api_token is None:
        print("docgen-monitor: http.api_token is not set: the watch API is off", file=sys.stderr)
        return EXIT_CONFIG
    host = f"[{config.http.host}]" if ":" in config.http.host else config.http.host
    path = WATCH_ROUTE.format(batch_id=quote(batch_id, safe=""))
    if account is not None:
        path += f"?account={quote(config.account(account).name, safe='')}"
    url = URL(f"http://{host}:{config.http.port}{path}", encoded=True)
    headers = {"Authorization": f"Bearer {config.http.api_token.get_secret_value()}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(url, headers=headers) as resp,
        ):
            body = await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"docgen-monitor: cannot reach the daemon at {url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if resp.status != 202:
        print(f"docgen-monitor: the daemon answered {resp.status}: {body[:200]}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"watching batch {batch_id}")
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from monitor.simulator import start_simulator
    from monitor.simulator.options import SimulateConfigError, config_from_args

    try:
        config = config_from_args(args)
    except SimulateConfigError as exc:
        print(f"docgen-monitor simulate: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def serve() -> None:
        async with await start_simulator(config, args.host, args.port) as sim:
            if args.seed_jobs:
                sim.state.seed_history(args.seed_jobs)
            log.info(
                "simulator_listening", url=sim.url, seed=config.seed, historic_jobs=args.seed_jobs
            )
            print(sim.url, flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()

    asyncio.run(serve())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
