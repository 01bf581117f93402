"""Configuration: a YAML file, `${VAR}` expansion for secrets, environment overrides, validated by
pydantic with `extra="forbid"`. Durations are converted to seconds here, once, at the edge.

Every problem is reported with its path (`notifiers[0].url: ...`) in one `ConfigError`."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor.errors import ConfigError
from monitor.model import BOX_OUTPUT_TYPES, DEFAULT_ACCOUNT, KNOWN_STATUSES, EventType
from monitor.store.registry import check_url
from monitor.yaml_input import YAMLInputError, parse_yaml, read_config_text

ENV_PREFIX = "DOCGEN_MONITOR_"
#: Names the configuration file for the CLI (`--config`); not an override.
CONFIG_PATH_ENV = ENV_PREFIX + "CONFIG"
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
# One or more `<number><unit>` parts: `500ms`, `90s`, `1h30m`, `1d 12h`.
_DURATION = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: The longest duration accepted (ten years): past it timers and date arithmetic overflow.
MAX_DURATION_S = 3650 * 86400.0
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def parse_duration_s(value: Any) -> float:
    """`500ms`, `2s`, `5m`, `1h`, `7d`, a compound like `1h30m`, or a plain number of seconds
    -> seconds. Finite and at most `MAX_DURATION_S` (YAML's `.inf` is a float). The value is
    not echoed: it may come from an environment variable."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _NUMBER.match(value)):
        seconds = float(m.group(1))
    elif isinstance(value, str) and _DURATION.match(value):
        seconds = sum(
            float(number) * _UNIT_S[unit] for number, unit in _DURATION_PART.findall(value)
        )
    if seconds is None:
        raise ValueError(
            "invalid duration: expected e.g. 500ms, 2s, 5m, 1h30m or a number of seconds"
        )
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ValueError("invalid duration: must be finite and at most 3650d")
    return seconds


DurationS = Annotated[float, BeforeValidator(parse_duration_s), Field(ge=0)]
PositiveDurationS = Annotated[float, BeforeValidator(parse_duration_s), Field(gt=0)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[str] | None, BeforeValidator(_as_list)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


class DeveloperTokenAuthConfig(_Model):
    method: Literal["developer_token"]
    token: SecretStr


class CCGAuthConfig(_Model):
    method: Literal["ccg"]
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    subject_type: Literal["enterprise", "user"] = "enterprise"
    subject_id: str = Field(min_length=1)


class JWTAuthConfig(_Model):
    """The `config.json` Box's developer console produces (client id and secret, key id,
    passphrase-encrypted PKCS#8 private key, enterprise id). Acts as the enterprise's Service
    Account unless `user_id` is given."""

    method: Literal["jwt"]
    config_file: Path
    user_id: str | None = Field(None, min_length=1)


AuthConfig = Annotated[
    DeveloperTokenAuthConfig | CCGAuthConfig | JWTAuthConfig, Field(discriminator="method")
]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http(s) URL")
    return value.rstrip("/")


class BoxWebhookConfig(_Model):
    """Box's V2 webhooks as a hint to poll: `POST /api/v1/box/webhook` is served only when
    `primary_key` is set. Both keys are the app's signature keys (Developer Console, Webhooks);
    `secondary_key` lets one of them be rotated without refusing a notification."""

    primary_key: SecretStr | None = None
    secondary_key: SecretStr | None = None
    # Webhooks are "healthy" (the active interval may stretch to
    # `poll.active_interval_with_webhooks`) while a verified notification is younger than this
    # and no poll in this window found a change that no notification had announced.
    healthy_within: PositiveDurationS = 300.0

    @model_validator(mode="after")
    def _primary_first(self) -> BoxWebhookConfig:
        if self.secondary_key is not None and not self.enabled:
            raise ValueError("secondary_key is set but primary_key is not: set both, or neither")
        return self

    @property
    def enabled(self) -> bool:
        return self.primary_key is not None and bool(self.primary_key.get_secret_value())


class BoxConfig(_Model):
    base_url: str = "https://api.box.com"
    auth: AuthConfig
    timeout: PositiveDurationS = 30.0
    max_attempts: int = Field(5, ge=1, le=10)
    page_size: int = Field(1000, ge=1, le=1000)
    # Every Box request draws from this budget; Box allows about 1000/min per user, shared with
    # the customer's own application.
    requests_per_minute: float = Field(600.0, gt=0)
    # The longest Box `retry-after` honoured; a longer one is cut to this, logged and counted.
    max_retry_after: DurationS = 120.0
    webhook: BoxWebhookConfig = BoxWebhookConfig()

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value)


class PollConfig(_Model):
    sweep_interval: PositiveDurationS = 60.0
    max_backoff: PositiveDurationS = 600.0  # a failing sweep is retried less often, up to this
    active_interval: PositiveDurationS = 5.0  # batches with non-terminal jobs, polled one by one
    # The head of the listing is read this often (None: the active interval) to find new jobs
    # in seconds; the sweep stays the reconciliation and the only source of `job.vanished`.
    discover_interval: PositiveDurationS | None = None
    # The active interval while Box's webhooks are healthy (`box.webhook`): a notification
    # polls its batches at once, and these polls only reconcile.
    active_interval_with_webhooks: PositiveDurationS = 30.0
    stuck_after: PositiveDurationS | None = None  # job.stuck after this long in one status
    stuck_after_by_template: dict[str, PositiveDurationS] = {}
    watch_ttl: PositiveDurationS = 600.0  # a watched batch Box does not know yet is kept this long
    # Jobs a complete listing missed are read by id (404 = gone) before `job.vanished`; at most
    # this many a sweep, the rest wait for the next sweep.
    vanish_confirm_max: int = Field(200, ge=1, le=10_000)


def url_without_password(url: str) -> str:
    """`url` with the password of its user part masked, for logs, errors and rendered config."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return parts._replace(netloc=f"{user}:**********@{netloc[2]}").geturl()


class TemplateFailuresConfig(_Model):
    """`template.failure_rate_rose` (monitor/template_rates.py): per template version, the
    share of finished jobs that failed over `window`; an event when the newest version with at
    least `min_jobs` finished jobs fails `min_increase` more (absolute: 0.1 is ten points) and
    at least `min_factor` times as often as the version before it."""

    enabled: bool = True
    window: PositiveDurationS = 86400.0
    min_jobs: int = Field(20, ge=1)
    min_increase: float = Field(0.1, gt=0, le=1)
    min_factor: float = Field(2.0, ge=1)


class StateConfig(_Model):
    url: str = "sqlite:///docgen-monitor.db"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        check_url(value)  # the backends' own table decides
        return value


class HaConfig(_Model):
    """Several replicas on one PostgreSQL (monitor/lease.py): each Box account is led by the
    replica holding its lease, renewed every third of `lease_ttl`; a standby takes over once
    it ran out."""

    lease_ttl: PositiveDurationS = 15.0


class DeliveryConfig(_Model):
    """Defaults for every notifier; a notifier may override `max_attempts` and `timeout`.

    An event is dead for a notifier only once its sends have failed for `give_up_after` with
    no success in between: an outage of hours delays delivery, it does not lose it. Retries back
    off from `initial_backoff` to `max_backoff` and stay there. A throttle answer (429,
    Retry-After) is a wait, never a failure. `max_attempts` (off by default) caps tries too."""

    give_up_after: PositiveDurationS = 86400.0
    max_attempts: int | None = Field(None, ge=1)
    initial_backoff: PositiveDurationS = 1.0
    max_backoff: PositiveDurationS = 300.0
    timeout: PositiveDurationS = 10.0
    drain_timeout: DurationS = 10.0
    retention: DurationS = 7 * 86400.0  # delivered events older than this are pruned; 0: never


class NotifierSpec(_Model):
    """Name and type; the rest is checked against the type's own model (see `load_config`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    type: str = Field(min_length=1)


class RouteMatch(_Model):
    """Every key given must match; an absent key matches anything."""

    type: list[EventType] | None = None
    from_status: StrList = None
    to_status: StrList = None
    batch_id: StrList = None
    template_id: StrList = None
    output_type: StrList = None
    creator: StrList = None  # the job's created_by user id
    account: StrList = None  # the Box account's name (`accounts[].name`; `default` for `box:`)

    @field_validator("type", mode="before")
    @classmethod
    def _type_list(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("from_status", "to_status")
    @classmethod
    def _box_statuses(cls, value: list[str] | None) -> list[str] | None:
        return _known_values(value, KNOWN_STATUSES, "a Box job status")

    @field_validator("output_type")
    @classmethod
    def _box_output_types(cls, value: list[str] | None) -> list[str] | None:
        return _known_values(value, BOX_OUTPUT_TYPES, "a Box output type")


def _known_values(
    value: list[str] | None, known: frozenset[str], what: str
) -> list[str] | None:
    """A match on a value Box never reports can never fire: refuse it, naming the known ones."""
    unknown = [v for v in value or [] if v not in known]
    if unknown:
        raise ValueError(
            f"{', '.join(map(repr, unknown))} is not {what} (one of: {', '.join(sorted(known))}); "
            "this match could never fire"
        )
    return value


class Route(_Model):
    match: RouteMatch = RouteMatch()
    notify: list[str] = Field(min_length=1)
    continue_: bool = Field(False, alias="continue")


class HttpConfig(_Model):
    listen: str = "127.0.0.1:9464"
    api_token: SecretStr | None = None  # bearer token of the HTTP API (watch); off when unset
    # The status page (`GET /`) is open to whoever reaches `listen` unless this is set: then a
    # browser asks for it (basic auth, any user name) or a script sends it as a bearer token.
    ui_token: SecretStr | None = None

    @field_validator("ui_token")
    @classmethod
    def _ui_token_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty token would leave the page open to someone who believes it is closed.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty (leave it out to keep the page open)")
        return value
    # Batches watched through the API that Box does not list yet; the watch API answers 429
    # beyond this many.
    max_watched_batches: int = Field(1000, ge=1, le=100_000)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        if not _is_ip_or_hostname(host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _is_ip_or_hostname(host: str) -> bool:
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        # A name's last label is never all digits: `999.1.1.1` is a mistyped address.
        last_label = host.rstrip(".").rsplit(".", 1)[-1]
        return not bracketed and _HOSTNAME.match(host) is not None and not last_label.isdigit()
    return address.version == 6 if bracketed else True


class LogConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


#: A name that is safe as a file name part, a PostgreSQL schema suffix and a metric label.
ACCOUNT_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"


class AccountConfig(_Model):
    """One Box account the deployment watches: its own credentials, request budget, token,
    snapshot and identity. `poll` and `routes`, when given, replace the top-level ones for it."""

    name: str = Field(pattern=ACCOUNT_NAME_PATTERN)
    box: BoxConfig
    poll: PollConfig | None = None
    routes: list[Route] | None = None


class Config(_Model):
    box: BoxConfig | None = None  # one account named `default`; or `accounts:`, not both
    accounts: list[AccountConfig] | None = None
    poll: PollConfig = PollConfig()
    template_failures: TemplateFailuresConfig = TemplateFailuresConfig()
    state: StateConfig = StateConfig()
    baseline: Literal["silent", "notify"] = "silent"
    notifiers: list[NotifierSpec] = []
    routes: list[Route] = []
    delivery: DeliveryConfig = DeliveryConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    ha: HaConfig = HaConfig()

    @model_validator(mode="after")
    def _names_resolve(self) -> Config:
        problems = reference_problems(self.model_dump(include={"notifiers", "routes", "accounts"}))
        problems += account_problems(self.model_dump(include={"box", "accounts", "routes"}))
        if problems:
            raise ConfigError(problems)
        return self

    @property
    def account_configs(self) -> list[AccountConfig]:
        """Every account, each with its own poll and routes settled (its override or the
        top-level section): the top-level `box:` is one account named `default`."""
        accounts = self.accounts or []
        if self.box is not None:
            accounts = [AccountConfig(name=DEFAULT_ACCOUNT, box=self.box)]
        return [
            a.model_copy(update={
                "poll": a.poll if a.poll is not None else self.poll,
                "routes": a.routes if a.routes is not None else self.routes,
            })
            for a in accounts
        ]

    def account(self, name: str | None) -> AccountConfig:
        """The account called `name`; None for the only one. `ConfigError` otherwise."""
        accounts = {a.name: a for a in self.account_configs}
        if name is None and len(accounts) == 1:
            return next(iter(accounts.values()))
        if name in accounts:
            return accounts[name]
        known = ", ".join(accounts)
        if name is None:
            raise ConfigError([f"accounts: several are configured; name one of: {known}"])
        raise ConfigError([f"accounts: no account named {name!r} (configured: {known})"])

    def redacted(self) -> dict[str, Any]:
        """The configuration as JSON-able data with every secret masked. Notifier settings not
        yet checked against their type's model are masked whole: nothing says they are safe."""
        data = self.model_dump(mode="json", by_alias=True)
        data["state"]["url"] = url_without_password(self.state.url)
        for rendered, spec in zip(data["notifiers"], self.notifiers, strict=True):
            if type(spec) is NotifierSpec:
                for key in spec.model_extra or {}:
                    rendered[key] = "**********"
        return data


def reference_problems(data: Mapping[str, Any]) -> list[str]:
    """Duplicate notifier names and routes (top-level or an account's) naming no notifier.
    Works on raw data too, so it is reported alongside every other problem, not only once the
    rest validates."""
    notifiers = data.get("notifiers") or []
    if not isinstance(notifiers, list):
        return []
    names = [n.get("name") if isinstance(n, Mapping) else None for n in notifiers]
    problems = []
    for i, name in enumerate(names):
        if name is not None and name in names[:i]:
            problems.append(f"notifiers[{i}].name: duplicate notifier name {name!r}")
    for path, routes in _route_lists(data):
        for i, route in enumerate(routes):
            notify = route.get("notify") if isinstance(route, Mapping) else None
            for j, name in enumerate(notify if isinstance(notify, list) else []):
                if name not in names:
                    problems.append(f"{path}[{i}].notify[{j}]: no notifier named {name!r}")
    return problems


def account_problems(data: Mapping[str, Any]) -> list[str]:
    """Exactly one of `box:` (one account, `default`) and `accounts:` (a non-empty list of
    uniquely named accounts), and routes that match only configured accounts. Works on raw
    data, like `reference_problems`."""
    box, accounts = data.get("box"), data.get("accounts")
    if box is not None and accounts is not None:
        return ["accounts: give either box (one account) or accounts (a list), not both"]
    if box is None and accounts is None:
        return ["box: field required (or accounts: a list of accounts, each with its own box)"]
    if box is not None:
        return _route_account_problems(data, [DEFAULT_ACCOUNT])
    if not isinstance(accounts, list):
        return []
    if not accounts:
        return ["accounts: list at least one account"]
    names = [a.get("name") if isinstance(a, Mapping) else None for a in accounts]
    problems = [
        f"accounts[{i}].name: duplicate account name {name!r}"
        for i, name in enumerate(names)
        if isinstance(name, str) and name in names[:i]
    ]
    return problems + _route_account_problems(data, [n for n in names if isinstance(n, str)])


def _route_account_problems(data: Mapping[str, Any], names: list[str]) -> list[str]:
    """A route matching an account that is not configured could never match: refused."""
    problems = []
    for path, routes in _route_lists(data):
        for i, route in enumerate(routes):
            match = route.get("match") if isinstance(route, Mapping) else None
            wanted = match.get("account") if isinstance(match, Mapping) else None
            for name in [wanted] if isinstance(wanted, str) else wanted or []:
                if isinstance(name, str) and name not in names:
                    problems.append(
                        f"{path}[{i}].match.account: no account named {name!r} "
                        f"(configured: {', '.join(names)})"
                    )
    return problems


def _route_lists(data: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    """Every list of routes in the raw data with its path: top-level, then each account's."""
    found = [("routes", data.get("routes"))]
    accounts = data.get("accounts")
    for i, account in enumerate(accounts if isinstance(accounts, list) else []):
        if isinstance(account, Mapping):
            found.append((f"accounts[{i}].routes", account.get("routes")))
    return [(path, routes) for path, routes in found if isinstance(routes, list)]


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("developer_token", "ccg", "jwt") and out.endswith("auth"):
            continue  # pydantic names the union member; the user wrote only `auth`
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        path = _path(tuple(err["loc"]))
        if prefix:
            path = prefix if path == "(top level)" else f"{prefix}.{path}"
        ctx_err = err.get("ctx", {}).get("error")
        if isinstance(ctx_err, ConfigError):
            problems.extend(ctx_err.problems)
            continue
        problems.append(f"{path}: {err['msg']}")
    return problems


def expand_vars(data: Any, env: Mapping[str, str], path: str = "") -> tuple[Any, list[str]]:
    """Replace `${VAR}` / `${VAR:-default}` in every string; list each unset variable."""
    problems: list[str] = []
    if isinstance(data, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) in env:
                return env[m.group(1)]
            if m.group(2) is not None:
                return m.group(2)
            problems.append(
                f"{path or '(top level)'}: environment variable {m.group(1)} is not set"
            )
            return ""

        return _VAR.sub(sub, data), problems
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out[key], sub_problems = expand_vars(value, env, f"{path}.{key}" if path else str(key))
            problems += sub_problems
        return out, problems
    if isinstance(data, list):
        items = []
        for i, value in enumerate(data):
            item, sub_problems = expand_vars(value, env, f"{path}[{i}]")
            items.append(item)
            problems += sub_problems
        return items, problems
    return data, problems


def apply_env_overrides(
    data: dict[str, Any],
    env: Mapping[str, str],
    notifier_models: Mapping[str, type[NotifierSpec]] | None = None,
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """`DOCGEN_MONITOR_POLL__SWEEP_INTERVAL=5s` sets `poll.sweep_interval`; list items by index
    (`DOCGEN_MONITOR_NOTIFIERS__0__URL`). A value is typed by the field it sets: a scalar field
    (a string, a secret, a number, a duration) takes the raw string, for pydantic to check; only a
    list or a mapping is parsed as YAML. Returns the data, the key path each variable set, and the
    problems, which name the variable, never its value (it may be a secret)."""
    set_by: dict[str, str] = {}
    problems: list[str] = []
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX) or key == CONFIG_PATH_ENV:
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        node: Any = data
        annotation: Any = Config
        path = ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                index: int | str = int(part)
                path += f"[{index}]"
            elif isinstance(node, dict):
                index = part
                path = f"{path}.{part}" if path else part
            else:
                break  # a path that does not exist in a list: ignored, like a wrong index
            annotation = _child_annotation(annotation, part, node, notifier_models)
            if last:
                set_by[path] = key
                if not _is_structured(annotation):
                    node[index] = env[key]
                    continue
                try:
                    node[index] = parse_yaml(env[key]) if env[key] else ""
                except YAMLInputError as exc:
                    problems.append(f"{path}: environment variable {key}: {exc}")
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), dict | list):
                    node[part] = {}
                node = node[index]
    return data, set_by, problems


def _members(annotation: Any) -> list[Any]:
    """The types an annotation allows: `Annotated` unwrapped, unions split, `None` left out."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _child_annotation(
    annotation: Any,
    part: str,
    node: Any,
    notifier_models: Mapping[str, type[NotifierSpec]] | None,
) -> Any:
    """The annotation of `part` inside a value of `annotation` (`node` is that value's data),
    or None when it is free-form (a notifier setting of an unknown type)."""
    for member in _members(annotation):
        origin = get_origin(member)
        if origin is list and part.isdigit():
            item = get_args(member)[0]
            entry = node[int(part)] if isinstance(node, list) and int(part) < len(node) else None
            if item is NotifierSpec and notifier_models and isinstance(entry, dict):
                return notifier_models.get(str(entry.get("type")), NotifierSpec)
            return item
        if origin is dict:
            return get_args(member)[1]
        if isinstance(member, type) and issubclass(member, BaseModel):
            for name, field in member.model_fields.items():
                if part in (name, field.alias):
                    return field.annotation
    return None


def _is_structured(annotation: Any) -> bool:
    """A list, a mapping or a model: set from YAML text. Everything else takes the raw text."""
    for member in _members(annotation):
        if get_origin(member) in (list, dict, tuple, set) or member in (list, dict):
            return True
        if isinstance(member, type) and issubclass(member, BaseModel):
            return True
    return False


def load_config(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    notifier_models: Mapping[str, type[NotifierSpec]] | None = None,
) -> Config:
    """Read, expand, override and validate. Raises `ConfigError` listing every problem.

    `notifier_models` maps a notifier type to its config model (from the notifier registry);
    when given, each notifier entry is validated against its type's model too."""
    env = os.environ if env is None else env
    try:
        raw = parse_yaml(read_config_text(Path(path)))
    except OSError as exc:
        raise ConfigError([f"(file): cannot read {path}: {exc.strerror}"]) from None
    except YAMLInputError as exc:
        raise ConfigError([f"(file): {path}: {exc}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): expected a mapping of settings"])
    data, problems = expand_vars(raw, env)
    data, set_by, env_problems = apply_env_overrides(data, env, notifier_models)
    problems += env_problems
    config: Config | None = None
    problems += reference_problems(data) + account_problems(data)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems += validation_problems(exc)
    except ConfigError:
        pass  # the same reference problems, already listed above
    typed: list[NotifierSpec] = []
    if notifier_models is not None:
        typed, notifier_problems = _typed_notifiers(data.get("notifiers"), notifier_models)
        problems += notifier_problems
    if problems or config is None:
        raise ConfigError(_without_follow_ups(_name_variables(problems, set_by)))
    if notifier_models is not None:
        config = config.model_copy(update={"notifiers": typed})
    return config


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def _name_variables(problems: list[str], set_by: Mapping[str, str]) -> list[str]:
    """A problem with a value an environment variable set says which variable set it."""
    named = []
    for problem in problems:
        path = problem.split(": ", 1)[0]
        var = next((v for p, v in set_by.items() if _within(path, p)), None)
        if var is not None and var not in problem:
            problem = f"{problem} (set by {var})"
        named.append(problem)
    return named


def _without_follow_ups(problems: list[str]) -> list[str]:
    """Once a path is reported as an unset variable, what its empty value fails is noise."""
    unset = {p.split(": ", 1)[0] for p in problems if ": environment variable " in p}
    kept = [
        p for p in problems if ": environment variable " in p or p.split(": ", 1)[0] not in unset
    ]
    return sorted(set(kept), key=kept.index)


def _typed_notifiers(
    specs: Any, models: Mapping[str, type[NotifierSpec]]
) -> tuple[list[NotifierSpec], list[str]]:
    """Each notifier entry validated by its type's own model (which knows its secrets)."""
    if not isinstance(specs, list):
        return [], []
    typed: list[NotifierSpec] = []
    problems: list[str] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            continue  # already reported by the top-level model
        model = models.get(spec["type"])
        if model is None:
            known = ", ".join(sorted(models))
            problems.append(
                f"notifiers[{i}].type: unknown notifier type {spec['type']!r} (known: {known})"
            )
            continue
        try:
            typed.append(model.model_validate(spec))
        except ValidationError as exc:
            problems += validation_problems(exc, prefix=f"notifiers[{i}]")
    return typed, problems
