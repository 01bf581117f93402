"""Store backends by URL scheme. A backend is one module with a `Store` class and one line in
`BACKENDS`; `open_store` and the configuration check (`state.url`) both ask this table, so no
other place knows which schemes exist. Backends are imported only when a URL names them."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from monitor.errors import UnsupportedStoreURL

if TYPE_CHECKING:
    from monitor.store.base import Store

#: scheme -> "module:Class" of a `Store` whose `from_url` builds it from the whole URL.
BACKENDS: dict[str, str] = {
    "sqlite": "monitor.store.sqlite:SQLiteStore",
    "postgresql": "monitor.store.postgres:PostgresStore",
    "postgres": "monitor.store.postgres:PostgresStore",
}


def scheme_of(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def backend_class(url: str) -> type[Store]:
    """The registered `Store` class for `url`'s scheme; `UnsupportedStoreURL` if there is none."""
    target = BACKENDS.get(scheme_of(url))
    if target is None:
        raise UnsupportedStoreURL(url, known=sorted(BACKENDS))
    module, _, name = target.partition(":")
    cls: type[Store] = getattr(import_module(module), name)
    return cls


def open_store(url: str) -> Store:
    """A store for `url`, not yet opened (`async with open_store(url) as store: ...`)."""
    return backend_class(url).from_url(url)


def account_url(url: str, account: str) -> str:
    """The state URL of Box account `account` beside `url` (its backend decides how)."""
    return backend_class(url).account_url(url, account)


def check_url(url: str) -> None:
    """Raise `ValueError` saying what is wrong with `url` (unknown scheme, malformed)."""
    try:
        backend_class(url).from_url(url)
    except UnsupportedStoreURL as exc:
        raise ValueError(str(exc)) from None
