"""Who may call: configured developer tokens, and tokens issued on POST /oauth2/token by the
Client Credentials Grant or the JWT grant (assertions checked as Box checks them: signature
against the app's public key, `aud`, `iss`, subject, `exp` at most 60 s ahead, a unique `jti` of
16 to 128 characters, an RS256/384/512 `alg`). Issued tokens expire on the simulator clock and
can be revoked, so a client's re-authentication path can be exercised on demand."""

from __future__ import annotations

import math
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from monitor.simulator.clock import SimClock
from monitor.simulator.config import AppConfig, SimulatorConfig

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Grants Box knows that this simulator does not implement.
OTHER_GRANTS = frozenset(
    {
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    }
)
JWT_AUDIENCE = "https://api.box.com/oauth2/token"
JWT_ALGORITHMS = ("RS256", "RS384", "RS512")
JWT_MAX_LIFETIME_S = 60
JTI_MIN_CHARS, JTI_MAX_CHARS = 16, 128
ISSUED_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 (a URN)


@dataclass(frozen=True, slots=True)
class Principal:
    """The user a token acts for: the creator of any batch the token starts."""

    user_id: str


@dataclass(slots=True)
class IssuedToken:
    principal: Principal
    expires_at_s: float
    client_id: str
    revoked: bool = False


class GrantError(Exception):
    """A refused grant, in OAuth2 terms: `error` and `error_description`."""

    def __init__(self, error: str, description: str) -> None:
        self.error = error
        self.description = description
        super().__init__(f"{error}: {description}")


class App:
    """A Box Platform app as the token endpoint sees it; its secret can be rotated."""

    def __init__(self, config: AppConfig) -> None:
        self.client_id = config.client_id
        self.enterprise_id = config.enterprise_id
        self.service_account = Principal(config.service_account_user_id)
        self.user_ids = frozenset(config.user_ids)
        self.jwt_public_keys = dict(config.jwt_public_keys)
        self._secret = config.client_secret.get_secret_value().encode()
        self._retired: list[bytes] = []

    def rotate(self, new_secret: str) -> None:
        """From now on only `new_secret` works; the old one is refused as `invalid_client`."""
        self._retired.append(self._secret)
        self._secret = new_secret.encode()

    def check_secret(self, secret: str, *, wrong_error: str) -> None:
        """Raise unless `secret` is the current one. A retired secret is `invalid_client` (the
        app's credentials changed); any other wrong one is `wrong_error`. Compared as UTF-8
        bytes, so a non-ASCII secret is simply wrong, never an error of ours."""
        given = secret.encode("utf-8", "surrogatepass")
        if secrets.compare_digest(given, self._secret):
            return
        if any(secrets.compare_digest(given, old) for old in self._retired):
            raise GrantError("invalid_client", "The client credentials are invalid")
        description = (
            "The client credentials are invalid"
            if wrong_error == "invalid_client"
            else "Grant credentials are invalid"
        )
        raise GrantError(wrong_error, description)

    def subject(self, subject_type: object, subject_id: str) -> Principal | None:
        """The user a grant for this subject acts as, or None when the app may not act so."""
        if subject_type == "enterprise" and subject_id == self.enterprise_id:
            return self.service_account
        if subject_type == "user" and subject_id in self.user_ids:
            return Principal(subject_id)
        return None


FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_FIELDS = 50


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """The token request's form, or `invalid_request` for anything that is not one: another
    content type, bytes that are not UTF-8, a field without `=`, a field given twice (RFC 6749
    §3.2 forbids repeats). Never an exception of any other kind: the endpoint never answers 500."""
    if content_type not in (FORM_CONTENT_TYPE, "application/octet-stream"):
        raise GrantError("invalid_request", f"The body must be {FORM_CONTENT_TYPE}")
    try:
        text = body.decode("utf-8")
        pairs = urllib.parse.parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=bool(text),
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except ValueError:  # UnicodeDecodeError is one
        raise GrantError("invalid_request", "The request body is not a valid form") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise GrantError("invalid_request", "A parameter was given more than once")
    return form


class TokenStore:
    def __init__(self, config: SimulatorConfig, clock: SimClock) -> None:
        self._config = config
        self._clock = clock
        self.apps = {app.client_id: App(app) for app in config.all_apps()}
        service_account = Principal(config.service_account_user_id)
        self._developer: dict[str, Principal] = {
            token.get_secret_value(): service_account for token in config.developer_tokens
        }
        for user in config.users:
            for token in user.developer_tokens:
                self._developer[token.get_secret_value()] = Principal(user.id)
        self._issued: dict[str, IssuedToken] = {}
        self._jtis: dict[str, float] = {}  # jti -> exp of assertions already used

    def add_developer_token(self, token: str, user_id: str) -> None:
        """A developer token for `user_id`, as if generated in the Developer Console now."""
        self._developer[token] = Principal(user_id)

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
        grant_type = form.get("grant_type", "")
        if grant_type == JWT_BEARER:
            return self._issue(self._jwt_principal(form), form.get("client_id", ""))
        if grant_type in OTHER_GRANTS:
            raise GrantError("unsupported_grant_type", "Grant type is not supported")
        if grant_type != CLIENT_CREDENTIALS:
            raise GrantError("invalid_request", "Invalid grant_type parameter or parameter missing")
        client_id = form.get("client_id", "")
        client_secret = form.get("client_secret", "")
        if not client_id or not client_secret:
            raise GrantError("invalid_request", "The client_id and client_secret are required")
        app = self.apps.get(client_id)
        if app is None:
            raise GrantError("invalid_client", "The client credentials are invalid")
        # Box's CCG guide: wrong credentials are "invalid_grant: Grant credentials are invalid".
        app.check_secret(client_secret, wrong_error="invalid_grant")
        subject_type = form.get("box_subject_type", "")
        subject_id = form.get("box_subject_id", "")
        if subject_type not in ("enterprise", "user") or not subject_id:
            raise GrantError("invalid_request", "box_subject_type and box_subject_id are required")
        principal = app.subject(subject_type, subject_id)
        if principal is None:
            raise GrantError("invalid_grant", "Grant credentials are invalid")
        return self._issue(principal, client_id)

    def _issue(self, principal: Principal, client_id: str) -> tuple[str, int]:
        token = secrets.token_urlsafe(24)
        expires_in_s = self._config.token_expires_in_s
        self._issued[token] = IssuedToken(principal, self._clock.now() + expires_in_s, client_id)
        return token, expires_in_s

    def _jwt_principal(self, form: Mapping[str, str]) -> Principal:
        """Check a JWT grant the way Box does; every refusal is `invalid_grant` except a bad
        client (`invalid_client`) or a missing field (`invalid_request`)."""
        assertion = form.get("assertion", "")
        client_id = form.get("client_id", "")
        client_secret = form.get("client_secret", "")
        if not assertion or not client_id or not client_secret:
            raise GrantError(
                "invalid_request", "assertion, client_id and client_secret are required"
            )
        app = self.apps.get(client_id)
        if app is None:
            raise GrantError("invalid_client", "The client credentials are invalid")
        app.check_secret(client_secret, wrong_error="invalid_client")
        try:
            header = jwt.get_unverified_header(assertion)
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise GrantError("invalid_grant", "The assertion is not a JWT") from None
        if header.get("alg") not in JWT_ALGORITHMS:
            raise GrantError("invalid_grant", "Algorithm must be one of RS256, RS384, RS512")
        key = _public_key(app.jwt_public_keys, header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=list(JWT_ALGORITHMS),
                audience=JWT_AUDIENCE,
                # exp is checked below on the simulator's clock, which tests move
                options={"verify_exp": False, "require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.InvalidSignatureError:
            raise GrantError(
                "invalid_grant",
                "Signature verification error. The public key identified by 'kid' must "
                "correspond to the private key used for signing.",
            ) from None
        except jwt.InvalidAudienceError:
            raise GrantError("invalid_grant", "Please check the 'aud' claim.") from None
        except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
            raise GrantError("invalid_grant", f"Invalid assertion: {exc}") from None
        now = self._clock.now()
        exp = claims["exp"]
        if not isinstance(exp, int | float) or not math.isfinite(exp) or exp <= now:
            raise GrantError(
                "invalid_grant",
                "Current date/time MUST be before the expiration date/time listed in the "
                "'exp' claim",
            )
        if exp > now + JWT_MAX_LIFETIME_S:
            raise GrantError(
                "invalid_grant", "Please check the 'exp' claim: at most 60 seconds ahead."
            )
        jti = claims["jti"]
        if not isinstance(jti, str) or not JTI_MIN_CHARS <= len(jti) <= JTI_MAX_CHARS:
            raise GrantError("invalid_grant", "Please check the 'jti' claim.")
        self._jtis = {j: e for j, e in self._jtis.items() if e > now}  # expired ones are harmless
        if jti in self._jtis:
            raise GrantError(
                "invalid_grant", "Please check the 'jti' claim. A unique 'jti' value is required."
            )
        if claims["iss"] != app.client_id:
            raise GrantError("invalid_grant", "Please check the 'iss' claim.")
        principal = app.subject(claims.get("box_sub_type"), str(claims["sub"]))
        if principal is None:
            raise GrantError("invalid_grant", "Please check the 'sub' and 'box_sub_type' claims.")
        self._jtis[jti] = float(exp)
        return principal

    def revoke(self, token: str | None = None, *, client_id: str | None = None) -> int:
        """Revoke one token (issued or developer) or, with None, every issued token (of one
        app, given `client_id`); return how many were revoked."""
        if token is None:
            live = [
                t
                for t in self._issued.values()
                if not t.revoked and client_id in (None, t.client_id)
            ]
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


def _public_key(keys: Mapping[str, str], kid: object) -> str:
    if isinstance(kid, str) and kid in keys:
        return keys[kid]
    if kid is None and len(keys) == 1:
        return next(iter(keys.values()))
    raise GrantError("invalid_grant", "No public key found for the 'kid' in the assertion.")
