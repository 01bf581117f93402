"""Who may call: configured developer tokens, and tokens issued by the Client Credentials Grant
on POST /oauth2/token. Issued tokens expire on the simulator clock and can be revoked, so a
client's re-authentication path can be exercised on demand."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from monitor.simulator.clock import SimClock
from monitor.simulator.config import SimulatorConfig

CLIENT_CREDENTIALS = "client_credentials"
# Grants Box knows that this simulator does not implement.
OTHER_GRANTS = frozenset(
    {
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    }
)
ISSUED_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 (a URN)


@dataclass(frozen=True, slots=True)
class Principal:
    """The user a token acts for: the creator of any batch the token starts."""

    user_id: str


@dataclass(slots=True)
class IssuedToken:
    principal: Principal
    expires_at_s: float
    revoked: bool = False


class GrantError(Exception):
    """A refused grant, in OAuth2 terms: `error` and `error_description`."""

    def __init__(self, error: str, description: str) -> None:
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}")


class TokenStore:
    def __init__(self, config: SimulatorConfig, clock: SimClock) -> None:
        self._config = config
        self._clock = clock
        service_account = Principal(config.service_account_user_id)
        self._developer: dict[str, Principal | None] = {
            token.get_secret_value(): service_account for token in config.developer_tokens
        }
        self._issued: dict[str, IssuedToken] = {}

    def authenticate(self, token: str) -> Principal | None:
        """The principal behind a bearer token, or None when it is unknown, expired or revoked."""
        developer = self._developer.get(token)
        if developer is not None:
            return developer
        issued = self._issued.get(token)
        if issued is None or issued.revoked or self._clock.now() >= issued.expires_at_s:
            return None
        return issued.principal

    def grant(self, form: Mapping[str, str]) -> tuple[str, int]:
        """Run a client credentials grant; return (access_token, expires_in_s) or raise."""
        config = self._config
        grant_type = form.get("grant_type", "")
        if grant_type in OTHER_GRANTS:
            raise GrantError("unsupported_grant_type", "Grant type is not supported")
        if grant_type != CLIENT_CREDENTIALS:
            raise GrantError("invalid_request", "Invalid grant_type parameter or parameter missing")
        client_id = form.get("client_id", "")
        client_secret = form.get("client_secret", "")
        if not client_id or not client_secret:
            raise GrantError("invalid_request", "The client_id and client_secret are required")
        if client_id != config.client_id:
            raise GrantError("invalid_client", "The client credentials are invalid")
        if not secrets.compare_digest(client_secret, config.client_secret.get_secret_value()):
            raise GrantError("invalid_grant", "Grant credentials are invalid")
        subject_type = form.get("box_subject_type", "")
        subject_id = form.get("box_subject_id", "")
        if subject_type not in ("enterprise", "user") or not subject_id:
            raise GrantError("invalid_request", "box_subject_type and box_subject_id are required")
        if subject_type == "enterprise":
            if subject_id != config.enterprise_id:
                raise GrantError("invalid_grant", "Grant credentials are invalid")
            principal = Principal(config.service_account_user_id)
        else:
            if subject_id not in config.user_ids:
                raise GrantError("invalid_grant", "Grant credentials are invalid")
            principal = Principal(subject_id)
        token = secrets.token_urlsafe(24)
        expires_in_s = config.token_expires_in_s
        self._issued[token] = IssuedToken(principal, self._clock.now() + expires_in_s)
        return token, expires_in_s

    def revoke(self, token: str | None = None) -> int:
        """Revoke one token (issued or developer) or, with None, every issued token; return how
        many were revoked."""
        if token is None:
            live = [t for t in self._issued.values() if not t.revoked]
            for issued in live:
                issued.revoked = True
            return len(live)
        if self._developer.pop(token, None) is not None:
            return 1
        target = self._issued.get(token)
        if target is None or target.revoked:
            return 0
        target.revoked = True
        return 1
