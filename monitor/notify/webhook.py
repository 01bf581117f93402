"""`type: webhook`: one event per POST, signed with HMAC-SHA256 so receivers can trust it.

Wire format (a contract other tools depend on): JSON body `Event.wire()`, headers
`Idempotency-Key`, `X-Docgen-Monitor-Event`, `X-Docgen-Monitor-Timestamp` and
`X-Docgen-Monitor-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`.
With `signature: standard` the signature follows Standard Webhooks (standardwebhooks.com)
instead: `webhook-id` (the event id), `webhook-timestamp`, `webhook-signature: v1,<base64
HMAC-SHA256 of "<id>.<timestamp>.<raw body>">`, keyed by the base64 secret (`whsec_...`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import ClassVar, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from monitor.model import Event
from monitor.notify.base import DeliveryResult, HttpNotifier, NotifierConfig


class WebhookConfig(NotifierConfig):
    type: Literal["webhook"] = "webhook"
    url: SecretStr  # a URL may carry a token in its path or query: never logged
    secret: SecretStr | None = None
    # `docgen` (the `v1=` scheme above) or `standard` (Standard Webhooks; needs a whsec_ secret)
    signature: Literal["docgen", "standard"] = "docgen"
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _standard_secret(self) -> WebhookConfig:
        if self.signature == "standard":
            if self.secret is None:
                raise ValueError("signature standard needs a secret (whsec_ and base64)")
            standard_key(self.secret.get_secret_value())  # the value is never echoed
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64, optionally after `whsec_`."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("secret: a standard signature needs whsec_ and base64") from None
    if not key:
        raise ValueError("secret: a standard signature needs a non-empty key")
    return key


def sign_standard(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64>` as Standard Webhooks defines it. Hand-written (three lines) instead of
    the `standardwebhooks` package, which the tests use to check it."""
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1,{base64.b64encode(mac.digest()).decode()}"


def parse_retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date (RFC 9110); None when absent or garbled.
    A fractional or exponent form (`1.5`, `1e9`) is read as seconds too; the dispatcher clamps
    what is too long."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class WebhookNotifier(HttpNotifier):
    type_name: ClassVar[str] = "webhook"
    config_model: ClassVar[type[NotifierConfig]] = WebhookConfig
    config: WebhookConfig

    async def send(self, events: Sequence[Event]) -> DeliveryResult:
        accepted: list[str] = []
        for event in events:
            result = await self._post(event)
            if not result.ok:
                # The events posted before this one arrived: a retry must not repeat them.
                return replace(result, settled=frozenset(accepted))
            accepted.append(event.id)
        return DeliveryResult.delivered(f"{len(events)} event(s) accepted")

    def _signature(self, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        secret = self.config.secret
        if self.config.signature == "standard" and secret is not None:
            key = standard_key(secret.get_secret_value())
            return {
                "webhook-id": event_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign_standard(key, event_id, timestamp, body),
            }
        headers = {"X-Docgen-Monitor-Timestamp": str(timestamp)}
        if secret is not None:
            headers["X-Docgen-Monitor-Signature"] = sign(
                secret.get_secret_value(), timestamp, body
            )
        return headers

    async def _post(self, event: Event) -> DeliveryResult:
        session = await self.session()
        body = orjson.dumps(event.wire())
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": event.id,
            "X-Docgen-Monitor-Event": event.type.value,
            **self.config.headers,
            **self._signature(event.id, timestamp, body),
        }
        try:
            async with session.post(
                self.config.url.get_secret_value(), data=body, headers=headers
            ) as resp:
                text = (await resp.text(errors="replace"))[:200]
                if 200 <= resp.status < 300:
                    return DeliveryResult.delivered(f"HTTP {resp.status}")
                return DeliveryResult.failed(
                    f"HTTP {resp.status}: {text}",
                    parse_retry_after_s(resp.headers.get("Retry-After")),
                    rate_limited=resp.status == 429,
                )
        except TimeoutError:
            return DeliveryResult.failed(f"no answer within {self.timeout_s:g}s")
        except aiohttp.ClientError as exc:
            # aiohttp's message can hold the URL; name only the failure's kind
            return DeliveryResult.failed(f"connection failed: {type(exc).__name__}")
