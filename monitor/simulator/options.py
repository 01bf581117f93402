"""`docgen-monitor simulate` settings from flags and a YAML file (`--config sim.yaml`), so that
every auth method (developer tokens of several users, CCG clients, JWT keys) can be tried
against a simulator started from the command line. Flags override the file. A bad setting is a
`SimulateConfigError` listing every problem by key path, never echoing a value (secrets)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

if TYPE_CHECKING:  # imported when used: every command builds the parser, only `simulate` runs
    from monitor.simulator.config import SimulatorConfig

MAX_CONFIG_BYTES = 1 << 20
_PEM_START = "-----BEGIN"


class SimulateConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"invalid simulator configuration:\n{listed}")


def add_arguments(sim: argparse.ArgumentParser) -> None:
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8900)
    sim.add_argument("--config", type=Path, default=None,
                     help="YAML file of simulator settings (SimulatorConfig fields)")
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--token", action="append", default=None,
                     help="developer token of the Service Account (repeatable; default dev-token)")
    sim.add_argument("--user-token", action="append", default=[], metavar="USER_ID=TOKEN",
                     help="developer token of another user (repeatable)")
    sim.add_argument("--client-id", default=None, help="the default app's client id")
    sim.add_argument("--client-secret", default=None, help="the default app's client secret")
    sim.add_argument("--enterprise-id", default=None, help="the default app's enterprise")
    sim.add_argument("--service-account-id", default=None,
                     help="the default app's Service Account user id")
    sim.add_argument("--user", action="append", default=[], metavar="USER_ID",
                     help="a user the default app may act as (box_subject_type=user; repeatable)")
    sim.add_argument("--jwt-key", action="append", default=[], metavar="KID=PEM_FILE",
                     help="a public key of the default app for the JWT grant (repeatable)")
    sim.add_argument("--app", action="append", default=[], metavar="JSON",
                     help='one more app, e.g. \'{"client_id": "a2", "client_secret": "s2", '
                     '"enterprise_id": "e2", "service_account_user_id": "555"}\' (repeatable)')
    sim.add_argument("--token-lifetime", type=int, default=None, metavar="SECONDS",
                     help="expires_in of issued tokens (default 3600)")
    sim.add_argument("--stream-every", type=float, default=None, metavar="SECONDS",
                     help="start a batch every SECONDS (a steady, realistic stream)")
    sim.add_argument("--stream-jobs", type=int, default=5, help="jobs per streamed batch")
    sim.add_argument("--seed-jobs", type=int, default=0, help="historic jobs created at start")


def _read_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`; a problem names the file, line and column, not the text."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SimulateConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise SimulateConfigError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes"])
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise SimulateConfigError([f"{path}: not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SimulateConfigError([f"{path}{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SimulateConfigError([f"{path}: the top level must be a mapping"])
    return data


def _pairs(values: list[str], flag: str, problems: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            problems.append(f"{flag}: expected KEY=VALUE, got an argument without one")
        else:
            pairs.append((key, rest))
    return pairs


def _load_keys(keys: Any, base: Path, where: str, problems: list[str]) -> Any:
    """PEM text stays; anything else is a file to read (relative to `base`)."""
    if not isinstance(keys, dict):
        return keys
    loaded = {}
    for kid, value in keys.items():
        if isinstance(value, str) and not value.lstrip().startswith(_PEM_START):
            path = (base / value).expanduser()
            try:
                value = path.read_text()
            except (OSError, UnicodeDecodeError):
                problems.append(f"{where}.{kid}: cannot read the key file {path}")
                continue
        loaded[kid] = value
    return loaded


def _apply_flags(data: dict[str, Any], args: argparse.Namespace, problems: list[str]) -> None:
    scalars = {
        "seed": args.seed,
        "client_id": args.client_id,
        "client_secret": args.client_secret,
        "enterprise_id": args.enterprise_id,
        "service_account_user_id": args.service_account_id,
        "token_expires_in_s": args.token_lifetime,
    }
    data.update({key: value for key, value in scalars.items() if value is not None})
    if args.token:
        data["developer_tokens"] = list(args.token)
    if args.user:
        data["user_ids"] = [*data.get("user_ids", []), *args.user]
    keys = dict(data.get("jwt_public_keys") or {})
    keys.update(_pairs(args.jwt_key, "--jwt-key", problems))
    if keys:
        data["jwt_public_keys"] = keys
    users = {u.get("id"): dict(u) for u in data.get("users", []) if isinstance(u, dict)}
    for user_id, token in _pairs(args.user_token, "--user-token", problems):
        user = users.setdefault(user_id, {"id": user_id})
        user["developer_tokens"] = [*user.get("developer_tokens", []), token]
    if users:
        data["users"] = list(users.values())
    for n, text in enumerate(args.app):
        try:
            app = json.loads(text)
        except ValueError:
            problems.append(f"--app[{n}]: not a JSON object")
            continue
        data["apps"] = [*data.get("apps", []), app]
    if args.stream_every:
        data["stream"] = {"every_s": args.stream_every, "jobs_per_batch": args.stream_jobs}


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The simulator's settings: the file's, then the flags'; raises SimulateConfigError."""
    problems: list[str] = []
    base = Path.cwd()
    data: dict[str, Any] = {}
    if args.config is not None:
        data = _read_file(args.config)
        base = args.config.parent
    data.setdefault("developer_tokens", ["dev-token"])
    _apply_flags(data, args, problems)
    data["jwt_public_keys"] = _load_keys(
        data.get("jwt_public_keys", {}), base, "jwt_public_keys", problems
    )
    for n, app in enumerate(data.get("apps", [])):
        if isinstance(app, dict) and "jwt_public_keys" in app:
            app["jwt_public_keys"] = _load_keys(
                app["jwt_public_keys"], base, f"apps[{n}].jwt_public_keys", problems
            )
    if problems:
        raise SimulateConfigError(problems)
    from monitor.simulator.config import SimulatorConfig

    try:
        return SimulatorConfig.model_validate(data)
    except ValidationError as exc:
        raise SimulateConfigError([_problem(error) for error in exc.errors()]) from None


def _problem(error: Any) -> str:
    path = ""
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return f"{path or '(top level)'}: {error['msg']}"
