"""Which Box user a store belongs to. A snapshot diffed against another user's listing would
announce every job of both as vanished and discovered: a store remembers the user (and
enterprise) it watches, and a daemon whose token acts for someone else refuses to start on it."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from monitor.box.client import BoxClient
from monitor.box.models import User
from monitor.errors import IdentityMismatch
from monitor.metrics import Metrics
from monitor.model import BoxIdentity, SnapshotChanges
from monitor.recorder import META_REBASELINE
from monitor.store.base import Store

log = structlog.get_logger(__name__)

META_USER_ID = "box_user_id"
META_ENTERPRISE_ID = "box_enterprise_id"


def identity_of(user: User) -> BoxIdentity:
    enterprise = user.enterprise.id if user.enterprise is not None else None
    return BoxIdentity(user_id=user.id, enterprise_id=enterprise)


async def stored_identity(store: Store) -> BoxIdentity | None:
    user_id = await store.get_meta(META_USER_ID)
    if user_id is None:
        return None
    return BoxIdentity(user_id, await store.get_meta(META_ENTERPRISE_ID) or None)


async def claim(store: Store, seen: BoxIdentity, *, adopt: bool, now: float) -> None:
    """Record `seen` as the store's identity, or check it against the one recorded. Raises
    `IdentityMismatch` for another identity unless `adopt`, which takes the store over."""
    stored = await stored_identity(store)
    if stored == seen:
        return
    meta = {META_USER_ID: seen.user_id, META_ENTERPRISE_ID: seen.enterprise_id or ""}
    if stored is not None:
        if not adopt:
            raise IdentityMismatch(stored.describe(), seen.describe(), repr(store))
        meta[META_REBASELINE] = repr(now)
        log.warning(
            "identity_adopted",
            previous_user_id=stored.user_id,
            previous_enterprise_id=stored.enterprise_id,
            user_id=seen.user_id,
            enterprise_id=seen.enterprise_id,
            next_sweep="silent baseline",
        )
    else:
        log.info("identity_recorded", user_id=seen.user_id, enterprise_id=seen.enterprise_id)
    await store.commit(SnapshotChanges(), [], meta=meta, now=now)


class IdentityGuard:
    """Asks Box once who the credentials act for and claims the store for it. `verify` is a
    no-op once it has succeeded; until then every sweep calls it first, so a daemon that
    started while Box was unreachable still checks before it commits anything."""

    def __init__(
        self,
        box: BoxClient,
        store: Store,
        metrics: Metrics,
        *,
        adopt: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.box = box
        self.store = store
        self.metrics = metrics
        self.adopt = adopt
        self.clock = clock
        self.identity: BoxIdentity | None = None
        self._refused: BoxIdentity | None = None

    def forget(self) -> None:
        """The credentials changed (a reload): ask Box again before the next sweep."""
        self.identity = None

    async def verify(self) -> BoxIdentity:
        if self.identity is not None:
            return self.identity
        seen = identity_of(await self.box.get_current_user())
        try:
            await claim(self.store, seen, adopt=self.adopt, now=self.clock())
        except IdentityMismatch as exc:
            self.metrics.mass_change_refused.labels("identity").inc()
            if seen != self._refused:  # one line per identity refused, not one per sweep
                self._refused = seen
                log.error("identity_mismatch", stored=exc.stored, seen=exc.seen)
            raise
        self.identity = seen
        return seen
