"""A store remembers the Box user and enterprise it watches; another identity is refused with
both ids named and a way out, unless the operator adopts the store."""

from __future__ import annotations

import pytest

from monitor.box.models import User
from monitor.errors import IdentityMismatch
from monitor.identity import (
    claim,
    identity_of,
    stored_identity,
)
from monitor.model import BoxIdentity
from monitor.recorder import META_REBASELINE
from monitor.store.base import Store

NOW = 1_800_000_000.0
ALICE = BoxIdentity("20000001", "e-1")
BOB = BoxIdentity("30000002", "e-2")


async def test_the_first_identity_is_recorded_and_the_same_one_passes(store: Store) -> None:
    assert await stored_identity(store) is None
    await claim(store, ALICE, adopt=False, now=NOW)
    assert await stored_identity(store) == ALICE
    await claim(store, ALICE, adopt=False, now=NOW + 1)
    assert await store.get_meta(META_REBASELINE) is None


async def test_another_identity_is_refused_naming_both_and_how_to_proceed(store: Store) -> None:
    await claim(store, ALICE, adopt=False, now=NOW)
    with pytest.raises(IdentityMismatch) as caught:
        await claim(store, BOB, adopt=False, now=NOW)
    text = str(caught.value)
    for needle in ("20000001", "e-1", "30000002", "e-2", "new state file", "--adopt-identity"):
        assert needle in text
    assert await stored_identity(store) == ALICE  # nothing changed


async def test_adopting_takes_the_store_over_and_asks_for_a_new_baseline(store: Store) -> None:
    await claim(store, ALICE, adopt=False, now=NOW)
    await claim(store, BOB, adopt=True, now=NOW + 5)
    assert await stored_identity(store) == BOB
    assert await store.get_meta(META_REBASELINE) == repr(NOW + 5)


def test_the_identity_is_the_user_and_its_enterprise_from_users_me() -> None:
    user = User.model_validate({"type": "user", "id": "7", "login": "a@b",
                                "enterprise": {"type": "enterprise", "id": "99", "name": "x"}})
    assert identity_of(user) == BoxIdentity("7", "99")
    free = User.model_validate({"type": "user", "id": "8", "enterprise": None})
    assert identity_of(free) == BoxIdentity("8", None)
