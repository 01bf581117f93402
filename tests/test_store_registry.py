"""Backends are chosen by URL scheme through one table (`monitor.store.registry.BACKENDS`),
which both `open_store` and the configuration check ask: a new backend is one class plus one
line there, with no other place to edit."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import pytest
from pydantic import ValidationError

from monitor.config import StateConfig
from monitor.errors import UnsupportedStoreURL
from monitor.store import open_store
from monitor.store.registry import BACKENDS
from monitor.store.sqlite import SQLiteStore


class ScratchStore(SQLiteStore):
    """A stand-in second backend: `scratch:PATH` (SQLite underneath, another scheme on top)."""

    @classmethod
    def from_url(cls, url: str) -> Self:
        path = url.removeprefix("scratch:")
        if not path:
            raise ValueError("expected scratch:PATH")
        return cls(path)


def test_an_unregistered_scheme_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError) as info:
        StateConfig(url="scratch:/tmp/x.db")
    assert ("unsupported state url scheme 'scratch' "
            "(expected postgres://..., postgresql://..., sqlite://...)") in str(info.value)
    with pytest.raises(UnsupportedStoreURL):
        open_store("scratch:/tmp/x.db")


async def test_one_registry_line_makes_a_backend_configurable_and_openable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BACKENDS, "scratch", f"{__name__}:ScratchStore")
    url = f"scratch:{tmp_path / 'state.db'}"
    assert StateConfig(url=url).url == url
    with pytest.raises(ValidationError, match="expected scratch:PATH"):
        StateConfig(url="scratch:")
    store = open_store(url)
    assert type(store) is ScratchStore
    async with store:
        await store.ping()
    assert (tmp_path / "state.db").exists()


def test_a_malformed_sqlite_url_names_the_expected_form() -> None:
    with pytest.raises(ValidationError, match=r"expected sqlite:///relative/path"):
        StateConfig(url="sqlite:///")


@pytest.mark.parametrize(("url", "account", "expected"), [
    ("sqlite:////var/lib/m/state.db", "default", "sqlite:////var/lib/m/state.db"),
    ("sqlite:////var/lib/m/state.db", "eu", "sqlite:////var/lib/m/state.eu.db"),
    ("sqlite:///rel/state", "us-east", "sqlite:///rel/state.us-east"),
    ("postgresql://u:p@db:5432/m", "default", "postgresql://u:p@db:5432/m"),
    ("postgresql://u:p@db:5432/m", "eu", "postgresql://u:p@db:5432/m?schema=public_eu"),
    ("postgresql://u:p@db/m?sslmode=require&schema=mon", "eu",
     "postgresql://u:p@db/m?sslmode=require&schema=mon_eu"),
])
def test_each_account_has_its_own_state_beside_the_configured_one(
    url: str, account: str, expected: str,
) -> None:
    """`default` keeps `state.url` (a single-account store keeps its state); another account
    gets a sibling SQLite file or a PostgreSQL schema derived from the configured one."""
    from monitor.store.registry import account_url

    assert account_url(url, account) == expected
