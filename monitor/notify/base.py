"""The notifier axis: what a notifier declares, what `send` returns, and the registry that finds
every notifier type through the entry point group `docgen_monitor.notifiers`.

Built-ins are registered through that same group in pyproject.toml, exactly as a third-party
package would register its own. A type's module is imported when the type is first asked for:
a process loads only the notifiers its configuration names (`once` names none)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import aiohttp
from pydantic import ConfigDict, Field

from monitor.config import DurationS, NotifierSpec, PositiveDurationS
from monitor.errors import UnknownNotifierType
from monitor.model import Event

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from monitor.notify.render import BatchView
    from monitor.store.base import NotifierStore

ENTRY_POINT_GROUP = "docgen_monitor.notifiers"


GroupField = Literal["batch", "template", "to_status"]


class NotifierConfig(NotifierSpec):
    """Settings every notifier has; a notifier type subclasses this with its own fields.

    Grouping, as Alertmanager users know it: with `group_by` set (a list, possibly empty for
    one group of everything), events are sent together per group: the first time
    `group_wait` after the group's oldest event, then at most once per `group_interval`.
    `group_by: null` (the default for webhook and console) sends one event per `send`, up to
    `concurrency` sends at once; the events of one job still go one after another, in order
    (a grouped notifier sends one group at a time)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_attempts: int | None = Field(None, ge=1)  # None: `delivery.max_attempts` (off: None)
    concurrency: int = Field(16, ge=1, le=1000)
    timeout: PositiveDurationS | None = None
    group_by: list[GroupField] | None = None
    group_wait: DurationS = 0.0
    group_interval: DurationS = 5.0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a receiver said about the events of one `send`.

    `retry_after_s` is the receiver's own hint (Retry-After); `rate_limited` says the receiver
    throttled us, so the retry does not count as a failed attempt. `held` names events the
    notifier chose not to send yet (sent with a later group); `settled` names events that
    were delivered although the whole send failed (a partial success must not repeat)."""

    ok: bool
    detail: str
    retry_after_s: float | None = None
    rate_limited: bool = False
    held: frozenset[str] = frozenset()
    settled: frozenset[str] = frozenset()

    @classmethod
    def delivered(cls, detail: str = "ok", held: Iterable[str] = ()) -> DeliveryResult:
        return cls(True, detail, held=frozenset(held))

    @classmethod
    def failed(
        cls,
        detail: str,
        retry_after_s: float | None = None,
        *,
        rate_limited: bool = False,
        settled: Iterable[str] = (),
        held: Iterable[str] = (),
    ) -> DeliveryResult:
        return cls(
            False,
            detail,
            retry_after_s,
            rate_limited=rate_limited,
            held=frozenset(held),
            settled=frozenset(settled),
        )


class Notifier(ABC):
    """Sends events somewhere. Subclasses set `type_name` and `config_model`."""

    type_name: ClassVar[str]
    config_model: ClassVar[type[NotifierConfig]]

    def __init__(self, config: NotifierConfig, *, timeout_s: float) -> None:
        self.config = config
        self.name = config.name
        self.timeout_s = config.timeout if config.timeout is not None else timeout_s
        self.store: NotifierStore | None = None
        #: Several Box accounts are configured: messages name the account of their events.
        self.show_account = False

    def attach(self, store: NotifierStore) -> None:
        """The state store, for notifiers that keep state (Slack threads, batch counts)."""
        self.store = store

    async def batch_view(self, batch_id: str, events: Sequence[Event]) -> BatchView:
        """The batch as a message shows it, from the store's snapshot; it names the events'
        account when several are configured."""
        # Here, not at the top: the renderer loads Jinja, which a run without message
        # notifiers (and `once`) never needs (~20 ms of every start).
        from monitor.notify.render import load_batch_view

        account = events[0].account if self.show_account and events else None
        return await load_batch_view(self.store, batch_id, events, account=account)

    @classmethod
    def from_spec(cls, spec: NotifierSpec, *, timeout_s: float) -> Self:
        return cls(cls.config_model.model_validate(spec.model_dump()), timeout_s=timeout_s)

    async def start(self) -> None:  # noqa: B027 - optional hook: most notifiers need none
        """Open connections; called once before the first `send`."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; idempotent."""

    async def settle(self, event_ids: Iterable[str]) -> None:
        """Record at once that these events reached the receiver, before `send` returns: a
        send of several steps (a Slack parent, then thread replies) must not repeat its
        finished steps after a crash. The dispatcher's own mark later is a no-op for them."""
        if self.store is not None:
            await self.store.mark_delivered_many(self.name, list(event_ids))

    def check_templates(self) -> list[str]:
        """Render every template this notifier uses against sample events; one problem per
        template that fails (`check-config` refuses them). Notifiers without templates: []."""
        return []

    @abstractmethod
    async def send(self, events: Sequence[Event]) -> DeliveryResult:
        """Deliver `events` (one, unless the notifier groups). Never raises for a receiver's
        failure: that is a `DeliveryResult.failed`, which the dispatcher retries."""


class HttpNotifier(Notifier):
    """A notifier that talks HTTP: one aiohttp session for its lifetime, opened on first use."""

    def __init__(self, config: NotifierConfig, *, timeout_s: float) -> None:
        super().__init__(config, timeout_s=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": "docgen-monitor"},
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def session(self) -> aiohttp.ClientSession:
        await self.start()
        assert self._session is not None
        return self._session


class EntryPointTypes(Mapping[str, type[Notifier]]):
    """Notifier types by name: those of the entry point group (read on first use) and `extra`
    (which win over a name the group also has). A type's class is imported when first looked
    up; one that is not a Notifier raises TypeError then."""

    def __init__(self, group: str, extra: Mapping[str, type[Notifier]] | None = None) -> None:
        self.group = group
        self._loaded: dict[str, type[Notifier]] = dict(extra or {})
        self._points: dict[str, EntryPoint] | None = None

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._points is None:
            from importlib.metadata import entry_points

            self._points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._points

    def __getitem__(self, name: str) -> type[Notifier]:
        if name not in self._loaded:
            ep = self._entry_points()[name]  # KeyError: no such type
            loaded: Any = ep.load()
            if not (isinstance(loaded, type) and issubclass(loaded, Notifier)):
                raise TypeError(f"entry point {ep.name!r} does not name a Notifier class")
            self._loaded[name] = loaded
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:  # without importing the type
        return name in self._loaded or name in self._entry_points()

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._entry_points()), **dict.fromkeys(self._loaded)})

    def __len__(self) -> int:
        return len(self._entry_points().keys() | self._loaded.keys())


class _ConfigModels(Mapping[str, type[NotifierSpec]]):
    """Each type's config model, read through the types (so imported on first look-up)."""

    def __init__(self, types: Mapping[str, type[Notifier]]) -> None:
        self._types = types

    def __getitem__(self, name: str) -> type[NotifierSpec]:
        return self._types[name].config_model

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)


class NotifierRegistry:
    """Notifier types by name. Not a process-wide singleton: each daemon builds its own."""

    def __init__(self, types: Mapping[str, type[Notifier]]) -> None:
        self.types = types if isinstance(types, EntryPointTypes) else dict(types)

    @classmethod
    def from_entry_points(cls, extra: Mapping[str, type[Notifier]] | None = None) -> Self:
        return cls(EntryPointTypes(ENTRY_POINT_GROUP, extra))

    def config_models(self) -> Mapping[str, type[NotifierSpec]]:
        return _ConfigModels(self.types)

    def create(self, spec: NotifierSpec, *, timeout_s: float) -> Notifier:
        try:
            notifier_type = self.types[spec.type]
        except KeyError:
            raise UnknownNotifierType(spec.type, list(self.types)) from None
        return notifier_type.from_spec(spec, timeout_s=timeout_s)
