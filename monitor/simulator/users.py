"""Who exists: the Box users and enterprises behind tokens, for `GET /2.0/users/me` and for
the `enterprise` of the jobs a user creates. Built from the configured apps (each with its
Service Account and the users it may act as) and users (names, logins)."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.simulator.config import SimulatorConfig


@dataclass(frozen=True, slots=True)
class Enterprise:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    login: str
    enterprise: Enterprise


class Directory:
    def __init__(self, config: SimulatorConfig) -> None:
        apps = config.all_apps()
        self.default_enterprise = Enterprise(config.enterprise_id, config.enterprise_name)
        self._enterprises: dict[str, Enterprise] = {}
        for app in apps:
            name = app.enterprise_name or f"Simulated Enterprise {app.enterprise_id}"
            self._enterprises.setdefault(app.enterprise_id, Enterprise(app.enterprise_id, name))
        self._users: dict[str, User] = {}
        for app in apps:
            enterprise = self._enterprises[app.enterprise_id]
            # Box names a Service Account after its app, with an AutomationUser login.
            self._users.setdefault(
                app.service_account_user_id,
                User(
                    app.service_account_user_id,
                    f"{app.client_id} Service Account",
                    f"AutomationUser_{app.service_account_user_id}@boxdevedition.com",
                    enterprise,
                ),
            )
            for user_id in app.user_ids:
                self._users.setdefault(user_id, self._made_up(user_id, enterprise))
        for configured in config.users:
            known = self._users.get(configured.id)
            enterprise = (
                self.enterprise(configured.enterprise_id)
                if configured.enterprise_id is not None
                else known.enterprise
                if known is not None
                else self.default_enterprise
            )
            made_up = known or self._made_up(configured.id, enterprise)
            self._users[configured.id] = User(
                configured.id,
                configured.name or made_up.name,
                configured.login or made_up.login,
                enterprise,
            )

    @staticmethod
    def _made_up(user_id: str, enterprise: Enterprise) -> User:
        return User(user_id, f"Simulated User {user_id}", f"user{user_id}@example.com", enterprise)

    def enterprise(self, enterprise_id: str) -> Enterprise:
        found = self._enterprises.get(enterprise_id)
        if found is None:
            found = Enterprise(enterprise_id, f"Simulated Enterprise {enterprise_id}")
            self._enterprises[enterprise_id] = found
        return found

    def user(self, user_id: str) -> User:
        """The user with this id; one nobody configured is made up in the default enterprise
        (a batch may name any creator through the control API)."""
        found = self._users.get(user_id)
        if found is None:
            found = self._made_up(user_id, self.default_enterprise)
            self._users[user_id] = found
        return found
