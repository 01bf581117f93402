"""One exception class per way a call to Box can fail, all under `BoxError(MonitorError)`.

Each class builds its message from the offending values: method and path, HTTP status, Box's
error `code`, `request_id` and Box's message. Text that comes from Box is untrusted: it is cut to
one short line. No message ever holds an access token or a client secret.

`retry_reason` says whether the client retries a failure and is the `reason` label of
`api_retries`: `None` means not retried. `retry_after_s` is Box's `retry-after`, when it sent
one. `attempts` is set by the client when it gives up.
"""

from __future__ import annotations

from collections.abc import Iterable

from monitor.box.models import ClientError, OAuth2Error
from monitor.errors import MonitorError

_MAX_TEXT = 200


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    """Box's text on one line, at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class BoxError(MonitorError):
    """Root of every failure talking to Box."""

    retry_reason: str | None = None
    retry_after_s: float | None = None

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message)
        self.message = message
        #: The route template (`/2.0/docgen_jobs/{job_id}`), never a concrete id.
        self.endpoint = endpoint
        #: How many HTTP attempts the request made before this error was raised.
        self.attempts = 1

    def __str__(self) -> str:
        if self.attempts > 1:
            return f"{self.message} (after {self.attempts} attempts)"
        return self.message


# -- Box answered with an error status -------------------------------------------------------


class BoxHTTPError(BoxError):
    """Box answered with an error status. `error` is the parsed `ClientError` body, or `None`
    when the body was not one."""

    def __init__(
        self,
        method: str,
        path: str,
        endpoint: str,
        status: int,
        error: ClientError | None = None,
        *,
        note: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.error = error
        self.code = error.code if error is not None else None
        self.request_id = error.request_id if error is not None else None
        self.box_message = error.message if error is not None else None
        parts = [f"{method} {path}: HTTP {status}"]
        if self.code:
            parts.append(f" {_clip(self.code, 60)}")
        if self.box_message:
            parts.append(f": {_clip(self.box_message)}")
        if self.request_id:
            parts.append(f" (request_id {_clip(self.request_id, 80)})")
        if note:
            parts.append(f"; {note}")
        super().__init__("".join(parts), endpoint=endpoint)


class BoxRequestError(BoxHTTPError):
    """A 4xx that retrying cannot cure (400, 403, 409, ...); not retried."""


class BoxNotFound(BoxRequestError):
    """404: the job or batch does not exist, or the user cannot see it."""


class BoxUnauthorized(BoxHTTPError):
    """401 that a token refresh did not cure (or a developer token, which cannot be refreshed)."""


class BoxRateLimited(BoxHTTPError):
    """429 on every attempt. `retry_after_s` is Box's last `retry-after`, if it sent one."""

    retry_reason = "rate_limited"

    def __init__(
        self,
        method: str,
        path: str,
        endpoint: str,
        status: int,
        error: ClientError | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        self.retry_after_s = retry_after_s
        note = f"retry-after {retry_after_s:g} s" if retry_after_s is not None else None
        super().__init__(method, path, endpoint, status, error, note=note)


class BoxServerError(BoxHTTPError):
    """5xx on every attempt. `retry_after_s` is Box's `retry-after` (503 may send one)."""

    retry_reason = "server_error"

    def __init__(
        self,
        method: str,
        path: str,
        endpoint: str,
        status: int,
        error: ClientError | None = None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(method, path, endpoint, status, error)


# -- Box did not answer, or answered nonsense -------------------------------------------------


class BoxUnavailable(BoxError):
    """No answer from Box: the connection failed or the request timed out."""

    def __init__(self, method: str, path: str, endpoint: str, detail: str) -> None:
        self.method = method
        self.path = path
        message = f"{method} {path}: no answer from Box ({_clip(detail)})"
        super().__init__(message, endpoint=endpoint)


class BoxConnectionError(BoxUnavailable):
    """The connection could not be made or broke before an answer arrived."""

    retry_reason = "connection_error"


class BoxTimeout(BoxUnavailable):
    """No complete answer within the request timeout."""

    retry_reason = "timeout"

    def __init__(self, method: str, path: str, endpoint: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(method, path, endpoint, f"timed out after {timeout_s:g} s")


class BoxBadResponse(BoxError):
    """Box answered, but the body is not valid JSON, does not match the schema, or the status
    was not one the operation documents."""

    retry_reason = "bad_response"

    def __init__(self, method: str, path: str, endpoint: str, status: int, detail: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        super().__init__(
            f"{method} {path}: bad response (HTTP {status}): {_clip(detail)}", endpoint=endpoint
        )


# -- the token endpoint ----------------------------------------------------------------------


class BoxAuthError(BoxError):
    """`POST /oauth2/token` refused the grant (wrong credentials, subject not allowed, app not
    authorized). Not retried: the configuration must change. `redact` lists secrets that must
    not appear even if the server echoed them."""

    def __init__(
        self,
        status: int,
        error: OAuth2Error | None = None,
        *,
        endpoint: str = "/oauth2/token",
        redact: Iterable[str] = (),
    ) -> None:
        self.status = status
        secrets = [s for s in redact if s]

        def scrub(text: str | None) -> str | None:
            if text is None:
                return None
            for secret in secrets:
                text = text.replace(secret, "***")
            return text

        self.error = scrub(error.error if error is not None else None)
        self.error_description = scrub(error.error_description if error is not None else None)
        parts = [f"Box token endpoint refused the grant: HTTP {status}"]
        if self.error:
            parts.append(f" {_clip(self.error, 60)}")
        if self.error_description:
            parts.append(f": {_clip(self.error_description)}")
        message = "".join(parts)
        super().__init__(message, endpoint=endpoint)


class BoxAuthBackoff(BoxAuthError):
    """The grant was refused and the next try is not due yet: raised at once, without a
    request, by every caller that asks for a token meanwhile. `refused` is the last refusal."""

    def __init__(self, refused: BoxAuthError, retry_in_s: float) -> None:
        self.refused = refused
        self.retry_in_s = retry_in_s
        super().__init__(refused.status, endpoint=refused.endpoint)
        self.error = refused.error
        self.error_description = refused.error_description
        self.message = f"{refused.message}; next try in {retry_in_s:.0f} s"


class BoxTokenUnavailable(BoxError):
    """A token request this caller was waiting for failed in a way retrying may cure (5xx,
    429, no answer): the same outcome, shared without a second request, retried like it."""

    def __init__(self, cause: BoxError) -> None:
        self.cause = cause
        self.retry_reason = cause.retry_reason
        self.retry_after_s = cause.retry_after_s
        super().__init__(f"no token: {cause.message}", endpoint=cause.endpoint)
