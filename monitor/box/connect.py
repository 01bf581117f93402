"""A Box client and its auth from the `box` section of the configuration: what `run` and
`once` build the same way (here, not in the daemon, so that `once` does not load the daemon's
scheduler and web server)."""

from __future__ import annotations

from monitor.box.auth import Auth, CCGAuth, DeveloperTokenAuth, JWTAuth
from monitor.box.budget import RequestBudget
from monitor.box.client import BoxClient
from monitor.config import BoxConfig, CCGAuthConfig, JWTAuthConfig
from monitor.errors import ConfigError
from monitor.metrics import Metrics


def make_auth(box: BoxConfig, metrics: Metrics | None, where: str = "box") -> Auth:
    """The auth `box.auth` describes; `where` is the section's path, for a problem's message
    (`accounts[1].box` for an account's)."""
    if isinstance(box.auth, CCGAuthConfig):
        return CCGAuth(
            f"{box.base_url}/oauth2/token",
            box.auth.client_id,
            box.auth.client_secret,
            box.auth.subject_type,
            box.auth.subject_id,
            timeout_s=box.timeout,
            metrics=metrics,
        )
    if isinstance(box.auth, JWTAuthConfig):
        try:
            return JWTAuth.from_config_file(
                f"{box.base_url}/oauth2/token",
                box.auth.config_file,
                user_id=box.auth.user_id,
                timeout_s=box.timeout,
                metrics=metrics,
            )
        except ValueError as exc:
            raise ConfigError([f"{where}.auth.config_file: {exc}"]) from None
    return DeveloperTokenAuth(box.auth.token)


def make_box_client(
    box: BoxConfig, metrics: Metrics | None, where: str = "box"
) -> tuple[Auth, BoxClient]:
    """The client and its auth, which the caller closes (after a reload: `client.auth`)."""
    auth = make_auth(box, metrics, where)
    budget = RequestBudget(
        box.requests_per_minute, max_retry_after_s=box.max_retry_after, metrics=metrics
    )
    client = BoxClient(
        box.base_url,
        auth,
        metrics=metrics,
        timeout_s=box.timeout,
        max_attempts=box.max_attempts,
        max_retry_after_s=box.max_retry_after,
        page_size=box.page_size,
        budget=budget,
    )
    return auth, client
