"""The simulator's settings: one pydantic model, validated with `extra="forbid"` so that a
misspelled knob fails loudly instead of silently changing nothing."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

OUTCOME_STATUSES: tuple[str, ...] = ("completed", "completed_with_error", "failed")


class OutcomeMix(BaseModel):
    """Relative weights of the three terminal statuses; they need not sum to 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    completed: float = Field(default=0.85, ge=0)
    completed_with_error: float = Field(default=0.1, ge=0)
    failed: float = Field(default=0.05, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> OutcomeMix:
        if self.completed + self.completed_with_error + self.failed <= 0:
            raise ValueError("at least one outcome weight must be positive")
        return self

    def weights(self) -> tuple[float, float, float]:
        """Weights in `OUTCOME_STATUSES` order."""
        return (self.completed, self.completed_with_error, self.failed)


class TimelineConfig(BaseModel):
    """How a new job moves: `pending` at creation, `submitted` after `submitted_after_s`, then a
    terminal status after a further uniform draw in [min_duration_s, max_duration_s]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    submitted_after_s: float = Field(default=0.5, ge=0)
    min_duration_s: float = Field(default=1.0, ge=0)
    max_duration_s: float = Field(default=5.0, ge=0)
    outcomes: OutcomeMix = Field(default_factory=OutcomeMix)

    @model_validator(mode="after")
    def _ordered(self) -> TimelineConfig:
        if self.max_duration_s < self.min_duration_s:
            raise ValueError("max_duration_s must be >= min_duration_s")
        return self


class SteadyStreamConfig(BaseModel):
    """For the demo: start a batch of `jobs_per_batch` jobs every `every_s` seconds (wall time)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every_s: float = Field(default=10.0, gt=0)
    jobs_per_batch: int = Field(default=5, ge=1, le=10_000)
    outcomes: OutcomeMix = Field(default_factory=OutcomeMix)
    output_type: Literal["docx", "pdf"] | None = None


class UserConfig(BaseModel):
    """A Box user the simulator knows: who `GET /2.0/users/me` describes, and whose jobs a
    token acting for them sees. `developer_tokens` act as this user (as a Developer Console
    token belongs to the user who generated it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    name: str | None = None
    login: str | None = None
    # None: the enterprise of the default app.
    enterprise_id: str | None = None
    developer_tokens: list[SecretStr] = Field(default_factory=list)


class AppConfig(BaseModel):
    """One more Box Platform app (CCG and JWT) beside the default one that SimulatorConfig's
    top-level fields describe: its credentials, its enterprise and its Service Account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    enterprise_id: str = Field(min_length=1)
    enterprise_name: str | None = None
    service_account_user_id: str = Field(min_length=1)
    user_ids: list[str] = Field(default_factory=list)
    jwt_public_keys: dict[str, str] = Field(default_factory=dict)


class SimulatorConfig(BaseModel):
    """Everything that makes one simulator run reproducible: the same seed and the same calls
    give the same ids, schedules, outcomes and fault firings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    developer_tokens: list[SecretStr] = Field(default_factory=lambda: [SecretStr("dev-token")])
    client_id: str = "sim-client-id"
    client_secret: SecretStr = SecretStr("sim-client-secret")
    enterprise_id: str = "sim-enterprise"
    # The app's Service Account: the user behind enterprise tokens and developer tokens.
    service_account_user_id: str = "20000001"
    # Users the app may act as with box_subject_type=user. Empty: the app lacks "Generate User
    # Access Tokens", so Box refuses every user subject with invalid_grant.
    user_ids: list[str] = Field(default_factory=list)
    token_expires_in_s: int = Field(default=3600, ge=1)
    # Public keys (PEM) of the app's key pairs by key id, for the JWT grant. Empty: JWT is off
    # (every assertion is refused, as for an app without a public key).
    jwt_public_keys: dict[str, str] = Field(default_factory=dict)
    enterprise_name: str = "Simulated Enterprise"
    # More apps (their own client, enterprise and Service Account) and more users (names,
    # logins, developer tokens) than the default app above.
    apps: list[AppConfig] = Field(default_factory=list)
    users: list[UserConfig] = Field(default_factory=list)
    timeline: TimelineConfig = Field(default_factory=TimelineConfig)
    stream: SteadyStreamConfig | None = None
    # A frozen clock moves only through POST /_sim/clock/advance: tests get exact timelines.
    frozen_clock: bool = False
    # Box renders created_at in a local offset (its example is -07:00); fixed, so no tz database.
    created_at_utc_offset_min: int = Field(default=-420, ge=-720, le=840)
    # The app's webhook signature keys (Developer Console > Webhooks): every notification is
    # signed with both; `POST /_sim/webhooks/settings` rotates them.
    webhook_primary_key: str = "sim-webhook-primary-key"
    webhook_secondary_key: str = "sim-webhook-secondary-key"

    @model_validator(mode="after")
    def _distinct_apps_and_users(self) -> SimulatorConfig:
        client_ids = [self.client_id, *(app.client_id for app in self.apps)]
        if len(set(client_ids)) != len(client_ids):
            raise ValueError("every app needs its own client_id")
        user_ids = [user.id for user in self.users]
        if len(set(user_ids)) != len(user_ids):
            raise ValueError("every user needs its own id")
        return self

    def all_apps(self) -> list[AppConfig]:
        """The default app (the top-level fields) first, then `apps`."""
        default = AppConfig(
            client_id=self.client_id,
            client_secret=self.client_secret,
            enterprise_id=self.enterprise_id,
            enterprise_name=self.enterprise_name,
            service_account_user_id=self.service_account_user_id,
            user_ids=self.user_ids,
            jwt_public_keys=self.jwt_public_keys,
        )
        return [default, *self.apps]
