"""One exception class per failure, all under `MonitorError`; each builds its message from the
offending value so that call sites stay short and messages stay consistent."""

from __future__ import annotations


class MonitorError(Exception):
    """Root of every error docgen-monitor raises on purpose."""


class ConfigError(MonitorError):
    """The configuration is invalid; `problems` lists every one as `path: message`."""

    heading = "invalid configuration"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:  # one problem, one line
            super().__init__(f"{self.heading}: {problems[0]}")
        else:
            super().__init__(f"{self.heading}:\n" + "\n".join(f"  {p}" for p in problems))


class InvalidInput(ConfigError):
    """A command's or an API request's input is invalid (a silence's match, a filter, an id);
    exits 2 like a configuration problem, and the API answers 400 with `problems`."""

    heading = "invalid input"


class ListenError(ConfigError):
    """`http.listen` names an address this host cannot listen on (in use, not local, unknown)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__([f"http.listen: cannot listen on {address}: {reason}"])


class StoreError(MonitorError):
    """The state store failed or holds something this version cannot read."""


class LeaseLost(StoreError):
    """A fenced write found that its replica no longer holds the account's lease: another
    replica took it over. Nothing of the write was committed."""

    def __init__(self, account: str, owner: str, epoch: int) -> None:
        self.account = account
        self.owner = owner
        self.epoch = epoch
        super().__init__(
            f"replica {owner} lost the lease of account {account!r} (epoch {epoch}): "
            "another replica holds it now; nothing was written"
        )


class StoreLocked(StoreError):
    """Another process runs the daemon on this single-replica store (a SQLite file)."""

    def __init__(self, where: str, holder: str) -> None:
        super().__init__(
            f"another docgen-monitor ({holder}) is running on {where}: a SQLite state file "
            "serves one replica; stop it, or use a postgresql:// state.url for several"
        )


class UnsupportedStoreURL(StoreError):
    def __init__(self, url: str, known: list[str]) -> None:
        scheme = url.split(":", 1)[0] if ":" in url else ""
        expected = ", ".join(f"{k}://..." for k in known)
        super().__init__(f"unsupported state url scheme {scheme!r} (expected {expected})")


class SchemaTooNew(StoreError):
    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"store schema version {found} is newer than this build knows ({known}); upgrade"
        )


class StoreNotEmpty(StoreError):
    """A copy into a store that already holds state (`state migrate` without `--replace`)."""

    def __init__(self, where: str, tables: list[str]) -> None:
        self.tables = tables
        super().__init__(
            f"the target store {where} already holds state ({', '.join(tables)}); nothing was "
            "copied. Point --to at an empty database or schema, or add --replace to delete "
            "what it holds first"
        )


class UnknownNotifierType(MonitorError):
    def __init__(self, type_name: str, known: list[str]) -> None:
        super().__init__(f"unknown notifier type {type_name!r}; known: {', '.join(sorted(known))}")


class IdentityMismatch(MonitorError):
    """The store was written for another Box user or enterprise than the credentials act for.
    `stored` and `seen` describe both (`user 123 (enterprise 456)`)."""

    def __init__(self, stored: str, seen: str, where: str) -> None:
        self.stored = stored
        self.seen = seen
        super().__init__(
            f"the state store {where} belongs to Box {stored}, but the configured credentials "
            f"act for Box {seen}. Nothing was changed. To watch {seen}, point state.url at a "
            "new state file; to take this store over for it, start once with "
            "`docgen-monitor run --adopt-identity` (its next sweep records a new silent "
            "baseline)."
        )


class WatchRefused(MonitorError):
    """The watch API cannot act for the account asked (unknown, ambiguous, not run here);
    `status` is the HTTP answer. The message never repeats the caller's text."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(reason)
