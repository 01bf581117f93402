"""Wiring and lifecycle of the whole process: one `AccountUnit` per configured Box account
(`monitor/account.py`), and what they share: the notifier registry, the metrics registry, the
event-loop lag sampler and the web server. Every component registers its own teardown on one
AsyncExitStack as it starts, so a failure half-way through start-up still closes what was
opened. Stopping has three steps, in every unit at once: stop taking new work (scheduler,
sweeps), drain deliveries within a deadline, close.

`reload()` (SIGHUP) swaps notifiers, routes and delivery settings as a unit, and each account's
Box credentials (`box.auth`) in its running client; every other setting holds open connections,
files or sockets and changes only on a restart. A reload is all or nothing over every account."""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import structlog

from monitor.account import AccountUnit, PreparedReload, RunState, account_path, baseline_at
from monitor.box.webhooks import Verdict
from monitor.config import AccountConfig, Config
from monitor.errors import ConfigError, InvalidInput, WatchRefused
from monitor.hints import ingest
from monitor.lease import LeaseKeeper
from monitor.looplag import LoopLagSampler
from monitor.metrics import Metrics
from monitor.model import DEFAULT_ACCOUNT
from monitor.notify.base import NotifierRegistry
from monitor.store import open_store
from monitor.store.base import EventQuery, EventRecord, SilenceStore, Store
from monitor.ui import AccountSources, StatusPage, StatusSources
from monitor.web import WebServer, build_app

__all__ = ["AccountUnit", "Daemon", "RunState"]

log = structlog.get_logger(__name__)

# What a reload may change; every other top-level section differs only through a restart.
LIVE_SECTIONS = frozenset({"notifiers", "routes", "delivery"})
# Sections compared account by account (`_account_changes`), not as a whole.
PER_ACCOUNT_SECTIONS = frozenset({"box", "accounts", "poll"})


def _restart_only(old: Config, new: Config) -> list[str]:
    """The settings `new` changes that only a restart applies: the set of accounts, and each
    account's `box` key by key (its `auth` is live) and `poll`."""
    fixed = [
        name
        for name in type(new).model_fields
        if name not in LIVE_SECTIONS | PER_ACCOUNT_SECTIONS
        and getattr(new, name) != getattr(old, name)
    ]
    before = {a.name: a for a in old.account_configs}
    after = {a.name: a for a in new.account_configs}
    if before.keys() != after.keys():
        return [*fixed, "accounts (added or removed)"]
    for name, account in after.items():
        fixed += _account_changes(before[name], account, account_path(new, name))
    return fixed


def _account_changes(old: AccountConfig, new: AccountConfig, prefix: str) -> list[str]:
    fixed = [
        f"{prefix}box.{key}"
        for key in type(new.box).model_fields
        if key != "auth" and getattr(new.box, key) != getattr(old.box, key)
    ]
    if new.poll != old.poll:
        fixed.append(f"{prefix}poll")
    return fixed


class Daemon:
    """The running monitor: `async with Daemon(config) as d: await d.wait_stopped()`."""

    def __init__(
        self,
        config: Config,
        *,
        registry: NotifierRegistry | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        adopt_identity: bool = False,
        accept_mass_vanish: bool = False,
    ) -> None:
        """`clock` (wall) stamps what is stored and shown; `monotonic` times every interval,
        deadline and backoff (a wall-clock step must not stall polling)."""
        self.config = config
        self.monotonic = monotonic
        self.registry = registry or NotifierRegistry.from_entry_points()
        accounts = config.account_configs
        # Seen from the first account, so that no series of an account not configured appears.
        self.metrics = metrics or Metrics(account=accounts[0].name)
        self.state = RunState.NEW
        self._stack = AsyncExitStack()
        self._stop = asyncio.Event()
        # A reload swaps several parts; stopping waits for one in progress instead of racing it.
        self._reload_lock = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task[bool]] = set()
        # The base store (`state.url`): every account's lease and the replica registry, open
        # for the process's life (`_start_keeper`). Silences live there too, shared by every
        # account and replica: with one account it is the account's own store, which its
        # dispatcher reads through its own handle; with several, every dispatcher reads it.
        self.base: Store = open_store(config.state.url)
        self.silence_store: Store | None = None if config.accounts is None else self.base
        self.units: dict[str, AccountUnit] = {
            account.name: AccountUnit(
                account,
                config,
                registry=self.registry,
                metrics=self.metrics.for_account(account.name),
                clock=clock,
                monotonic=monotonic,
                adopt_identity=adopt_identity,
                accept_mass_vanish=accept_mass_vanish,
                silences=self.silence_store,
            )
            for account in accounts
        }
        # What the status page and the events API read, per account: a handle open on every
        # replica whether or not it leads the account (reads need no lease; the unit's own
        # handle is closed while it is a standby). `state.url`'s account reads the base store.
        self.readers: dict[str, Store] = {
            name: self.base if unit.state_url == config.state.url else open_store(unit.state_url)
            for name, unit in self.units.items()
        }
        self.web: WebServer
        self.keeper: LeaseKeeper

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.state is not RunState.NEW:
            raise RuntimeError(f"cannot start a daemon that is {self.state.value}")
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            self.state = RunState.STOPPED
            raise
        self.state = RunState.RUNNING
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.state is RunState.RUNNING:
            log.info("daemon_stopping")
            async with self._reload_lock:
                self.state = RunState.STOPPED
                await self._stack.aclose()
            log.info("daemon_stopped")

    async def _start(self) -> None:
        cfg = self.config
        lag = LoopLagSampler(self.metrics.event_loop_lag)
        lag.start()
        self._stack.push_async_callback(lag.stop)
        await self._start_keeper(cfg)

        self.web = WebServer(
            build_app(
                self.metrics.registry,
                self.readiness,
                watch=self.watch,
                api_token=cfg.http.api_token,
                live=self.liveness,
                ui=self._status_page(),
                silences=self._silences(),
                events=self._events,
                box_webhook=self.box_webhook if self._takes_box_webhooks() else None,
            ),
            cfg.http.host,
            cfg.http.port,
        )
        await self.web.start()
        self._stack.push_async_callback(self.web.close)
        log.info("http_listening", url=self.web.url)

    async def _start_keeper(self, cfg: Config) -> None:
        """The base store (`state.url`: every account's lease, the replica registry) stays
        open for the process's life, and with SQLite its lock makes this process the file's
        one replica. The keeper runs the units of the accounts this replica leads: its first
        round runs now, so a lone replica leads every account before it serves `/readyz`."""
        self._stack.enter_context(self.base.replica_lock())
        await self.base.open()
        self._stack.push_async_callback(self.base.close)
        for reader in self.readers.values():
            if reader is not self.base:
                await reader.open()
                self._stack.push_async_callback(reader.close)
        self.keeper = LeaseKeeper(
            self.base, self.units, self.metrics, ttl_s=cfg.ha.lease_ttl, monotonic=self.monotonic
        )
        for unit in self.units.values():
            unit.lease_lost_listener = self.keeper.lease_lost
        # Leases released, units stopped together (each drains within the same deadline).
        self._stack.push_async_callback(self.keeper.stop)
        await self.keeper.start()

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    def install_signal_handlers(self, reload: Callable[[], Config] | None = None) -> None:
        """SIGTERM and SIGINT stop; SIGHUP calls `reload` for a new config and applies it."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, self._reload_soon, reload)

    # -- live reconfiguration -------------------------------------------------------------

    def _reload_soon(self, load: Callable[[], Config]) -> None:
        task = asyncio.create_task(self._reload_from(load), name="reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def _reload_from(self, load: Callable[[], Config]) -> bool:
        log.info("config_reload_requested")
        try:
            new = load()
        except ConfigError as exc:
            log.error("config_reload_rejected", problems=exc.problems, kept="running config")
            return False
        except Exception:
            log.exception("config_reload_failed", kept="running config")
            return False
        return await self.reload(new)

    async def reload(self, new: Config) -> bool:
        """Apply `new` if it differs only in notifiers, routes, delivery and each account's
        `box.auth`: build every account's new auth and notifiers, then swap them in, account
        by account (routes, dispatcher, Box client's auth). Anything refused or failing in any
        account leaves the running configuration of every account exactly as it was."""
        async with self._reload_lock:
            if self.state is not RunState.RUNNING:
                log.warning("config_reload_ignored", reason=f"daemon is {self.state.value}")
                return False
            fixed = _restart_only(self.config, new)
            if fixed:
                log.error(
                    "config_reload_refused",
                    reason="these settings change only on a restart",
                    settings=fixed,
                    kept="running config",
                )
                return False
            prepared: list[tuple[AccountUnit, PreparedReload]] = []
            try:
                for account in new.account_configs:
                    unit = self.units[account.name]
                    prepared.append((unit, await unit.prepare_reload(account, new)))
            except Exception as exc:
                for _, ready in prepared:
                    await ready.discard()
                problem = "; ".join(exc.problems) if isinstance(exc, ConfigError) else exc
                log.error(
                    "config_reload_failed",
                    error=f"{type(exc).__name__}: {problem}",
                    kept="running config",
                )
                return False
            for unit, ready in prepared:
                await unit.apply_reload(ready)
            old_names = {spec.name for spec in self.config.notifiers}
            names = {spec.name for spec in new.notifiers}
            self.config = new
            log.info(
                "config_reloaded",
                notifiers=sorted(names),
                added=sorted(names - old_names),
                removed=sorted(old_names - names),
                routes=len(new.routes),
            )
            return True

    # -- the HTTP API ---------------------------------------------------------------------

    def watch(self, batch_id: str, account: str | None = None) -> bool:
        """Watch `batch_id` in `account` (optional when there is one account). Raises
        `WatchRefused` for an account that is not configured or not running here."""
        return self.unit_for(account).watch(batch_id)

    def unit_for(self, account: str | None) -> AccountUnit:
        names = sorted(self.units)
        if account is None:
            if len(names) != 1:
                raise WatchRefused(400, f"name the account (?account=): one of {', '.join(names)}")
            account = names[0]
        unit = self.units.get(account)
        if unit is None:  # the caller's text is not echoed
            raise WatchRefused(404, f"no such account; configured: {', '.join(names)}")
        if not unit.running:
            raise WatchRefused(503, f"account {unit.name} is not polled by this process")
        return unit

    def _takes_box_webhooks(self) -> bool:
        return any(a.box.webhook.enabled for a in self.config.account_configs)

    def box_webhook(self, body: bytes, headers: Mapping[str, str]) -> Verdict:
        """A Box notification, for every running account whose signature keys verify it."""
        accounts = [u.hints for u in self.units.values() if u.running and u.hints is not None]
        return ingest(accounts, body, headers, self.metrics)

    # -- health ---------------------------------------------------------------------------

    def _silences(self) -> SilenceStore:
        """Where silences are kept: `state.url`'s store, open on a standby too."""
        return self.base

    async def _events(self, query: EventQuery, account: str | None) -> list[EventRecord]:
        """The history of one account's store (the first configured by default), read
        through its reader: a standby answers too."""
        name = next(iter(self.units)) if account is None else account
        reader = self.readers.get(name)
        if reader is None:
            known = ", ".join(self.units)
            raise InvalidInput([f"query.account: no account named {account!r} (known: {known})"])
        return await reader.list_events(query)

    async def _leaders(self) -> dict[str, str]:
        """Each account's leader: the owner of its live lease (an account nobody leads is
        absent)."""
        leases = await self.base.leases()
        return {name: lease.owner for name, lease in leases.items() if lease.live and lease.owner}

    def _retry_dead(self, unit: AccountUnit) -> Callable[[str, str | None], Awaitable[int]]:
        """Requeue dead letters: through the unit where this replica leads the account (its
        dispatcher wakes at once), else through the reader, unfenced. That is safe: the
        update only turns `dead` rows `pending`, rows no dispatcher claims or writes, so it
        cannot cross the leader's fenced claims, whose dispatcher sends them within
        IDLE_RECHECK_S (as after `docgen-monitor dead-letters retry`)."""
        reader = self.readers[unit.name]

        async def retry(notifier: str, event_id: str | None) -> int:
            if unit.running:
                return await unit.retry_dead(notifier, event_id)
            count = await reader.requeue_dead(unit.clock(), event_id=event_id, notifier=notifier)
            if count:
                log.info("dead_letters_retried", account=unit.name, notifier=notifier,
                         event_id=event_id, count=count, on="standby")
            return count

        return retry

    def _status_page(self) -> StatusPage:
        """The status page: every account, on every replica (a standby reads the store and
        names the leader)."""
        clock = next(iter(self.units.values())).clock
        accounts = [
            AccountSources(
                name=name,
                store=self.readers[name],
                polling=unit.polling_health,
                active=unit.followed,
                retry_dead=self._retry_dead(unit),
                baseline_at=functools.partial(baseline_at, self.readers[name]),
            )
            for name, unit in self.units.items()
        ]
        sources = StatusSources(
            accounts=accounts,
            notifiers=lambda: [spec.name for spec in self.config.notifiers],
            leaders=self._leaders,
            replica=self.keeper.replica,
            clock=clock,
            silences=self._silences(),
            add_silence=self._silences().add_silence,
            expire_silence=lambda silence_id: self._silences().expire_silence(
                silence_id, clock()
            ),
        )
        return StatusPage(
            sources,
            ui_token=self.config.http.ui_token,
            api_token=self.config.http.api_token,
            monotonic=self.monotonic,
        )

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the base store answers and every account this replica leads is ready:
        a healthy standby is ready too (it serves metrics and can take over). `leading`
        names the accounts it leads. One account led: its details as they are; several:
        each led account's details under `accounts`."""
        role = {"replica": self.keeper.replica, "leading": self.keeper.leading}
        led = [self.units[name] for name in self.keeper.leading]
        if set(self.units) == {DEFAULT_ACCOUNT} and self.config.accounts is None and led:
            ready, details = await led[0].readiness()
            return ready, {**details, **role}
        try:
            await self.base.ping()
            store = "ok"
        except Exception as exc:
            store = f"error: {type(exc).__name__}"
        results = await asyncio.gather(*(unit.readiness() for unit in led))
        details = {
            unit.name: {"ready": ready, **detail}
            for unit, (ready, detail) in zip(led, results, strict=True)
        }
        ready = store == "ok" and all(ready for ready, _ in results)
        return ready, {"store": store, **role, "accounts": details}

    def liveness(self) -> str | None:
        """None while alive; the reason when a restart is the only way out (`/healthz`)."""
        if self.keeper.unwritable is not None:
            return self.keeper.unwritable
        for unit in self.units.values():
            reason = unit.liveness()
            if reason is not None:
                return reason if len(self.units) == 1 else f"account {unit.name}: {reason}"
        return None
