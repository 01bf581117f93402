"""How the client gets a bearer token: a developer token, or a server-side grant (CCG, JWT)
that posts to `/oauth2/token` and caches the answer until shortly before it expires.

The client asks `token()` before each attempt and, after a 401, calls `invalidate(token)` with
the token that failed and asks again, once. Auth objects never log or raise a token or secret.

A refused grant (a wrong or rotated secret) is remembered: one token request at a time for the
whole daemon, tried again after 5 s, doubling to 5 min; meanwhile every caller fails at once
with `BoxAuthBackoff`, without a request, and `status()` tells `/readyz` why. The first grant
Box accepts again ends it: polling resumes within one backoff step, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Self

import aiohttp
import structlog
from pydantic import SecretStr, ValidationError

from monitor.box import _http
from monitor.box.budget import Priority, RequestBudget
from monitor.box.errors import (
    BoxAuthBackoff,
    BoxAuthError,
    BoxBadResponse,
    BoxConnectionError,
    BoxError,
    BoxRateLimited,
    BoxServerError,
    BoxTokenUnavailable,
    BoxUnavailable,
)
from monitor.box.models import AccessToken, OAuth2Error
from monitor.metrics import Metrics

if TYPE_CHECKING:  # PyJWT and cryptography load with the first JWT auth (~0.1 s to import)
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = [
    "REFUSED_BACKOFF_INITIAL_S",
    "REFUSED_BACKOFF_MAX_S",
    "Auth",
    "AuthStatus",
    "CCGAuth",
    "DeveloperTokenAuth",
    "JWTAuth",
    "TokenGrantAuth",
    "failure_reason",
    "token_url",
]

log = structlog.get_logger(__name__)

TOKEN_ENDPOINT = "/oauth2/token"  # noqa: S105 - a route, not a secret
#: Box's documented lifetime, used if a token answer leaves `expires_in` out.
_DEFAULT_EXPIRES_IN_S = 3600
#: Refresh this long before expiry: 60 s, or 10 % of a shorter lifetime.
_MAX_EXPIRY_MARGIN_S = 60.0
_EXPIRY_MARGIN_FRACTION = 0.1
#: A refused grant is tried again after this long, doubling with each refusal, up to the max.
REFUSED_BACKOFF_INITIAL_S = 5.0
REFUSED_BACKOFF_MAX_S = 300.0
#: The OAuth2 `error` values that are their own `auth_failures` reason.
_OAUTH_REASONS = frozenset({"invalid_client", "invalid_grant"})


def token_url(base_url: str) -> str:
    """The token endpoint for an API base URL: `https://api.box.com` -> `.../oauth2/token`
    (no `/2.0` prefix)."""
    return base_url.rstrip("/") + TOKEN_ENDPOINT


@dataclass(frozen=True, slots=True)
class AuthStatus:
    """What `/readyz` reports about the credentials: `ok` is False while a grant is refused."""

    ok: bool
    detail: str


class Auth(ABC):
    """Where bearer tokens come from."""

    #: False when `invalidate` cannot produce a different token: a 401 is then final.
    can_refresh: ClassVar[bool] = True

    def bind_budget(self, budget: RequestBudget | None) -> None:  # noqa: B027 - optional hook
        """The client's request budget, from which token requests draw (grants only)."""

    def status(self) -> AuthStatus:
        return AuthStatus(True, "ok")

    @abstractmethod
    async def token(self) -> str:
        """A bearer token that is believed valid."""

    @abstractmethod
    async def invalidate(self, token: str) -> None:
        """Box refused `token` (401): forget it, unless it has already been replaced."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most auths hold nothing
        """Release whatever the auth holds (a session it created)."""


class DeveloperTokenAuth(Auth):
    """A developer token from the Box console: valid for 60 minutes, cannot be refreshed."""

    can_refresh = False

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token.get_secret_value()

    async def invalidate(self, token: str) -> None:
        """Nothing to do: a developer token cannot be renewed by code."""

    def __repr__(self) -> str:
        return "DeveloperTokenAuth(token=SecretStr('**********'))"


@dataclass(frozen=True, slots=True)
class _CachedToken:
    value: str
    refresh_at: float  # on the auth's clock


@dataclass(frozen=True, slots=True)
class _Refusal:
    error: BoxAuthError
    reason: str
    failures: int  # consecutive refusals
    next_try_at: float  # on the auth's clock


class TokenGrantAuth(Auth):
    """A grant posted to `/oauth2/token` whose answer is cached until shortly before
    `expires_in` runs out. Subclasses say which form fields to post (`_grant_form`) and which
    values must never appear in an error (`_secrets`).

    Single flight: one token request at a time, under a lock, drawn from the bound budget. A
    caller that waited for the lock while a request finished shares its outcome instead of
    making another: the fresh token, `BoxAuthBackoff` after a refusal, or
    `BoxTokenUnavailable` after a 5xx, 429, timeout or broken answer (retried by the client's
    loop like the failure it shares). `invalidate` only forgets the token if it is still the
    current one, so a caller whose token was already replaced triggers no second fetch.

    A refused grant (400/401/403) raises `BoxAuthError` and starts the backoff; every failed
    token request is logged and counted in `auth_failures{reason}` once, never per caller.
    """

    def __init__(
        self,
        token_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self._token_url = token_url
        self._session = session
        self._owns_session = session is None
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._clock = clock
        self._budget: RequestBudget | None = None
        self._cached: _CachedToken | None = None
        self._lock = asyncio.Lock()
        self._requests_done = 0  # token requests finished, whatever their outcome
        self._refusal: _Refusal | None = None
        self._unavailable: BoxError | None = None  # the last request's retryable failure
        self._closed = False

    @abstractmethod
    async def _grant_form(self) -> dict[str, str]:
        """The form fields of one token request (JWT builds a fresh assertion each time)."""

    @abstractmethod
    def _secrets(self) -> tuple[str, ...]:
        """Values that must never appear in an error message."""

    def bind_budget(self, budget: RequestBudget | None) -> None:
        self._budget = budget

    def status(self) -> AuthStatus:
        refusal = self._refusal
        if refusal is None:
            return AuthStatus(True, "ok")
        wait_s = refusal.next_try_at - self._clock()
        when = f"next try in {math.ceil(wait_s)}s" if wait_s > 0 else "trying again"
        return AuthStatus(False, f"refused: {refusal.reason}, {when}")

    async def token(self) -> str:
        cached = self._fresh()
        if cached is not None:
            return cached
        self._raise_if_backing_off()
        requests_seen = self._requests_done
        async with self._lock:
            cached = self._fresh()  # another caller may have refreshed while we waited
            if cached is not None:
                return cached
            if self._requests_done != requests_seen:  # a request failed while we waited
                self._raise_if_backing_off()
                if self._unavailable is not None:
                    raise BoxTokenUnavailable(self._unavailable)
            return await self._request()

    async def invalidate(self, token: str) -> None:
        if self._cached is not None and self._cached.value == token:
            self._cached = None

    async def aclose(self) -> None:
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _fresh(self) -> str | None:
        cached = self._cached
        if cached is not None and self._clock() < cached.refresh_at:
            return cached.value
        return None

    def _raise_if_backing_off(self) -> None:
        refusal = self._refusal
        if refusal is not None:
            wait_s = refusal.next_try_at - self._clock()
            if wait_s > 0:
                raise BoxAuthBackoff(refusal.error, wait_s)

    async def _request(self) -> str:
        """One token request (under the lock); its outcome is remembered for the waiters."""
        self._unavailable = None
        try:
            if self._budget is not None:
                await self._budget.acquire(Priority.ACTIVE)
            self._cached = await self._fetch()
        except BoxAuthError as exc:
            self._refused(exc)
            raise
        except BoxError as exc:
            self._unavailable = exc
            self._count_failure(failure_reason(exc))
            raise
        finally:
            self._requests_done += 1
        if self._refusal is not None:
            log.info(
                "box_token_accepted_again",
                endpoint=TOKEN_ENDPOINT,
                after_refusals=self._refusal.failures,
            )
            self._refusal = None
        return self._cached.value

    def _refused(self, exc: BoxAuthError) -> None:
        failures = 1 if self._refusal is None else self._refusal.failures + 1
        delay_s = min(
            REFUSED_BACKOFF_MAX_S, REFUSED_BACKOFF_INITIAL_S * 2.0 ** min(failures - 1, 32)
        )
        reason = failure_reason(exc)
        self._refusal = _Refusal(exc, reason, failures, self._clock() + delay_s)
        self._count_failure(reason)
        log.warning(
            "box_token_refused",
            endpoint=TOKEN_ENDPOINT,
            status=exc.status,
            reason=reason,
            error=exc.error,
            refusals=failures,
            next_try_in_s=delay_s,
        )

    def _count_failure(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.auth_failures.labels(reason=reason).inc()

    async def _fetch(self) -> _CachedToken:
        if self._closed:  # replaced by a reload: the caller retries with the new auth
            raise BoxConnectionError("POST", TOKEN_ENDPOINT, TOKEN_ENDPOINT, "auth closed")
        if self._session is None:
            self._session = aiohttp.ClientSession()
        form = await self._grant_form()
        path = TOKEN_ENDPOINT
        raw = await _http.send(
            self._session,
            "POST",
            self._token_url,
            endpoint=TOKEN_ENDPOINT,
            path=path,
            timeout_s=self._timeout_s,
            metrics=self._metrics,
            headers={"Accept": "application/json"},
            data=form,  # aiohttp sends a dict as application/x-www-form-urlencoded
        )
        status = raw.status
        if status == 200:
            return self._accept(raw)
        if status == 429:
            raise BoxRateLimited(
                "POST",
                path,
                TOKEN_ENDPOINT,
                status,
                _http.client_error(raw.body),
                retry_after_s=_http.parse_retry_after(raw.headers),
            )
        if status >= 500:
            raise BoxServerError(
                "POST",
                path,
                TOKEN_ENDPOINT,
                status,
                _http.client_error(raw.body),
                retry_after_s=_http.parse_retry_after(raw.headers),
            )
        if 400 <= status < 500:
            raise BoxAuthError(status, _oauth2_error(raw.body), redact=self._secrets())
        raise BoxBadResponse("POST", path, TOKEN_ENDPOINT, status, "unexpected status")

    def _accept(self, raw: _http.RawResponse) -> _CachedToken:
        try:
            answer = AccessToken.model_validate_json(raw.body)
        except ValidationError as exc:
            raise BoxBadResponse(
                "POST", TOKEN_ENDPOINT, TOKEN_ENDPOINT, raw.status, _http.describe(exc)
            ) from None
        if answer.access_token is None or not answer.access_token.get_secret_value():
            raise BoxBadResponse(
                "POST", TOKEN_ENDPOINT, TOKEN_ENDPOINT, raw.status, "no access_token in answer"
            )
        expires_in = answer.expires_in if answer.expires_in is not None else _DEFAULT_EXPIRES_IN_S
        margin = min(_MAX_EXPIRY_MARGIN_S, max(0, expires_in) * _EXPIRY_MARGIN_FRACTION)
        log.info("box_token_issued", endpoint=TOKEN_ENDPOINT, expires_in_s=expires_in)
        refresh_at = self._clock() + expires_in - margin
        return _CachedToken(answer.access_token.get_secret_value(), refresh_at)


class AppGrantAuth(TokenGrantAuth):
    """A grant made with the app's own credentials for a subject (the enterprise's Service
    Account or a user): what CCG and JWT share. The client secret is what must never leak."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        subject_type: str,
        subject_id: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_subject_type(subject_type)
        super().__init__(
            token_url, session=session, timeout_s=timeout_s, metrics=metrics, clock=clock
        )
        self.client_id = client_id
        self._client_secret = client_secret
        self.subject_type = subject_type
        self.subject_id = subject_id

    def _secrets(self) -> tuple[str, ...]:
        return (self._client_secret.get_secret_value(),)


class CCGAuth(AppGrantAuth):
    """Client Credentials Grant: the app's client id and secret, acting as the enterprise's
    Service Account (`subject_type="enterprise"`, `subject_id` = enterprise id) or as a user
    (`subject_type="user"`). CCG answers carry no refresh token; renewing repeats the grant."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        subject_type: str,
        subject_id: str,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            token_url,
            client_id,
            client_secret,
            subject_type,
            subject_id,
            session=session,
            timeout_s=timeout_s,
            metrics=metrics,
            clock=clock,
        )

    async def _grant_form(self) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret.get_secret_value(),
            "box_subject_type": self.subject_type,
            "box_subject_id": self.subject_id,
        }

    def __repr__(self) -> str:
        return (
            f"CCGAuth(token_url={self._token_url!r}, client_id={self.client_id!r}, "
            f"subject_type={self.subject_type!r}, subject_id={self.subject_id!r})"
        )


JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Box's audience for every assertion, whatever host the token URL names.
JWT_AUDIENCE = "https://api.box.com/oauth2/token"
#: Assertion lifetime: Box allows at most 60 s; its samples use 45, the SDK 30.
JWT_LIFETIME_S = 30
JWT_ALGORITHM = "RS512"


class JWTAuth(AppGrantAuth):
    """JWT (key-pair) grant: each token request carries a fresh assertion signed with the app's
    private key, with a new `jti`. Built from the `config.json` Box's developer console
    produces (`from_config_file`), whose private key is a passphrase-encrypted PKCS#8 PEM."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        key_id: str,
        private_key: RSAPrivateKey,
        subject_type: str,
        subject_id: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            token_url,
            client_id,
            client_secret,
            subject_type,
            subject_id,
            session=session,
            timeout_s=timeout_s,
            metrics=metrics,
            clock=clock,
        )
        self.key_id = key_id
        self._private_key = private_key
        self._wall_clock = wall_clock

    @classmethod
    def from_config_file(
        cls,
        token_url: str,
        path: str | Path,
        *,
        user_id: str | None = None,
        timeout_s: float = 30.0,
        metrics: Metrics | None = None,
    ) -> JWTAuth:
        """Read Box's `config.json`; raise `BoxAuthError`-free `ValueError` naming what is wrong
        (never the key or the passphrase)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            settings = data["boxAppSettings"]
            app_auth = settings["appAuth"]
            passphrase = app_auth.get("passphrase") or None
            key = serialization.load_pem_private_key(
                app_auth["privateKey"].encode(),
                passphrase.encode() if passphrase else None,
            )
            client_id, key_id = settings["clientID"], app_auth["publicKeyID"]
            client_secret = SecretStr(settings["clientSecret"])
            enterprise_id = data.get("enterpriseID")
        except OSError as exc:
            raise ValueError(f"cannot read JWT config {path}: {exc.strerror}") from None
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"JWT config {path} is not a Box config.json: {exc!r}") from None
        except ValueError:
            raise ValueError(
                f"JWT config {path}: the private key cannot be decrypted with its passphrase"
            ) from None
        if not isinstance(key, RSAPrivateKey):
            raise ValueError(f"JWT config {path}: the private key is not an RSA key")
        if user_id is None and not enterprise_id:
            raise ValueError(f"JWT config {path}: no enterpriseID and no user_id given")
        subject_type, subject_id = ("user", user_id) if user_id else ("enterprise", enterprise_id)
        return cls(
            token_url,
            client_id,
            client_secret,
            key_id,
            key,
            subject_type,
            str(subject_id),
            timeout_s=timeout_s,
            metrics=metrics,
        )

    def assertion(self) -> str:
        """A signed assertion with the claims Box documents; a new `jti` every time."""
        import jwt

        now = int(self._wall_clock())
        claims = {
            "iss": self.client_id,
            "sub": self.subject_id,
            "box_sub_type": self.subject_type,
            "aud": JWT_AUDIENCE,
            "jti": secrets.token_urlsafe(48),  # 64 characters, within Box's 16..128
            "iat": now,
            "exp": now + JWT_LIFETIME_S,
        }
        return jwt.encode(
            claims, self._private_key, algorithm=JWT_ALGORITHM, headers={"kid": self.key_id}
        )

    async def _grant_form(self) -> dict[str, str]:
        return {
            "grant_type": JWT_GRANT,
            "assertion": self.assertion(),
            "client_id": self.client_id,
            "client_secret": self._client_secret.get_secret_value(),
        }

    def __repr__(self) -> str:
        return (
            f"JWTAuth(token_url={self._token_url!r}, client_id={self.client_id!r}, "
            f"key_id={self.key_id!r}, subject_type={self.subject_type!r}, "
            f"subject_id={self.subject_id!r})"
        )


def failure_reason(exc: BoxError) -> str:
    """The bounded `auth_failures` label of a failed token request; never Box's own text
    beyond the two OAuth2 errors that name a cause an operator can fix."""
    if isinstance(exc, BoxAuthError):
        if exc.error in _OAUTH_REASONS:
            return str(exc.error)
        if exc.status == 401 or exc.error == "unauthorized_client":
            return "unauthorized"
        return "other"
    if isinstance(exc, BoxServerError):
        return "server_error"
    if isinstance(exc, BoxUnavailable):
        return "network"
    return "other"


def _check_subject_type(subject_type: str) -> None:
    if subject_type not in ("enterprise", "user"):
        raise ValueError(f"subject_type must be 'enterprise' or 'user', got {subject_type!r}")


def _oauth2_error(body: bytes) -> OAuth2Error | None:
    try:
        return OAuth2Error.model_validate_json(body) if body else None
    except ValidationError:
        return None
